"""dripcore side by side with what users would pick instead: APScheduler 3.x on SQLite.

The usual way to send per-contact delayed emails in Python without dripcore is
APScheduler with its SQLAlchemy job store on a SQLite file, one ``date`` job per
step. This script runs that and dripcore's :class:`SQLiteStore` on the same
machine, in the same run, on the same work, and prints one summary line per
figure with the ratio dripcore / alternative.

The work: N contacts enrolled into a three-step sequence (now, +1 day, +2 days).
One contact in five started earlier today, so its first step is already due
(a backlog: an import, or a worker that was down); the others start over the
next five days, so their steps spread over the next week. Measured:

- **enroll**: contacts enrolled per second, one API call per contact, as a web
  request would (dripcore: ``Drip.enroll``; APScheduler: three ``add_job`` calls,
  one per step, while the scheduler is paused);
- **dispatch**: due steps handed to the sender per second, from starting the
  worker until every due step has been (dripcore: ``Drip.run``; APScheduler: the
  scheduler resumed, running the due jobs itself on its thread pool);
- **peak memory**: the peak RSS of a fresh subprocess per contender and run,
  and its growth over the same process after imports and set-up;
- **correctness**: every due step handed to the sender exactly once, nothing
  that was not due;
- **downtime**: the worker is stopped while steps 2 and 3 fall due, then
  restarted; what each system then sends late, drops, doubles, sends out of
  order, or sends in a burst.

Contenders: ``dripcore`` (defaults: WAL, ``synchronous=NORMAL``, batches of
500); ``apscheduler`` (``misfire_grace_time=None`` so late jobs run, and the
same SQLite settings as dripcore: WAL, ``synchronous=NORMAL``);
``apscheduler-defaults`` (everything at its defaults, as a first-time user has
it: ``misfire_grace_time=1`` s, SQLite's rollback journal with
``synchronous=FULL``). Both sides do the same sender work per step: look the
contact up, render the step with dripcore's Liquid renderer, hand an ``Email``
to the same counting sender. Each (contender, N) run is a fresh subprocess on a
fresh database file in one temporary directory; runs are interleaved
(dripcore, apscheduler, apscheduler-defaults, dripcore, ...), repeated, and
the medians are reported.

::

    python benchmarks/compare.py                 # N = 10,000 and 100,000, 1,000,000 dripcore alone; 3 repeats
    python benchmarks/compare.py --write-docs    # the same, then rewrite docs/benchmarks.md's figures and the plot
    python benchmarks/compare.py --quick         # the smoke run the test suite uses (N = 200, 1 repeat)
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import random
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

UTC = timezone.utc
ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
DOCS_PLOT = ROOT / "docs" / "img" / "benchmarks.png"
FIGURES_START = "<!-- figures:start (written by benchmarks/compare.py --write-docs) -->"
FIGURES_END = "<!-- figures:end -->"

DRIPCORE = "dripcore"
DRIPCORE_BIG_CACHE = "dripcore-64mib-cache"
APSCHEDULER = "apscheduler"
APSCHEDULER_DEFAULTS = "apscheduler-defaults"
CONTENDERS = (DRIPCORE, DRIPCORE_BIG_CACHE, APSCHEDULER, APSCHEDULER_DEFAULTS)
DOWNTIME_CONTENDERS = (DRIPCORE, APSCHEDULER, APSCHEDULER_DEFAULTS)
#: A page cache 32 times SQLite's default (dripcore 0.1's default): what more memory buys.
BIG_CACHE_KIB = 65536
SETTINGS = {
    DRIPCORE: "SQLiteStore defaults (WAL, synchronous=NORMAL, cache_size_kib=2048: SQLite's own default, as "
    "APScheduler's engine has), Drip(batch_size=500), "
    "Drip.run() as the worker",
    DRIPCORE_BIG_CACHE: "the same with SQLiteStore(cache_size_kib=65536): a 64 MiB page cache, what more memory buys",
    APSCHEDULER: "BackgroundScheduler, SQLAlchemyJobStore on SQLite with WAL + synchronous=NORMAL (as dripcore), "
    "ThreadPoolExecutor(10), misfire_grace_time=None, coalesce=False, one date job per step",
    APSCHEDULER_DEFAULTS: "BackgroundScheduler, SQLAlchemyJobStore('sqlite:///…') as is (rollback journal, "
    "synchronous=FULL), ThreadPoolExecutor(10), misfire_grace_time=1 s, coalesce=False, one date job per step",
}

SEQUENCE_ID = "welcome"
#: When each step is due, counted from the enrollment (dripcore counts each from the previous send).
STEP_OFFSETS = (timedelta(0), timedelta(days=1), timedelta(days=3))
DUE_EVERY = 5  # one contact in five has its first step due when the worker starts
FULL_SIZES = (10_000, 100_000)
DRIPCORE_ONLY_SIZE = 1_000_000
DOWNTIME_CONTACTS = 1_000


# --------------------------------------------------------------------------- the shared work


def main_sequence() -> Any:
    from dripcore import Delay, Sequence, SequenceStatus, Step

    return Sequence(
        id=SEQUENCE_ID,
        name="Welcome",
        status=SequenceStatus.ACTIVE,
        steps=(
            Step(position=1, subject="Welcome, {{ firstName }}", text="Hello {{ firstName }}, glad you are here."),
            Step(position=2, delay=Delay.hours(24), subject="Getting started", text="Three tips, {{ firstName }}."),
            Step(position=3, delay=Delay.hours(48), subject="How is it going?", text="Tell us, {{ firstName }}."),
        ),
    )


def downtime_sequence(step_seconds: int) -> Any:
    from dripcore import Delay, Sequence, SequenceStatus, Step

    delay = Delay.seconds(step_seconds)
    return Sequence(
        id=SEQUENCE_ID,
        name="Welcome",
        status=SequenceStatus.ACTIVE,
        steps=(
            Step(position=1, subject="Welcome, {{ firstName }}", text="Hello {{ firstName }}."),
            Step(position=2, delay=delay, subject="Getting started", text="Tips, {{ firstName }}."),
            Step(position=3, delay=delay, subject="How is it going?", text="Tell us, {{ firstName }}."),
        ),
    )


def contact_id(i: int) -> str:
    return f"c{i}"


def is_due(i: int) -> bool:
    return i % DUE_EVERY == 0


def due_count(n: int) -> int:
    return (n + DUE_EVERY - 1) // DUE_EVERY


def plan(n: int, now: datetime, seed: int = 8) -> Iterator[tuple[str, datetime]]:
    """(contact id, enrollment start) for each contact, generated lazily so it costs no memory.

    A due contact started 10 minutes to 23 hours ago: step 1 is overdue, step 2
    not yet. The others start 2 hours to 5 days from now.
    """
    rng = random.Random(seed)
    for i in range(n):
        if is_due(i):
            yield contact_id(i), now - timedelta(seconds=rng.uniform(600, 23 * 3600))
        else:
            yield contact_id(i), now + timedelta(seconds=rng.uniform(2 * 3600, 5 * 86400))


class Harness:
    """What both contenders share: the contacts, the renderer and the sender."""

    def __init__(self, sequence: Any, *, timed: bool = False) -> None:
        from dripcore import Contact, Enrollment, EnrollmentStatus
        from dripcore.ports import ContactDirectory, Email, MailSender
        from dripcore.render import LiquidRenderer

        class GeneratedContacts(ContactDirectory):
            """Contacts built from the id on demand: 1,000,000 of them cost no memory."""

            def get(self, contact_id: str) -> Contact | None:
                return Contact(id=contact_id, email=f"{contact_id}@example.com", first_name=f"Name{contact_id[1:]}")

            def suppress(self, contact_id: str, reason: Any) -> None:
                raise AssertionError("nothing is suppressed in this benchmark")

        class CountingSender(MailSender):
            """Records (contact, step) as one int, and the time when ``timed``; thread-safe (list.append)."""

            sends_real_mail = False  # a test double: the placeholder unsubscribe link is fine

            def __init__(self) -> None:
                self.sent: list[int] = []
                self.times: list[float] = []
                self.target = 0
                self.reached_at: float | None = None  # perf_counter() when ``target`` sends were made

            def send(self, email: Email) -> str | None:
                self.sent.append(int(email.contact_id[1:]) * 4 + email.position)
                if timed:
                    self.times.append(time.time())
                if self.reached_at is None and len(self.sent) >= self.target > 0:
                    self.reached_at = time.perf_counter()
                return None

        self.sequence = sequence
        self.contacts = GeneratedContacts()
        self.sender = CountingSender()
        self.renderer = LiquidRenderer()
        self._email = Email
        at = datetime(2026, 1, 1, tzinfo=UTC)
        self._stub = Enrollment(
            id="apscheduler-job", sequence_id=sequence.id, contact_id="c0",
            status=EnrollmentStatus.ACTIVE, enrolled_at=at, next_step_due_at=at,
        )  # fmt: skip
        self._steps = {s.position: s for s in sequence.steps}

    def job(self, contact_id: str, position: int) -> None:
        """What an APScheduler job does for one step: the same work as dripcore's delivery."""
        contact = self.contacts.get(contact_id)
        assert contact is not None
        step = self._steps[position]
        rendered = self.renderer.render(step, sequence=self.sequence, contact=contact, enrollment=self._stub)
        self.sender.send(
            self._email(
                idempotency_key=f"{contact_id}:{position}", enrollment_id=f"{contact_id}:{position}",
                sequence_id=self.sequence.id, contact_id=contact_id, position=position, to=contact.email,
                subject=rendered.subject, html=rendered.html, text=rendered.text, headers=rendered.headers,
            )
        )  # fmt: skip


HARNESS: Harness | None = None


def apscheduler_job(contact_id: str, position: int) -> None:
    """The job function APScheduler stores by reference and runs on its thread pool."""
    assert HARNESS is not None
    HARNESS.job(contact_id, position)


# --------------------------------------------------------------------------- measuring inside a worker


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_main(sent: Sequence[int], n: int) -> dict[str, int]:
    """Every due step 1 exactly once; nothing else."""
    seen: dict[int, int] = {}
    for code in sent:
        seen[code] = seen.get(code, 0) + 1
    expected = {i * 4 + 1 for i in range(n) if is_due(i)}
    return {
        "duplicates": sum(c - 1 for c in seen.values() if c > 1),
        "missing": len(expected - seen.keys()),
        "unexpected": sum(c for code, c in seen.items() if code not in expected),
    }


def apscheduler_engine(path: str, *, defaults: bool, setup: bool = False) -> Any:
    """The job store's engine; ``setup`` turns fsync off for loading a scenario that is not being timed."""
    from sqlalchemy import create_engine, event

    engine = create_engine(f"sqlite:///{path}")
    pragmas = [] if defaults else ["journal_mode=WAL", "synchronous=NORMAL"]
    if setup:
        pragmas.append("synchronous=OFF")
    if pragmas:

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            for pragma in pragmas:
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

    return engine


class Outcomes:
    """Counts APScheduler's job events; ``done`` is set when ``target`` jobs have finished either way."""

    def __init__(self, target: int) -> None:
        self.executed = self.missed = self.errors = 0
        self.target = target
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED

        with self._lock:
            if event.code == EVENT_JOB_MISSED:
                self.missed += 1
            elif event.code == EVENT_JOB_ERROR:
                self.errors += 1
            else:
                self.executed += 1
            if self.executed + self.missed + self.errors >= self.target:
                self.done.set()


def new_apscheduler(path: str, *, defaults: bool, outcomes: Outcomes, setup: bool = False) -> Any:
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    # A missed job logs a warning each; keep them off the terminal (the listener counts them).
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    store = SQLAlchemyJobStore(engine=apscheduler_engine(path, defaults=defaults, setup=setup))
    job_defaults = {} if defaults else {"misfire_grace_time": None}
    scheduler = BackgroundScheduler(jobstores={"default": store}, job_defaults=job_defaults, timezone=UTC)
    scheduler.add_listener(outcomes, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    return scheduler


def worker_main_dripcore(n: int, path: str, *, cache_size_kib: int | None = None) -> dict[str, Any]:
    from dripcore import Drip
    from dripcore.adapters.sqlite import SQLiteStore

    harness = Harness(main_sequence())
    store = SQLiteStore(path) if cache_size_kib is None else SQLiteStore(path, cache_size_kib=cache_size_kib)
    drip = Drip(store=store, sender=harness.sender, contacts=harness.contacts)
    drip.save_sequence(harness.sequence)
    gc.collect()
    baseline = rss_mib()
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    for cid, start in plan(n, now):
        drip.enroll(SEQUENCE_ID, cid, started_at=start)
    enroll_s = time.perf_counter() - t0

    harness.sender.target = due_count(n)
    stop = threading.Event()
    t0 = time.perf_counter()
    drip.run(stop=stop, on_tick=lambda report: None if report.busy else stop.set())
    dispatch_s = (harness.sender.reached_at or time.perf_counter()) - t0
    return {
        "enroll_s": enroll_s, "dispatch_s": dispatch_s, "sent": len(harness.sender.sent), "due": due_count(n),
        "dropped": 0, "baseline_mib": baseline, "peak_mib": peak_rss_mib(), **check_main(harness.sender.sent, n),
    }  # fmt: skip


def worker_bulk_dripcore(n: int, path: str) -> dict[str, Any]:
    """An import: the pure ``enroll`` plus one :meth:`SQLiteStore.add_enrollments` call (10,000 per transaction).

    Writes the same counters ``Drip.enroll`` does, so ``Drip.stats`` stays right.
    """
    from dripcore import enroll
    from dripcore.adapters.sqlite import SQLiteStore
    from dripcore.engine import new_id

    sequence = main_sequence()
    store = SQLiteStore(path)
    store.save_sequence(sequence)
    now = datetime.now(UTC)
    counters = [(SEQUENCE_ID, 0, "recipients", 1), (SEQUENCE_ID, 0, "status:active", 1)]
    t0 = time.perf_counter()
    created = store.add_enrollments(
        (
            enroll(sequence, None, now, enrollment_id=new_id(), contact_id=cid, started_at=start).enrollment
            for cid, start in plan(n, now)
        ),
        allow_reentry=False,
        counters=lambda _: counters,
    )
    enroll_s = time.perf_counter() - t0
    assert created == n, f"{created} of {n} enrollments created"
    return {"enroll_s": enroll_s}


def worker_main_apscheduler(n: int, path: str, *, defaults: bool) -> dict[str, Any]:
    global HARNESS
    HARNESS = harness = Harness(main_sequence())
    outcomes = Outcomes(due_count(n))
    scheduler = new_apscheduler(path, defaults=defaults, outcomes=outcomes)
    scheduler.start(paused=True)
    gc.collect()
    baseline = rss_mib()
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    for cid, start in plan(n, now):
        for position, offset in enumerate(STEP_OFFSETS, 1):
            scheduler.add_job(
                apscheduler_job, "date", run_date=start + offset, args=(cid, position), id=f"{cid}:{position}"
            )
    enroll_s = time.perf_counter() - t0

    harness.sender.target = due_count(n)
    t0 = time.perf_counter()
    scheduler.resume()
    finished = outcomes.done.wait(timeout=max(600.0, n / 20))
    dispatch_s = (harness.sender.reached_at or time.perf_counter()) - t0
    scheduler.shutdown(wait=True)
    return {
        "enroll_s": enroll_s, "dispatch_s": dispatch_s, "sent": len(harness.sender.sent), "due": due_count(n),
        "dropped": outcomes.missed, "errors": outcomes.errors, "timed_out": not finished,
        "baseline_mib": baseline, "peak_mib": peak_rss_mib(), **check_main(harness.sender.sent, n),
    }  # fmt: skip


# --------------------------------------------------------------------------- downtime


def downtime_plan(n: int, step_seconds: int) -> tuple[float, float]:
    """(t0, restart): step k of every contact is planned at t0 + (k - 1) * step; the worker restarts when
    step 3 is overdue by more than APScheduler's default grace of 1 s, as after any real outage.

    t0 leaves time to load the scenario (fsync off, 2 ms a job at most) so that step 1 is not late.
    """
    t0 = time.time() + 1.0 + 3 * n * 0.002
    return t0, t0 + 2 * step_seconds + max(step_seconds / 2, 2.0)


def check_downtime(sent: Sequence[int], times: Sequence[float], n: int, t0: float, step: int) -> dict[str, int]:
    """Count, per step and contact, what happened against the plan made at enrollment (t0 + k * step)."""
    sends: dict[tuple[int, int], list[float]] = {}
    for code, at in zip(sent, times, strict=True):
        sends.setdefault((code // 4, code % 4), []).append(at)
    late = burst = out_of_order = 0
    for i in range(n):
        firsts = []
        for position in (1, 2, 3):
            at = min(sends.get((i, position), [float("inf")]))
            firsts.append(at)
            if at != float("inf") and at - (t0 + (position - 1) * step) > 1.0:
                late += 1
        sent_times = [t for t in firsts if t != float("inf")]
        if sent_times != sorted(sent_times):
            out_of_order += 1
        # a burst: two steps of one contact closer together than half their delay
        if any(b - a < step / 2 for a, b in itertools.pairwise(sent_times)):
            burst += 1
    return {
        "sent": len(sent),
        "duplicates": sum(len(v) - 1 for v in sends.values()),
        "dropped": sum(1 for i in range(n) for p in (1, 2, 3) if (i, p) not in sends),
        "dropped_by_step": [sum(1 for i in range(n) if (i, p) not in sends) for p in (1, 2, 3)],
        "late": late,
        "burst_contacts": burst,
        "out_of_order_contacts": out_of_order,
    }


def worker_downtime_dripcore(n: int, path: str, step: int) -> dict[str, Any]:
    from dripcore import Drip
    from dripcore.adapters.sqlite import SQLiteStore

    harness = Harness(downtime_sequence(step), timed=True)
    first = Drip(store=SQLiteStore(path), sender=harness.sender, contacts=harness.contacts)
    first.save_sequence(harness.sequence)
    t0, restart = downtime_plan(n, step)
    start = datetime.fromtimestamp(t0, UTC)
    for i in range(n):
        first.enroll(SEQUENCE_ID, contact_id(i), started_at=start)
    stop = threading.Event()
    first.run(stop=stop, on_tick=lambda _: stop.set() if len(harness.sender.sent) >= n else None)
    first.store.close()  # the worker is down
    time.sleep(max(0.0, restart - time.time()))
    second = Drip(store=SQLiteStore(path), sender=harness.sender, contacts=harness.contacts)
    stop = threading.Event()
    deadline = time.time() + 2 * step + 60

    def until_done(_: Any) -> None:
        if len(harness.sender.sent) >= 3 * n or time.time() > deadline:
            stop.set()

    second.run(stop=stop, on_tick=until_done)
    return {"restart_after_s": restart - t0, **check_downtime(harness.sender.sent, harness.sender.times, n, t0, step)}


def worker_downtime_apscheduler(n: int, path: str, step: int, *, defaults: bool) -> dict[str, Any]:
    global HARNESS
    HARNESS = harness = Harness(downtime_sequence(step), timed=True)
    t0, restart = downtime_plan(n, step)
    start = datetime.fromtimestamp(t0, UTC)
    loader = new_apscheduler(path, defaults=defaults, outcomes=Outcomes(0), setup=True)
    loader.start(paused=True)
    for i in range(n):
        for position in (1, 2, 3):
            run_date = start + timedelta(seconds=(position - 1) * step)
            loader.add_job(
                apscheduler_job, "date", run_date=run_date, args=(contact_id(i), position), id=f"{i}:{position}"
            )
    loader.shutdown(wait=False)

    outcomes = Outcomes(n)
    scheduler = new_apscheduler(path, defaults=defaults, outcomes=outcomes)
    scheduler.start()
    outcomes.done.wait(timeout=120 + n / 20)
    scheduler.shutdown(wait=True)  # the worker is down
    before = outcomes.executed + outcomes.missed + outcomes.errors
    time.sleep(max(0.0, restart - time.time()))
    outcomes2 = Outcomes(3 * n - before)
    scheduler = new_apscheduler(path, defaults=defaults, outcomes=outcomes2)
    scheduler.start()
    outcomes2.done.wait(timeout=2 * step + 60 + n / 20)
    scheduler.shutdown(wait=True)
    return {
        "restart_after_s": restart - t0,
        "missed_events": outcomes.missed + outcomes2.missed,
        **check_downtime(harness.sender.sent, harness.sender.times, n, t0, step),
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    defaults = args.worker == APSCHEDULER_DEFAULTS
    (n,) = args.n
    if args.case == "bulk":
        return worker_bulk_dripcore(n, args.db)
    if args.case == "main":
        if args.worker == DRIPCORE:
            return worker_main_dripcore(n, args.db)
        if args.worker == DRIPCORE_BIG_CACHE:
            return worker_main_dripcore(n, args.db, cache_size_kib=BIG_CACHE_KIB)
        return worker_main_apscheduler(n, args.db, defaults=defaults)
    if args.worker == DRIPCORE:
        return worker_downtime_dripcore(n, args.db, args.step_seconds)
    return worker_downtime_apscheduler(n, args.db, args.step_seconds, defaults=defaults)


# --------------------------------------------------------------------------- orchestration


def run_worker(contender: str, case: str, n: int, directory: Path, label: str, step_seconds: int) -> dict[str, Any]:
    db = directory / f"{label}.db"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", contender, "--case", case]
    command += ["--n", str(n), "--db", str(db), "--step-seconds", str(step_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} {case} n={n} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(runs: Sequence[Mapping[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats, and the worst correctness counts."""
    n = runs[0]["n"]
    enroll_s, dispatch_s = median_of(runs, "enroll_s"), median_of(runs, "dispatch_s")
    return {
        "n": n,
        "repeats": len(runs),
        "enroll_rate": n / enroll_s,
        "dispatch_rate": runs[0]["due"] / dispatch_s,
        "enroll_s": enroll_s,
        "dispatch_s": dispatch_s,
        "due": runs[0]["due"],
        "sent": min(r["sent"] for r in runs),
        "peak_mib": median_of(runs, "peak_mib"),
        "baseline_mib": median_of(runs, "baseline_mib"),
        "growth_mib": statistics.median(r["peak_mib"] - r["baseline_mib"] for r in runs),
        "duplicates": max(r["duplicates"] for r in runs),
        "missing": max(r["missing"] for r in runs),
        "unexpected": max(r["unexpected"] for r in runs),
        "dropped": max(r["dropped"] for r in runs),
    }


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "file_system": file_system(Path(tempfile.gettempdir())),
        "dripcore": version("dripcore"),
        "APScheduler": version("apscheduler"),
        "SQLAlchemy": version("sqlalchemy"),
        "source": source_revision(),
    }


def source_revision() -> str:
    """The commit measured, and whether src/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" with uncommitted changes in src/" if dirty.stdout.strip() else "")


def file_system(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts), for the record."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best = max((m for m in mounts if resolved.startswith(m[0])), key=lambda m: len(m[0]), default=None)
    return f"{best[1]} at {best[0]}" if best else "unknown"


def measure(
    sizes: Sequence[int],
    alone: Sequence[int],
    repeats: int,
    defaults_repeats: int,
    downtime_n: int,
    step_seconds: int,
    tmpdir: str | None,
    alone_repeats: int,
    defaults_max_n: int,
    downtime_together: bool = False,
) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "settings": SETTINGS, "main": {}, "downtime": {}, "bulk": {}}
    results["machine"]["date"] = time.strftime("%Y-%m-%d")
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    bulk: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="dripcore-compare-", dir=tmpdir) as directory:
        results["machine"]["file_system"] = file_system(Path(directory))
        for repeat in range(repeats):
            for n in (*sizes, *(alone if repeat < alone_repeats else ())):
                contenders = CONTENDERS if n in sizes else (DRIPCORE, DRIPCORE_BIG_CACHE)
                for contender in contenders:  # interleaved: A, B, C, A, B, C, ...
                    if contender == APSCHEDULER_DEFAULTS and (repeat >= defaults_repeats or n > defaults_max_n):
                        continue
                    label = f"{contender}-{n}-{repeat}"
                    run = run_worker(contender, "main", n, Path(directory), label, step_seconds)
                    run["n"] = n
                    runs.setdefault((contender, n), []).append(run)
                    took = f"enroll {run['enroll_s']:.1f} s, dispatch {run['dispatch_s']:.1f} s"
                    print(f"  ... {label}: {took}", file=sys.stderr, flush=True)
                label = f"bulk-{n}-{repeat}"
                run = run_worker(DRIPCORE, "bulk", n, Path(directory), label, step_seconds)
                bulk.setdefault(n, []).append(run["enroll_s"])

        def downtime(contender: str) -> None:
            run = run_worker(contender, "downtime", downtime_n, Path(directory), f"{contender}-down", step_seconds)
            run["n"] = downtime_n
            results["downtime"][contender] = run

        if downtime_together:
            # The smoke run only checks what was sent, not when: its contenders wait out their
            # downtime side by side instead of one after the other (a third of the wall time).
            with ThreadPoolExecutor(len(DOWNTIME_CONTENDERS)) as pool:
                list(pool.map(downtime, DOWNTIME_CONTENDERS))  # re-raises a contender's failure
            results["downtime"] = {c: results["downtime"][c] for c in DOWNTIME_CONTENDERS}
        else:
            for contender in DOWNTIME_CONTENDERS:
                downtime(contender)
    for (contender, n), found in runs.items():
        results["main"].setdefault(contender, {})[str(n)] = summarise(found)
    for n, seconds in bulk.items():
        results["bulk"][str(n)] = {"n": n, "runs": len(seconds), "enroll_rate": n / statistics.median(seconds)}
    results["step_seconds"] = step_seconds
    results["downtime_n"] = downtime_n
    results["repeats"] = repeats
    return results


# --------------------------------------------------------------------------- reporting


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a"
    r = a / b
    return f"{r:,.0f}x" if r >= 10 else f"{r:.2f}x"


def report(results: Mapping[str, Any]) -> list[str]:
    main, lines = results["main"], []
    sizes = sorted(int(n) for n in main.get(APSCHEDULER, {}))
    for n in sizes:
        d, a = main[DRIPCORE][str(n)], main[APSCHEDULER][str(n)]
        z = main.get(APSCHEDULER_DEFAULTS, {}).get(str(n))
        if z is None:
            smaller = [int(k) for k in main.get(APSCHEDULER_DEFAULTS, {}) if int(k) < n]
            hint = ""
            if smaller:
                rate = main[APSCHEDULER_DEFAULTS][str(max(smaller))]["enroll_rate"]
                minutes = n / rate / 60
                hint = f": at its N={max(smaller):,} rate ({rate:,.0f}/s) enrolling alone would take ~{minutes:.0f} min"
            versus_defaults = f"apscheduler-defaults not run at this N{hint}"
        else:
            versus_defaults = (
                f"vs apscheduler-defaults {z['enroll_rate']:,.0f}/s = {_ratio(d['enroll_rate'], z['enroll_rate'])}"
            )
        lines.append(
            f"enroll N={n:,}: dripcore {d['enroll_rate']:,.0f}/s vs apscheduler {a['enroll_rate']:,.0f}/s "
            f"= {_ratio(d['enroll_rate'], a['enroll_rate'])} (target >= 50x); {versus_defaults}"
        )
        dropped = (
            ""
            if z is None
            else (
                f"; apscheduler-defaults sent {z['sent']:,} of {z['due']:,} and dropped {z['dropped']:,} "
                "(missed by more than misfire_grace_time=1 s)"
            )
        )
        lines.append(
            f"dispatch N={n:,} ({d['due']:,} due): dripcore {d['dispatch_rate']:,.0f} steps/s vs apscheduler "
            f"{a['dispatch_rate']:,.0f}/s = {_ratio(d['dispatch_rate'], a['dispatch_rate'])} (target >= 50x){dropped}"
        )
        big = main.get(DRIPCORE_BIG_CACHE, {}).get(str(n))
        like_for_like = (
            ""
            if big is None
            else (
                f"; with cache_size_kib={BIG_CACHE_KIB} {big['peak_mib']:.0f} MiB "
                f"(+{big['growth_mib']:.0f}) = {_ratio(big['peak_mib'], a['peak_mib'])} "
                f"(growth {_ratio(big['growth_mib'], a['growth_mib'])}), dispatch {big['dispatch_rate']:,.0f} steps/s"
            )
        )
        lines.append(
            f"peak RSS N={n:,}: dripcore {d['peak_mib']:.0f} MiB (+{d['growth_mib']:.0f} over start) vs apscheduler "
            f"{a['peak_mib']:.0f} MiB (+{a['growth_mib']:.0f}) = {_ratio(d['peak_mib'], a['peak_mib'])} "
            f"(growth {_ratio(d['growth_mib'], a['growth_mib'])}){like_for_like}; target <= 0.50x at 100,000"
        )
        lines.append(
            f"correct N={n:,}: " + "; ".join(
                f"{c} {f['sent']:,} of {f['due']:,} due steps sent, {f['duplicates']} duplicates, "
                f"{f['unexpected']} not due"
                for c in CONTENDERS if (f := main.get(c, {}).get(str(n))) is not None
            )
        )  # fmt: skip
    for n in sizes:
        b, a = results["bulk"][str(n)], main[APSCHEDULER][str(n)]
        lines.append(
            f"import N={n:,}: dripcore pure enroll() + SQLiteStore.add_enrollments {b['enroll_rate']:,.0f}/s vs "
            f"apscheduler add_job (it has no bulk API) {a['enroll_rate']:,.0f}/s = "
            f"{_ratio(b['enroll_rate'], a['enroll_rate'])}"
        )
    for n in sorted(int(n) for n in main.get(DRIPCORE, {}) if int(n) not in sizes):
        d = main[DRIPCORE][str(n)]
        big = main.get(DRIPCORE_BIG_CACHE, {}).get(str(n))
        big_rss = (
            ""
            if big is None
            else (
                f"; with cache_size_kib={BIG_CACHE_KIB}: dispatch {big['dispatch_rate']:,.0f} steps/s, "
                f"{big['peak_mib']:.0f} MiB (+{big['growth_mib']:.0f})"
            )
        )
        why = ""
        if sizes:
            a = main[APSCHEDULER][str(sizes[-1])]
            hours = (n / a["enroll_rate"] + a["due"] * n / sizes[-1] / a["dispatch_rate"]) * results["repeats"] / 3600
            why = f" (dripcore alone: at apscheduler's N={sizes[-1]:,} rates its runs would take ~{hours:.1f} h)"
        lines.append(
            f"dripcore N={n:,}: enroll {d['enroll_rate']:,.0f}/s, dispatch {d['dispatch_rate']:,.0f} steps/s, "
            f"import {results['bulk'][str(n)]['enroll_rate']:,.0f}/s, "
            f"peak RSS {d['peak_mib']:.0f} MiB (+{d['growth_mib']:.0f}){big_rss}, "
            f"{d['sent']:,} of {d['due']:,} sent, "
            f"{d['duplicates']} duplicates{why}"
        )
    down = results["downtime"]
    for c in DOWNTIME_CONTENDERS:
        r = down[c]
        lines.append(
            f"downtime {c} ({r['n']:,} contacts, steps {results['step_seconds']:g} s apart, worker stopped after "
            f"step 1, restarted {r['restart_after_s']:.1f} s after step 1 was due): "
            f"{r['sent']:,} of {3 * r['n']:,} sent, {r['duplicates']} duplicates, "
            f"{r['dropped']:,} dropped (by step: {', '.join(f'{x:,}' for x in r['dropped_by_step'])}), "
            f"{r['late']:,} late, {r['burst_contacts']:,} contacts in a burst, "
            f"{r['out_of_order_contacts']:,} out of order"
        )
    return lines


def table(results: Mapping[str, Any]) -> str:
    """The figures as Markdown tables."""
    main = results["main"]
    rows = [
        "| contender | N | runs | enroll (contacts/s) | dispatch (due steps/s) | peak RSS (MiB) | RSS growth (MiB) "
        "| due steps sent | duplicates | dropped |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for n in sorted({int(n) for c in main.values() for n in c}):
        for c in CONTENDERS:
            f = main.get(c, {}).get(str(n))
            if f is None:
                continue
            dispatch = f"{f['dispatch_rate']:,.0f}" if f["sent"] else "none sent"
            rows.append(
                f"| {c} | {n:,} | {f['repeats']} | {f['enroll_rate']:,.0f} | {dispatch} "
                f"| {f['peak_mib']:.0f} | {f['growth_mib']:.0f} | {f['sent']:,} of {f['due']:,} "
                f"| {f['duplicates']} | {f['dropped']:,} |"
            )
    rows += [
        "",
        "Import (dripcore only: the pure `enroll()` and `SQLiteStore.add_enrollments`, 10,000 per transaction; "
        "APScheduler has no bulk API, its only path is the `add_job` loop above):",
        "",
        "| N | dripcore import (contacts/s) |",
        "|--:|--:|",
        *(
            f"| {int(n):,} | {b['enroll_rate']:,.0f} |"
            for n, b in sorted(results["bulk"].items(), key=lambda kv: int(kv[0]))
        ),
        "",
        f"Downtime: {results['downtime_n']:,} contacts, three steps {results['step_seconds']:g} s apart; "
        "the worker stops once step 1 is out and restarts when step 3 is overdue.",
        "",
        "| contender | sent | duplicates | dropped (steps 1, 2, 3) | late (> 1 s after the plan) "
        "| contacts in a burst | out of order |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for c in DOWNTIME_CONTENDERS:
        r = results["downtime"][c]
        by_step = ", ".join(f"{x:,}" for x in r["dropped_by_step"])
        rows.append(
            f"| {c} | {r['sent']:,} of {3 * r['n']:,} | {r['duplicates']} | {r['dropped']:,} ({by_step}) "
            f"| {r['late']:,} "
            f"| {r['burst_contacts']:,} | {r['out_of_order_contacts']:,} |"
        )
    return "\n".join(rows)


def plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = results["main"]
    sizes = sorted({int(n) for c in main.values() for n in c})
    colours = {
        DRIPCORE: "#2563eb",
        DRIPCORE_BIG_CACHE: "#93c5fd",
        APSCHEDULER: "#f97316",
        APSCHEDULER_DEFAULTS: "#9ca3af",
    }
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    panels = (
        ("enroll_rate", "enroll (contacts/s, log)", True),
        ("dispatch_rate", "dispatch (due steps sent/s, log)", True),
        ("peak_mib", "peak RSS (MiB)", False),
    )
    width = 0.2
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for k, c in enumerate(CONTENDERS):
            xs, ys = [], []
            for j, n in enumerate(sizes):
                f = main.get(c, {}).get(str(n))
                if f is None:
                    continue
                x = j + (k - 1.5) * width
                if key == "dispatch_rate" and f["sent"] == 0:  # nothing sent: it dropped every due step
                    ax.text(x, 12, "all dropped", rotation=90, ha="center", va="bottom", fontsize=7)
                    continue
                xs.append(x)
                ys.append(f[key])
            bars = ax.bar(xs, ys, width, label=c, color=colours[c])
            ax.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=6, rotation=90, padding=2)
        ax.set_xticks(range(len(sizes)), [f"N={n:,}" for n in sizes])
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(10, ax.get_ylim()[1] * 4)
        else:
            ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    m = results["machine"]
    figure.suptitle(
        f"dripcore vs APScheduler {m['APScheduler']} on SQLite: medians of up to {results['repeats']} runs "
        f"(CPU: {m['cpu']}, {m['cores']} cores, Python {m['python']})",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def figures_block(results: Mapping[str, Any], lines: Sequence[str], image: str) -> str:
    """The generated part of the docs page: the machine, the plot, the tables and the summary lines."""
    m = results["machine"]
    return "\n".join(
        [
            FIGURES_START,
            "",
            f"Measured on {m.get('date', 'an unrecorded date')}: {m['cpu']}, {m['cores']} cores, {m['os']}, "
            f"Python {m['python']}, SQLite {m['sqlite']}, dripcore {m['dripcore']} ({m.get('source', 'unknown')}), "
            f"APScheduler {m['APScheduler']}, SQLAlchemy {m['SQLAlchemy']}; database files on {m['file_system']}.",
            "",
            f"![dripcore vs APScheduler: enroll and dispatch rates, peak memory]({image})",
            "",
            table(results),
            "",
            "The summary lines of that run:",
            "",
            "```text",
            *lines,
            "```",
            "",
            FIGURES_END,
        ]
    )


def replace_figures(page: Path, block: str) -> None:
    """Put ``block`` in place of the page's figures block; the prose around it is left as it is."""
    text = page.read_text()
    pattern = re.compile(re.escape(FIGURES_START) + ".*?" + re.escape(FIGURES_END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{page}: no figures block ({FIGURES_START!r} ... {FIGURES_END!r}) to replace")
    page.write_text(pattern.sub(lambda _: block, text))


def write_docs(results: Mapping[str, Any], lines: Sequence[str], page: Path, image: Path) -> None:
    """Regenerate the plot and the figures block of the docs page."""
    plot(results, image)
    replace_figures(page, figures_block(results, lines, os.path.relpath(image, page.parent)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", help="sizes run for every contender (default 10,000 100,000)")
    parser.add_argument("--alone", type=int, nargs="*", help="sizes run for dripcore alone (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument(
        "--defaults-repeats", type=int, help="runs of apscheduler-defaults per N (default: --repeats; it is slow)"
    )
    parser.add_argument(
        "--defaults-max-n",
        type=int,
        default=10_000,
        help="largest N run for apscheduler-defaults (default 10,000: one fsync per job makes it crawl)",
    )
    parser.add_argument("--alone-repeats", type=int, help="runs per --alone size (default: --repeats)")
    parser.add_argument("--downtime-n", type=int, default=DOWNTIME_CONTACTS, help="contacts in the downtime case")
    parser.add_argument("--step-seconds", type=int, default=5, help="step delay in the downtime case")
    parser.add_argument("--quick", action="store_true", help="the smoke run: N = 200, nothing alone, 1 repeat")
    parser.add_argument("--tmpdir", help="where the database files go (default: the system's temporary directory)")
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/benchmarks.md's figures and plot")
    parser.add_argument("--save", help="write the raw results to this JSON file")
    parser.add_argument("--load", help="report (and --write-docs) from a saved JSON file instead of running")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=("main", "bulk", "downtime"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    if args.quick:
        sizes, alone, repeats, defaults_repeats, downtime_n, step = [200], [], 1, 1, 100, 2
    else:
        sizes = args.n or list(FULL_SIZES)
        alone = [DRIPCORE_ONLY_SIZE] if args.alone is None else args.alone
        repeats, downtime_n, step = args.repeats, args.downtime_n, args.step_seconds
        defaults_repeats = repeats if args.defaults_repeats is None else args.defaults_repeats
    if args.load:
        results = json.loads(Path(args.load).read_text())
    else:
        results = measure(
            sizes, alone, repeats, defaults_repeats, downtime_n, step, args.tmpdir,
            args.repeats if args.alone_repeats is None else args.alone_repeats, args.defaults_max_n,
            downtime_together=args.quick,
        )  # fmt: skip
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1))
    lines = report(results)
    for line in lines:
        print(line)
    if args.write_docs:
        write_docs(results, lines, DOCS_PAGE, DOCS_PLOT)
    return results


if __name__ == "__main__":
    main()
