"""How fast is the SQLite store under the engine: enrolling, dispatching, and one small tick in a big file?

A population of N enrollments in a 3-step sequence, due times spread over a
week, one in seven due now, in one SQLite file. Figures, one summary line each,
every line with its target and its ratio to a baseline:

- enroll throughput, per call (``Drip.enroll``, one transaction each) and in
  bulk (``SQLiteStore.add_enrollments``), against bare sqlite3 inserts of the
  same rows (one per transaction; ``executemany``);
- dispatch throughput: due steps committed and handed to a ``NullSender`` per
  second through ``Drip.tick`` with a large batch, against the practical floor,
  a bare sqlite3 loop that selects the same due rows and updates them in the
  same batch sizes (run on a copy of the same file);
- a tick's cost when 1,000 of the N are due (median of 5), and how much of
  it is SQLite: the tick's own statements, recorded as the store ran them and
  replayed with their parameters on a bare connection to a copy of the file;
- peak RSS while dispatching (sampled from /proc during the dispatch);
- with several sizes, the cost per dispatched step at the largest against the
  smallest.

Wall-clock figures depend on the machine; the targets are for 2 cores::

    python benchmarks/bench_sqlite.py                  # 100,000 enrollments
    python benchmarks/bench_sqlite.py --n 1000000      # 1,000,000 (and 100,000 for the scaling line)
    python benchmarks/bench_sqlite.py --n 500          # the smoke run the test suite uses
    python benchmarks/bench_sqlite.py --profile        # cProfile of the dispatch, top functions
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import itertools
import multiprocessing
import os
import pstats
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dripcore import Contact, Delay, Drip, Enrollment, EnrollmentStatus, ExitReason, Sequence, SequenceStatus, Step
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import ContactDirectory
from dripcore.testing import FakeClock, NullSender

UTC = timezone.utc
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BATCH = 5_000
SMALL_TICK = 1_000
SMALL_TICK_REPEATS = 5
TARGET_DISPATCH = 50_000
TARGET_FLOOR_SHARE = 0.25
TARGET_SMALL_TICK = 0.050
TARGET_RSS_MB = 200
TARGET_SCALING = 1.5
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
#: SQLite's page cache for the store and the bare loops alike (``--cache-kib``; default: the store's).
CACHE_KIB: int = inspect.signature(SQLiteStore).parameters["cache_size_kib"].default


def open_store(path: Path) -> SQLiteStore:
    return SQLiteStore(path, cache_size_kib=CACHE_KIB)


def welcome() -> Sequence:
    """The benchmark's 3-step sequence (exact delays: no time-zone arithmetic in the way)."""
    return Sequence(
        id="welcome",
        name="Welcome",
        status=SequenceStatus.ACTIVE,
        steps=(
            Step(position=1, subject="Welcome {{ firstName }}", text="Hello"),
            Step(position=2, delay=Delay.hours(24), subject="Tips", text="Tips"),
            Step(position=3, delay=Delay.hours(144), subject="Offer", text="Offer"),
        ),
    )


def later() -> Sequence:
    """A sequence whose first step waits a month: per-call enrollments that don't join the dispatch."""
    return Sequence(
        id="later",
        name="Later",
        status=SequenceStatus.ACTIVE,
        steps=(Step(position=1, delay=Delay.days(30), subject="Hi", text="Hi"),),
    )


class Contacts(ContactDirectory):
    """A million contacts without a million objects: each is made when asked for, and the last
    batch's are kept (the engine looks a batch's contacts up twice: to advance, then to deliver)."""

    def __init__(self) -> None:
        self._recent: dict[str, Contact] = {}

    def get(self, contact_id: str) -> Contact | None:
        return self.get_many((contact_id,)).get(contact_id)

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        recent = self._recent
        found = {i: recent.get(i) or Contact(id=i, email=f"{i}@example.com", first_name="Ana") for i in contact_ids}
        if len(recent) > 4 * BATCH:
            recent.clear()
        recent.update(found)
        return found

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        """Nobody is suppressed in the benchmark."""


def small_tick_groups(n: int) -> tuple[int, int]:
    """How many enrollments fall due in each of the measured small ticks (1,000 when N allows)."""
    size = min(SMALL_TICK, max(1, n // 20))
    return size, SMALL_TICK_REPEATS


def due_time(i: int, n: int, rng: random.Random) -> datetime:
    """One in seven due now; a few groups due in the next hour (the small ticks); the rest over the week."""
    size, groups = small_tick_groups(n)
    if i < size * groups:
        return NOW + timedelta(hours=1, minutes=10 * (i // size))
    if i % 7 == 0:
        return NOW - timedelta(seconds=rng.randrange(3600))
    return NOW + timedelta(hours=3) + timedelta(seconds=rng.randrange(7 * 86400))


def population(n: int) -> Iterator[Enrollment]:
    rng = random.Random(n)
    for i in range(n):
        yield Enrollment(
            id=f"enr-{i:08d}",
            sequence_id="welcome",
            contact_id=f"c{i}",
            status=EnrollmentStatus.ACTIVE,
            enrolled_at=NOW - timedelta(hours=1),
            next_step_due_at=due_time(i, n, rng),
        )


def _micros(instant: datetime) -> int:
    return (instant - _EPOCH) // _US


def _row(e: Enrollment) -> tuple[Any, ...]:
    assert e.next_step_due_at is not None
    return (e.id, e.sequence_id, e.contact_id, _micros(e.enrolled_at), "active", _micros(e.next_step_due_at), 0, 0, 1)


_BARE_INSERT = (
    "INSERT INTO enrollments (id, sequence_id, contact_id, enrolled_at, status, next_due, last_step_sent, "
    "version, seq_live) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _bare_connection(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with the store's settings (WAL, synchronous=NORMAL, the same cache)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    return conn


# --------------------------------------------------------------------------- phases (each in its own process)


def _enrollment_counters(e: Enrollment) -> list[tuple[str, int, str, int]]:
    """What Drip.enroll counts for a new enrollment, so stats() is right after a bulk import."""
    return [(e.sequence_id, 0, "recipients", 1), (e.sequence_id, 0, "status:active", 1)]


def build(path: Path, n: int) -> dict[str, float]:
    """Create the population with the bulk API; measure it against bare executemany inserts."""
    with open_store(path) as store:
        store.save_sequence(welcome())
        store.save_sequence(later())
        started = time.perf_counter()
        created = store.add_enrollments(population(n), allow_reentry=False, counters=_enrollment_counters)
        bulk = time.perf_counter() - started
    assert created == n
    scratch = path.with_name("bare-insert.db")
    SQLiteStore(scratch).close()
    conn = _bare_connection(scratch)
    rows = population(n)
    started = time.perf_counter()
    while chunk := [_row(e) for e in itertools.islice(rows, 10_000)]:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_BARE_INSERT, chunk)
        conn.execute("COMMIT")
    bare = time.perf_counter() - started
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    return {"bulk_rate": n / bulk, "bare_bulk_rate": n / bare}


def enroll_per_call(path: Path, calls: int) -> dict[str, float]:
    """Drip.enroll one contact at a time (a transaction each), against bare one-row transactions."""
    with open_store(path) as store:
        drip = Drip(store=store, sender=NullSender(), contacts=Contacts(), clock=FakeClock(NOW))
        started = time.perf_counter()
        for i in range(calls):
            drip.enroll("later", f"late-{i}")
        per_call = time.perf_counter() - started
    conn = _bare_connection(path)
    rows = [_row(e) for e in population(calls)]
    rows = [(f"bare-{r[0]}", "bare", *r[2:]) for r in rows]
    started = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_BARE_INSERT, row)
        conn.execute("COMMIT")
    bare = time.perf_counter() - started
    conn.execute("DELETE FROM enrollments WHERE sequence_id = 'bare'")
    conn.close()
    return {"enroll_rate": calls / per_call, "bare_enroll_rate": calls / bare}


_FLOOR_SELECT = (
    "SELECT rid, last_step_sent, version FROM enrollments WHERE status = 'active' AND seq_live = 1 "
    "AND next_due <= ? ORDER BY next_due, id LIMIT ?"
)
_FLOOR_UPDATE = (
    "UPDATE enrollments SET last_step_sent = ?, last_step_sent_at = ?, next_due = ?, version = ? WHERE rid = ?"
)


def _floor_batch(conn: sqlite3.Connection, now: int, next_due: int, limit: int) -> int:
    """One transaction of the floor: select up to ``limit`` due rows, update them; how many it did."""
    conn.execute("BEGIN IMMEDIATE")
    rows = conn.execute(_FLOOR_SELECT, (now, limit)).fetchall()
    if rows:
        conn.executemany(_FLOOR_UPDATE, [(last + 1, now, next_due, version + 1, rid) for rid, last, version in rows])
    conn.execute("COMMIT")
    return len(rows)


def floor_loop(path: Path, n: int) -> dict[str, float]:
    """The practical floor: select due rows and update them, in the dispatch's batch size, nothing else;
    then the small ticks' rows, as the engine's small ticks take them."""
    conn = _bare_connection(path)
    now = _micros(NOW)
    next_due = _micros(NOW + timedelta(hours=24))
    steps = 0
    started = time.perf_counter()
    while done := _floor_batch(conn, now, next_due, BATCH):
        steps += done
    elapsed = time.perf_counter() - started
    size, groups = small_tick_groups(n)
    small: list[float] = []
    for group in range(groups):
        at = NOW + timedelta(hours=1, minutes=10 * group, seconds=1)
        started = time.perf_counter()
        done = _floor_batch(conn, _micros(at), _micros(at + timedelta(hours=24)), 2 * size)
        small.append(time.perf_counter() - started)
        assert done == size, (done, size)
    conn.close()
    return {"floor_rate": steps / elapsed, "floor_steps": steps, "floor_small_tick_s": statistics.median(small)}


class PeakRSS:
    """Samples the process's resident set every 10 ms (Linux /proc), so the peak covers one phase only."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            with open("/proc/self/statm") as statm:
                self.peak = max(self.peak, int(statm.read().split()[1]) * self._page)
        except OSError:  # not Linux: the whole process's high-water mark instead
            self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class _Recorder(sqlite3.Connection):
    """A connection that, while ``_Recorder.recording`` is a list, notes there every statement
    run from the main thread, with its parameters (the store's background checkpoints run on a
    thread of their own and are not a tick's work)."""

    recording: list[tuple[bool, str, Any]] | None = None

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if _Recorder.recording is not None and threading.current_thread() is threading.main_thread():
            _Recorder.recording.append((False, sql, parameters))
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        if _Recorder.recording is not None and threading.current_thread() is threading.main_thread():
            parameters = list(parameters)
            _Recorder.recording.append((True, sql, parameters))
        return super().executemany(sql, parameters)


def _recording_connections() -> None:
    """Make the store in this (benchmark child) process open _Recorder connections."""
    connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return connect(*args, **kwargs, factory=_Recorder)

    sqlite3.connect = recording_connect  # type: ignore[assignment]


def _copy_database(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def replay(path: Path, statements: list[list[tuple[bool, str, Any]]]) -> list[float]:
    """Run each tick's recorded statements on a bare connection to ``path``: the seconds of each."""
    conn = _bare_connection(path)
    # The store checkpoints on a thread of its own, off the tick's path: the replay leaves checkpoints out.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    times = []
    for tick in statements:
        started = time.perf_counter()
        for many, sql, parameters in tick:
            if many:
                conn.executemany(sql, parameters)
            else:
                conn.execute(sql, parameters).fetchall()
        times.append(time.perf_counter() - started)
    conn.close()
    return times


def dispatch(path: Path, n: int, profile: bool) -> dict[str, Any]:
    """Everything due now through Drip.tick, then the small ticks of the groups due later,
    whose SQL is recorded and replayed on a bare connection to a copy of the file."""
    clock = FakeClock(NOW)
    sender = NullSender()
    _recording_connections()
    replay_copy = path.with_name(f"replay-{path.name}")
    with open_store(path) as store:
        drip = Drip(store=store, sender=sender, contacts=Contacts(), clock=clock, batch_size=BATCH)
        profiler = cProfile.Profile() if profile else None
        with PeakRSS() as rss:
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            steps = 0
            while True:
                report = drip.tick()
                steps += report.queued
                if not report.claimed:
                    break
            if profiler:
                profiler.disable()
            elapsed = time.perf_counter() - started
        size, groups = small_tick_groups(n)
        small: list[float] = []
        # The store is idle: the file and its WAL are a consistent copy of the state the small ticks start from.
        _copy_database(path, replay_copy)
        statements: list[list[tuple[bool, str, Any]]] = []
        for group in range(groups):
            clock.set(NOW + timedelta(hours=1, minutes=10 * group, seconds=1))
            drip.batch_size = 2 * size  # the same worker (its caches warm), claiming the whole group
            _Recorder.recording = recording = []
            started = time.perf_counter()
            report = drip.tick()
            small.append(time.perf_counter() - started)
            _Recorder.recording = None
            statements.append(recording)
            assert report.queued == size, (report, size)
        stats_s = []
        for _ in range(5):
            started = time.perf_counter()
            stats = drip.stats(welcome().id)
            stats_s.append(time.perf_counter() - started)
        assert stats.recipients > 0
    scan_s = []
    with _bare_connection(path) as conn:
        for _ in range(5):  # what a store without counters would do
            started = time.perf_counter()
            conn.execute("SELECT status, COUNT(*) FROM enrollments WHERE sequence_id = ? GROUP BY status",
                         (welcome().id,)).fetchall()  # fmt: skip
            scan_s.append(time.perf_counter() - started)
    replayed = replay(replay_copy, statements)
    _remove_database(replay_copy)
    figures: dict[str, Any] = {
        "small_tick_sql_s": statistics.median(replayed),
        "stats_s": statistics.median(stats_s),
        "scan_s": statistics.median(scan_s),
        "dispatch_rate": steps / elapsed,
        "dispatch_steps": steps,
        "rss_mb": rss.peak / 2**20,
        "small_tick_s": statistics.median(small),
        "small_tick_size": size,
    }
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        figures["profile"] = out.getvalue()
    return figures


def _child(queue: Any, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as exc:  # report it to the parent rather than dying silently
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one phase in a fresh child process: its memory and caches don't leak into the next."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(queue, fn, args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: a fork with a store's thread alive
        process.start()
    status, result = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed: {result}")
    return result  # type: ignore[no-any-return]


def measure(n: int, directory: Path, profile: bool = False) -> dict[str, Any]:
    path = directory / f"bench-{n}.db"
    figures: dict[str, Any] = {"n": n}
    figures.update(in_process(build, path, n))
    figures.update(in_process(enroll_per_call, path, max(100, min(2_000, n // 50))))
    floor_copy = directory / f"floor-{n}.db"
    _copy_database(path, floor_copy)
    figures.update(in_process(floor_loop, floor_copy, n))
    _remove_database(floor_copy)
    figures.update(in_process(dispatch, path, n, profile))
    assert figures["dispatch_steps"] == figures["floor_steps"], "the floor and the engine must do the same steps"
    _remove_database(path)
    return figures


# --------------------------------------------------------------------------- report


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: list[dict[str, Any]]) -> list[str]:
    lines = [f"settings: SQLiteStore(cache_size_kib={CACHE_KIB:,}) and the same page cache for the bare loops"]
    for f in results:
        n = f["n"]
        lines.append(
            f"[{n:,}] enroll via Drip.enroll (a transaction per call): {f['enroll_rate']:,.0f}/s = "
            f"{f['enroll_rate'] / f['bare_enroll_rate']:.0%} of bare one-row insert transactions "
            f"({f['bare_enroll_rate']:,.0f}/s) (target: none set)"
        )
        lines.append(
            f"[{n:,}] enroll in bulk (SQLiteStore.add_enrollments): {f['bulk_rate']:,.0f}/s = "
            f"{f['bulk_rate'] / f['bare_bulk_rate']:.0%} of bare executemany inserts ({f['bare_bulk_rate']:,.0f}/s) "
            "(target: none set)"
        )
        rate, floor = f["dispatch_rate"], f["floor_rate"]
        lines.append(
            f"[{n:,}] dispatch via Drip.tick (batch {BATCH:,}, NullSender): {rate:,.0f} steps/s over "
            f"{f['dispatch_steps']:,} due steps (target >= {TARGET_DISPATCH:,}/s: {_verdict(rate >= TARGET_DISPATCH)}, "
            f"{rate / TARGET_DISPATCH:.2f}x target)"
        )
        lines.append(
            f"[{n:,}] dispatch against the floor: {rate / floor:.1%} of a bare sqlite3 select+update loop "
            f"({floor:,.0f} rows/s, same rows, same batches) (target >= {TARGET_FLOOR_SHARE:.0%}: "
            f"{_verdict(rate / floor >= TARGET_FLOOR_SHARE)})"
        )
        tick, bare_tick = f["small_tick_s"], f["floor_small_tick_s"]
        lines.append(
            f"[{n:,}] one tick with {f['small_tick_size']:,} of {n:,} due: {tick * 1000:.1f} ms median of "
            f"{SMALL_TICK_REPEATS} (target < {TARGET_SMALL_TICK * 1000:.0f} ms: {_verdict(tick < TARGET_SMALL_TICK)}, "
            f"{tick / TARGET_SMALL_TICK:.2f}x target); the bare loop selects and updates the same rows in "
            f"{bare_tick * 1000:.1f} ms = {tick / bare_tick:.1f}x"
        )
        sql = f["small_tick_sql_s"]
        lines.append(
            f"[{n:,}] that tick's own SQL, its statements replayed on a bare connection: {sql * 1000:.1f} ms "
            f"median of {SMALL_TICK_REPEATS} = {sql / tick:.0%} of the tick; the other {(tick - sql) * 1000:.1f} ms "
            f"are Python (target: none set; within the tick's {TARGET_SMALL_TICK * 1000:.0f} ms target this SQL "
            f"leaves {max(TARGET_SMALL_TICK - sql, 0) * 1e6 / f['small_tick_size']:.1f} us of Python a step)"
        )
        lines.append(
            f"[{n:,}] Drip.stats() of a sequence with {n:,} enrollments: {f['stats_s'] * 1000:.2f} ms median of 5 "
            f"= {f['stats_s'] / f['scan_s']:.3f}x a COUNT(*) GROUP BY status scan ({f['scan_s'] * 1000:.0f} ms) "
            f"(target well under 1 s: {_verdict(f['stats_s'] < 0.1)})"
        )
        lines.append(
            f"[{n:,}] peak RSS while dispatching: {f['rss_mb']:.0f} MB (target < {TARGET_RSS_MB} MB: "
            f"{_verdict(f['rss_mb'] < TARGET_RSS_MB)}, {f['rss_mb'] / TARGET_RSS_MB:.2f}x target)"
        )
    if len(results) > 1:
        small, large = results[0], results[-1]
        ratio = (1 / large["dispatch_rate"]) / (1 / small["dispatch_rate"])
        lines.append(
            f"cost per dispatched step: {1e6 / large['dispatch_rate']:.1f} us at {large['n']:,} vs "
            f"{1e6 / small['dispatch_rate']:.1f} us at {small['n']:,} = {ratio:.2f}x "
            f"(target <= {TARGET_SCALING}x: {_verdict(ratio <= TARGET_SCALING)})"
        )
    return lines


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    global CACHE_KIB
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000], help="population size(s) (default 100,000)")
    parser.add_argument(
        "--no-reference", action="store_true", help="with --n above 100,000, don't also run 100,000 for scaling"
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the dispatch of the largest N")
    parser.add_argument(
        "--cache-kib", type=int, default=None, help=f"SQLite page cache in KiB (default: the store's, {CACHE_KIB})"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to put the database files (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.cache_kib is not None:
        CACHE_KIB = args.cache_kib
    sizes = sorted(set(args.n))
    if sizes[-1] > 100_000 and 100_000 not in sizes and not args.no_reference:
        sizes.insert(0, 100_000)
    directory = Path(tempfile.mkdtemp(prefix="dripcore-bench-", dir=args.dir))
    try:
        results = [measure(n, directory, profile=args.profile and n == sizes[-1]) for n in sizes]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    for line in report(results):
        print(line)
    if args.profile:
        print(results[-1]["profile"], file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
