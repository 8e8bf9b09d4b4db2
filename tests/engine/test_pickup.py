"""An idle SQLite worker notices other processes' commits while it waits, without writing anything
while nothing changes; a forked child too. The pickup benchmark keeps working.

Timing is never asserted beyond "it was woken, not timed out": the machine is shared and noisy.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from dripcore.adapters.sqlite import SQLiteStore
from dripcore.testing.contract import sample_enrollment, sample_sequence

ROOT = Path(__file__).resolve().parents[2]

# A web process: open the store, say READY, enroll one contact on GO, say DONE.
ENROLL_IN_ANOTHER_PROCESS = """
import sys
from dripcore import Contact, Drip
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.testing import MemoryContacts, NullSender

with SQLiteStore(sys.argv[1]) as store:
    drip = Drip(store=store, sender=NullSender(), contacts=MemoryContacts([Contact(id="ana", email="ana@example.com")]))
    print("READY", flush=True)
    sys.stdin.readline()
    drip.enroll("seq", "ana")
    print("DONE", flush=True)
"""

WOKEN_WELL_BEFORE = 20.0  # seconds, of a 30 s wait: woken, not timed out


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "drip.db"
    with SQLiteStore(path) as store:
        store.save_sequence(sample_sequence())
    return path


def _wait_in_thread(store: SQLiteStore, timeout: float, wake: threading.Event | None = None) -> dict[str, Any]:
    """Start ``store.wait_for_work(timeout, wake)`` on a thread; the dict gets its result and duration."""
    outcome: dict[str, Any] = {}

    def wait() -> None:
        started = time.monotonic()
        outcome["returned"] = store.wait_for_work(timeout, wake)
        outcome["seconds"] = time.monotonic() - started

    outcome["thread"] = threading.Thread(target=wait)
    outcome["thread"].start()
    return outcome


def _files(path: Path) -> dict[str, tuple[int, int] | None]:
    """Size and modification time of the database and its WAL (None for a missing file)."""
    found: dict[str, tuple[int, int] | None] = {}
    for name in (path, Path(f"{path}-wal")):
        try:
            stat = name.stat()
        except FileNotFoundError:
            found[name.name] = None
        else:
            found[name.name] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_an_enrollment_in_another_process_wakes_a_waiting_worker(db: Path) -> None:
    """A web process enrolls while the worker is inside wait_for_work(30): the wait returns True
    long before its timeout, woken by the store (the wake event was never set)."""
    with subprocess.Popen(
        [sys.executable, "-c", ENROLL_IN_ANOTHER_PROCESS, str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    ) as web:  # fmt: skip
        assert web.stdin is not None
        assert web.stdout is not None
        try:
            assert web.stdout.readline().strip() == "READY"
            with SQLiteStore(db) as store:
                wake = threading.Event()
                outcome = _wait_in_thread(store, 30, wake)
                time.sleep(0.3)  # the worker is asleep by now (if not, it wakes all the same)
                web.stdin.write("GO\n")
                web.stdin.flush()
                assert web.stdout.readline().strip() == "DONE"
                outcome["thread"].join(30)
                assert outcome["returned"] is True
                assert outcome["seconds"] < WOKEN_WELL_BEFORE, outcome
                assert not wake.is_set()
                assert [e.contact_id for e in store.find_enrollments()] == ["ana"]
        finally:
            if web.poll() is None:
                web.kill()


def test_an_idle_wait_takes_no_write_lock_and_writes_nothing(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """While nothing changes, waiting writes nothing and never asks for the write lock: it waits out
    its timeout while another connection holds that lock, with nothing logged (a write attempt would
    fail after the 0.1 s busy timeout and be logged, or raise) and the files untouched."""
    with SQLiteStore(db, busy_timeout=0.1) as store:
        store.list_sequences()
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock, held for the whole wait
            before = _files(db)
            with caplog.at_level(logging.DEBUG, logger="dripcore"):
                assert store.wait_for_work(1.0) is False
            assert _files(db) == before
            assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        finally:
            other.execute("ROLLBACK")
            other.close()


def test_the_stores_own_writes_do_not_wake_it(db: Path) -> None:
    """Writes through the waiting store itself (another thread of the worker) are no reason to wake."""
    with SQLiteStore(db) as store:
        outcome = _wait_in_thread(store, 1.0)
        for i in range(5):
            store.add_enrollment(sample_enrollment(f"own{i}"), allow_reentry=False)
        outcome["thread"].join(30)
        assert outcome["returned"] is False


def test_a_commit_between_two_waits_is_not_lost(db: Path) -> None:
    """Another connection's commit while the worker was busy (not waiting) wakes its next wait at once."""
    with SQLiteStore(db) as store, SQLiteStore(db) as web:
        assert store.wait_for_work(0.05) is False
        web.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
        started = time.monotonic()
        assert store.wait_for_work(30) is True
        assert time.monotonic() - started < WOKEN_WELL_BEFORE
        assert store.wait_for_work(0.3) is False, "that commit was taken; nothing new since"


def test_the_wake_event_and_the_timeout_still_end_a_wait(db: Path) -> None:
    """A set ``wake`` returns True; with nothing happening the timeout returns False (":memory:" too)."""
    with SQLiteStore(db) as store, SQLiteStore(":memory:") as memory:
        for s in (store, memory):
            wake = threading.Event()
            wake.set()
            assert s.wait_for_work(30, wake) is True
            assert s.wait_for_work(0.2, threading.Event()) is False
            assert s.wait_for_work(0.2) is False


def test_closing_the_store_under_a_waiting_worker_leaves_a_plain_wait(db: Path) -> None:
    """A store closed while a thread waits on it: the wait goes on without watching (no error), and
    the wake event still ends it."""
    store = SQLiteStore(db)
    wake = threading.Event()
    outcome = _wait_in_thread(store, 30, wake)
    store.close()
    with SQLiteStore(db) as web:
        web.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
    wake.set()
    outcome["thread"].join(30)
    assert outcome["returned"] is True


def test_a_busy_neighbour_wakes_an_idle_worker_at_most_once_per_interval(db: Path) -> None:
    """Another process writing without pause (clicks, settles) wakes the worker at most once per
    pickup_interval, so a worker that ticks after each wake-up does not spin."""
    with SQLiteStore(db, pickup_interval=0.1) as store, SQLiteStore(db) as neighbour:
        stop = threading.Event()

        def write() -> None:
            while not stop.is_set():
                neighbour.bump([("seq", 0, "clicks", 1)])

        writer = threading.Thread(target=write)
        writer.start()
        try:
            started = time.monotonic()
            wakes = 0
            while time.monotonic() - started < 1.0:
                wakes += int(store.wait_for_work(5.0))
            window = time.monotonic() - started
        finally:
            stop.set()
            writer.join(30)
        assert 1 <= wakes <= window / 0.1 + 2, (wakes, window)


def _child_waits(store: SQLiteStore, ready: Any, results: Any) -> None:
    store.list_sequences()  # the child's own connection, opened now: later commits are news
    ready.put(os.getpid())
    started = time.monotonic()
    returned = store.wait_for_work(30)
    results.put((returned, time.monotonic() - started, len(store.find_enrollments())))
    store.close()


def test_a_forked_child_waits_on_its_own_connection(db: Path) -> None:
    """A worker forked with the parent's store waits on a connection of its own and is woken by
    another process's commit; the parent's store goes on working, and hears the commit too."""
    with SQLiteStore(db) as store:
        assert store.wait_for_work(0.05) is False
        ctx = multiprocessing.get_context("fork")
        ready, results = ctx.Queue(), ctx.Queue()
        child = ctx.Process(target=_child_waits, args=(store, ready, results))
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking with threads alive (the store's checkpointer): this test
            # is about exactly that, and the store holds its checkpoints back while a fork happens.
            warnings.simplefilter("ignore", DeprecationWarning)
            child.start()
        try:
            assert ready.get(timeout=30) != os.getpid()
            with SQLiteStore(db) as web:
                web.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
            returned, seconds, seen = results.get(timeout=30)
            assert (returned, seen) == (True, 1)
            assert seconds < WOKEN_WELL_BEFORE
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
        assert store.wait_for_work(30) is True, "the parent's connection saw the commit too"
        assert [e.id for e in store.find_enrollments()] == ["e1"]


def test_the_pickup_interval_is_checked(db: Path) -> None:
    """pickup_interval must be a positive number of seconds, at most a minute."""
    for bad in (0, -1, 61, float("nan")):
        with pytest.raises(ValueError, match="pickup_interval"):
            SQLiteStore(db, pickup_interval=bad)
    with pytest.raises(TypeError, match="pickup_interval"):
        SQLiteStore(db, pickup_interval="fast")  # type: ignore[arg-type]


def test_bench_pickup_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_pickup.py --quick runs end to end on SQLite (no timing asserted)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_pickup
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    figures = bench_pickup.main(["--stores", "sqlite", "--quick", "--idle", "5"])
    assert figures["sqlite_after_samples"] == 3
    assert figures["sqlite_after_arrived"] == 3, "every enrollment reached the worker's sender"
    assert "sqlite   after : 3 samples" in capsys.readouterr().out
