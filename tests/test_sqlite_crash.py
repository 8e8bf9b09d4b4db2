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

from .workers import sqlite_worker

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


def test_sigkill_anywhere_in_a_tick_loses_nothing_and_sends_nothing_twice(tmp_path: Path) -> None:
    """Workers killed (SIGKILL) again and again, at every phase of a tick and at random moments;
    after a restart, every due step is delivered exactly once to the key-honouring sender."""
    db, logs = tmp_path / "drip.db", tmp_path / "logs"
    logs.mkdir()
    expected = build_database(db, enrollments=1_000)
    rng = random.Random(20261122)
    plans = [*sqlite_worker.PHASES, "timer"] * 7
    rng.shuffle(plans)
    outcomes: Counter[str] = Counter()
    for round_, plan in enumerate(plans):
        worker = f"w{round_:02d}"
        if plan == "timer":
            process = forked_worker(db, logs, worker, "--batch", "10")
            time.sleep(rng.uniform(0.01, 0.15))
            process.kill()
        else:
            process = forked_worker(db, logs, worker, "--batch", "10", "--crash", f"{plan}:{rng.randint(1, 4)}")
        process.join(60)
        assert process.exitcode in (0, -signal.SIGKILL), f"{worker} ({plan}) exited with {process.exitcode}"
        outcomes[f"{plan}:{'killed' if process.exitcode else 'finished'}"] += 1
    final = script_worker(db, logs, "final")
    try:
        _, err = final.communicate(timeout=120)
    finally:
        if final.poll() is None:
            final.kill()
            final.communicate()
    assert final.returncode == 0, err
    deliveries, repeated = assert_everything_delivered_once(db, logs, expected)
    kills = sum(n for k, n in outcomes.items() if k.endswith("killed"))
    print(
        f"\n{kills} SIGKILLs over {len(plans)} workers ({dict(sorted(outcomes.items()))}); "
        f"{deliveries} steps delivered once each; a naive sender would have sent {repeated} duplicates"
    )
    assert kills == len(plans), "every worker should have died mid-tick, with work left for the next"


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_sharing_one_file_never_duplicate_a_step(tmp_path: Path, workers: int) -> None:
    """Two and four worker processes on one database: over 20,000 steps, zero duplicate attempts."""
    db, logs = tmp_path / "drip.db", tmp_path / "logs"
    logs.mkdir()
    expected = build_database(db, enrollments=6_700)
    assert len(expected) >= 20_000
    started = time.monotonic()
    processes = [script_worker(db, logs, f"w{i}", "--lease", "60", "--batch", "100") for i in range(workers)]
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
    assert len(per_worker) == workers, "every worker should have delivered some of the steps"
