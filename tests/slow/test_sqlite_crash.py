"""Crash and concurrency faults with real processes: SIGKILL anywhere in a tick loses no step and
delivers none twice to a key-honouring sender; several workers share one file without a duplicate."""

from __future__ import annotations

import multiprocessing
import random
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from dripcore import EnrollmentStatus, OutboxStatus, enroll
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.model import UTC
from tests.workers import sqlite_worker

WORKER = Path(sqlite_worker.__file__)
FORK = multiprocessing.get_context("fork")


def build_database(path: Path, enrollments: int) -> list[str]:
    """A database with ``enrollments`` contacts due now in a 3-step sequence; returns every expected key."""
    sequence = sqlite_worker.sequence()
    now = datetime.now(UTC)
    with SQLiteStore(path) as store:
        store.save_sequence(sequence)
        created = store.add_enrollments(
            (
                enroll(sequence, None, now, enrollment_id=f"enr-{i:06d}", contact_id=f"c{i}").enrollment
                for i in range(enrollments)
            ),
            allow_reentry=False,
        )
    assert created == enrollments
    return [f"enr-{i:06d}:{p}" for i in range(enrollments) for p in range(1, sqlite_worker.STEPS + 1)]


def forked_worker(db: Path, logs: Path, worker: str, *extra: str) -> multiprocessing.process.BaseProcess:
    """A worker in a forked child: a real process, started in milliseconds."""
    argv = ["--db", str(db), "--log-dir", str(logs), "--worker", worker, *extra]
    process = FORK.Process(target=_run, args=(argv,))
    # Python 3.12+ warns about forking a process that has threads (a store's checkpointer, say);
    # SQLiteStore makes its own threads safe to fork (see dripcore.adapters.sqlite), so the warning is moot here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        process.start()
    return process


def _run(argv: list[str]) -> None:
    sys.exit(sqlite_worker.main(argv))


def script_worker(db: Path, logs: Path, worker: str, *extra: str) -> subprocess.Popen[str]:
    """A worker started from scratch, as an operator would run it."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--db", str(db), "--log-dir", str(logs), "--worker", worker, *extra],
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_everything_delivered_once(db: Path, logs: Path, expected: list[str]) -> tuple[int, int]:
    """Every key delivered exactly once, every enrollment completed, every message DELIVERED, counters right.

    Returns (deliveries, repeated attempts a naive sender would have sent again).
    """
    delivered, refused = sqlite_worker.read_logs(logs)
    twice = [key for key, n in Counter(delivered).items() if n > 1]
    assert twice == [], f"{len(twice)} keys delivered twice, e.g. {twice[:5]}"
    assert sorted(delivered) == sorted(expected), "a due step was never delivered"
    enrollments = len(expected) // sqlite_worker.STEPS
    with SQLiteStore(db) as store:
        done = store.find_enrollments(statuses=[EnrollmentStatus.COMPLETED], limit=enrollments + 1)
        assert len(done) == enrollments
        assert all(e.last_step_sent == sqlite_worker.STEPS for e in done)
        assert store.find_messages(status=OutboxStatus.PENDING, limit=1) == []
        assert len(store.find_messages(status=OutboxStatus.DELIVERED, limit=len(expected) + 1)) == len(expected)
        counters = store.counters("crash")
        for position in range(1, sqlite_worker.STEPS + 1):
            assert counters[(position, "sent")] == enrollments, "a settle counted twice or not at all"
        assert counters[(0, "status:completed")] == enrollments
    return len(delivered), len(refused)


# The plans of the doomed workers, each a point counted in the worker's own work, never in the parent's
# wall-clock time (see tests/workers/sqlite_worker.py): a named phase of a tick, the N-th time it is
# reached; mid-statement inside the write transaction of claim_due, commit or settle; or "anywhere", the
# K-th call or return in dripcore's code or in-transaction progress callback. K goes up to about two
# ticks' worth at --batch 10 (measured: ~60, ~260 and ~90 progress callbacks a tick in claim_due, commit
# and settle; ~3,600 events in all).
KILL_POINTS = {
    **dict.fromkeys(sqlite_worker.PHASES, 4),
    "in_claim": 120,
    "in_commit": 520,
    "in_settle": 180,
    sqlite_worker.ANYWHERE: 7_000,
}
KILLS_PER_PLAN = 7
CRASH_BATCH = 10
CRASH_ENROLLMENTS = 1_500


def test_sigkill_anywhere_in_a_tick_loses_nothing_and_sends_nothing_twice(tmp_path: Path) -> None:
    """Workers killed (SIGKILL) again and again, at every phase of a tick, mid-statement inside each write
    transaction and at random moments; after a restart, every due step is delivered exactly once to the
    key-honouring sender."""
    db, logs = tmp_path / "drip.db", tmp_path / "logs"
    logs.mkdir()
    expected = build_database(db, enrollments=CRASH_ENROLLMENTS)
    rng = random.Random(20261122)
    plans = [f"{kind}:{rng.randint(1, most)}" for kind, most in KILL_POINTS.items() for _ in range(KILLS_PER_PLAN)]
    rng.shuffle(plans)
    # Each doomed worker dies within a few ticks of its own work, a tick advancing at most CRASH_BATCH
    # enrollments by one step: even at 5 ticks each they leave work for the last of them, on any machine.
    assert len(plans) * 5 * CRASH_BATCH < len(expected)
    kills: Counter[str] = Counter()
    struck_in_transaction = 0
    anywhere: list[str] = []
    for round_, plan in enumerate(plans):
        worker = f"w{round_:02d}"
        process = forked_worker(db, logs, worker, "--batch", str(CRASH_BATCH), "--crash", plan)
        process.join(60)
        assert process.exitcode != sqlite_worker.RAN_OUT, (
            f"{worker} found no work left and its planned crash ({plan}) never came: "
            "a kill point that is no longer reached, or a database too small for the plans"
        )
        assert process.exitcode == -signal.SIGKILL, f"{worker} ({plan}) exited with {process.exitcode}"
        report = sqlite_worker.read_crash_report(logs, worker)
        assert report is not None, f"{worker} ({plan}) was killed, but not by its planned crash"
        planned, in_transaction, where = report
        assert planned == plan, f"{worker} planned {plan} but reported {planned}"
        kind = plan.rsplit(":", 1)[0]
        if kind in sqlite_worker.TRANSACTIONS:
            assert in_transaction, f"{worker} ({plan}) struck outside a write transaction: {where}"
        if kind == sqlite_worker.ANYWHERE:
            anywhere.append(f"{where}{' (in a transaction)' if in_transaction else ''}")
        kills[kind] += 1
        struck_in_transaction += in_transaction
    final = script_worker(db, logs, "final")
    try:
        _, err = final.communicate(timeout=120)
    finally:
        if final.poll() is None:
            final.kill()
            final.communicate()
    assert final.returncode == 0, err
    deliveries, repeated = assert_everything_delivered_once(db, logs, expected)
    print(
        f"\n{sum(kills.values())} SIGKILLs, each where planned ({', '.join(f'{k} {kills[k]}' for k in KILL_POINTS)}), "
        f"{struck_in_transaction} inside a write transaction; anywhere: {'; '.join(anywhere)}; "
        f"{deliveries} steps delivered once each; a naive sender would have sent {repeated} duplicates"
    )
    assert kills == dict.fromkeys(KILL_POINTS, KILLS_PER_PLAN)


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_sharing_one_file_never_duplicate_a_step(tmp_path: Path, workers: int) -> None:
    """Two and four worker processes on one database: over 20,000 steps, zero duplicate attempts."""
    db, logs = tmp_path / "drip.db", tmp_path / "logs"
    logs.mkdir()
    expected = build_database(db, enrollments=6_700)
    assert len(expected) >= 20_000
    # Every worker does one tick, then waits for all the others to have done theirs: by then at most
    # workers x batch enrollments are taken, so each first tick surely got a batch, however late its
    # process started; after the barrier they all contend for the rest.
    together = ["--barrier-dir", str(tmp_path / "barrier"), "--barrier-parties", str(workers)]
    started = time.monotonic()
    batch = ["--lease", "60", "--batch", "100"]
    processes = [script_worker(db, logs, f"w{i}", *batch, *together) for i in range(workers)]
    try:
        for p in processes:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    elapsed = time.monotonic() - started
    deliveries, repeated = assert_everything_delivered_once(db, logs, expected)
    assert repeated == 0, f"{repeated} keys were offered to a sender twice"
    per_worker = Counter(path.name for path in logs.glob("sent-*.log") for _ in path.read_text().splitlines())
    print(f"\n{workers} workers: {deliveries} steps in {elapsed:.1f}s, zero duplicates; per worker {dict(per_worker)}")
    assert len(per_worker) == workers, "every worker should have delivered its first batch"
    assert min(per_worker.values()) >= 100, "every worker should have delivered its first batch"
