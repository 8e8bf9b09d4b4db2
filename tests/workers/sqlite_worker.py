"""A dripcore worker process for the crash tests: a ``Drip`` on ``SQLiteStore`` with a durable sender.

Run as a script (``python tests/workers/sqlite_worker.py --db drip.db --log-dir logs``) or
call :func:`main` in a forked child. It ticks until every enrollment is finished and
every message settled, then exits 0. ``--crash PLAN`` makes it SIGKILL itself at a
point counted in its own work, never in wall-clock time, so a busy machine changes
when the kill comes but not where:

``after_claim:N``   the N-th time enrollments were leased, nothing advanced
``before_commit:N`` advanced in memory, nothing committed
``after_commit:N``  new states and their PENDING messages committed, nothing delivered
``mid_delivery:N``  an email durably delivered, its outcome not yet settled
``after_settle:N``  a batch settled
``in_claim:K``      mid-statement inside the write transaction of ``claim_due``,
``in_commit:K``     of ``commit``,
``in_settle:K``     of ``settle``: at the K-th SQLite progress callback (one every
                    ``PROGRESS_EVERY`` virtual-machine instructions) made there
``anywhere:K``      at the K-th event once ticking starts, an event being a call or return
                    in dripcore's code (profiled) or a progress callback inside a write transaction

Before it dies it writes one line to ``LOG_DIR/crash-<worker>.log``: the plan, and
where it struck (inside a write transaction or not, and in which function). A worker
that runs out of work before its planned crash exits 4 instead of 0, so a test can tell
"killed as planned" from "finished first".

The sender writes one line per call to its own append-only file,
``LOG_DIR/sent-<worker>.log``: ``D <key>`` when it delivers, ``R <key>`` when it
refuses a key it already delivered (what a careful provider does; a naive sender
would have sent it again). A single ``os.write`` per line, so a SIGKILL never
leaves half a line, and the file survives the process. At start the sender
reads every worker's log, so keys delivered by a killed predecessor are honoured.

``--barrier-dir DIR --barrier-parties N``: after its first tick the worker waits until
N workers have done theirs, so every worker surely takes part before any can run out of work.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make `dripcore` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import dripcore
from dripcore import Contact, Delay, Drip, Enrollment, ExitReason, Sequence, SequenceStatus, Step
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.model import UTC
from dripcore.ports import BrokenRecord, Change, ContactDirectory, Delivery, Email, MailSender, SystemClock

PHASES = ("after_claim", "before_commit", "after_commit", "mid_delivery", "after_settle")
TRANSACTIONS = {"in_claim": "claim_due", "in_commit": "commit", "in_settle": "settle"}
ANYWHERE = "anywhere"
PROGRESS_EVERY = 10
STEPS = 3
RAN_OUT = 4  # exit status: no work left before the planned crash
EVER = datetime(4000, 1, 1, tzinfo=UTC)  # later than any due time here, and an instant dripcore accepts

_DRIPCORE = str(Path(dripcore.__file__).parent) + os.sep
_HERE = str(Path(__file__).resolve())


def sequence() -> Sequence:
    """Three steps, each due as soon as the previous one is delivered."""
    return Sequence(
        id="crash",
        name="Crash test",
        status=SequenceStatus.ACTIVE,
        steps=tuple(Step(position=p, delay=Delay.immediately(), subject=f"Step {p}", text="Hi") for p in (1, 2, 3)),
    )


class Contacts(ContactDirectory):
    """Every contact id exists, at ``<id>@example.com``."""

    def get(self, contact_id: str) -> Contact | None:
        return Contact(id=contact_id, email=f"{contact_id}@example.com")

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        return {i: Contact(id=i, email=f"{i}@example.com") for i in contact_ids}

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        raise AssertionError(f"nobody should be suppressed ({contact_id}, {reason})")


def read_logs(log_dir: Path) -> tuple[list[str], list[str]]:
    """Every delivered key and every refused (repeated) key, over all workers' logs."""
    delivered: list[str] = []
    refused: list[str] = []
    for log in sorted(log_dir.glob("sent-*.log")):
        for line in log.read_text().splitlines():
            kind, key = line.split(" ", 1)
            (delivered if kind == "D" else refused).append(key)
    return delivered, refused


def read_crash_report(log_dir: Path, worker: str) -> tuple[str, bool, str] | None:
    """What a worker wrote just before killing itself: (plan, inside a write transaction, where), or None."""
    path = log_dir / f"crash-{worker}.log"
    if not path.exists():
        return None
    plan, transaction, where = path.read_text().rstrip("\n").split(" ", 2)
    return plan, transaction == "in-transaction", where


def _innermost(frame: FrameType | None) -> str:
    """The innermost function of dripcore or of this worker on the stack, as ``module.function``."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_DRIPCORE) or filename == _HERE:
            return f"{Path(filename).stem}.{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


class Crash:
    """SIGKILLs this process at the point its plan names (see the module docstring)."""

    def __init__(self, plan: str | None, report: Path) -> None:
        kind, count = plan.rsplit(":", 1) if plan else ("", "0")
        if plan and kind not in (*PHASES, *TRANSACTIONS, ANYWHERE):
            raise ValueError(f"--crash {plan!r}: unknown phase {kind!r}")
        self.plan = plan
        self.kind = kind
        self.target = int(count)
        self.report = report
        self._counted = itertools.count(1)  # next() on it is atomic: safe from any thread
        self._inside = threading.local()  # the store method whose transaction this thread runs
        self.connections: list[sqlite3.Connection] = []
        self.ticking = False
        self.struck = False

    @property
    def armed(self) -> bool:
        """A crash is planned and has not happened."""
        return bool(self.plan) and not self.struck

    def at(self, phase: str) -> None:
        """A tick reached ``phase``."""
        if phase == self.kind and next(self._counted) == self.target:
            self._strike(phase)

    @contextlib.contextmanager
    def inside(self, method: str) -> Iterator[None]:
        """The calling thread runs store method ``method``."""
        outer = getattr(self._inside, "method", None)
        self._inside.method = method
        try:
            yield
        finally:
            self._inside.method = outer

    def watch(self, connection: sqlite3.Connection) -> None:
        """Count this connection's progress inside write transactions (the store's own; a checkpointer
        connection never opens one, so its timing-dependent work is never counted)."""
        self.connections.append(connection)
        if self.kind in TRANSACTIONS:
            method = TRANSACTIONS[self.kind]

            def in_method() -> int:
                if connection.in_transaction and getattr(self._inside, "method", None) == method:
                    self._count("mid-statement")
                return 0

            connection.set_progress_handler(in_method, PROGRESS_EVERY)
        elif self.kind == ANYWHERE:

            def anywhere() -> int:
                if self.ticking and connection.in_transaction:
                    self._count("mid-statement")
                return 0

            connection.set_progress_handler(anywhere, PROGRESS_EVERY)

    def start_ticking(self) -> None:
        """From now on, an ``anywhere`` plan counts every call and return in dripcore's code, in every thread."""
        self.ticking = True
        if self.kind != ANYWHERE:
            return

        def profile(frame: FrameType, event: str, arg: Any) -> None:
            # dripcore's own code only: not the libraries it calls (a one-off decoding would take
            # most of the kills), nor this module (whose phases are planned by name)
            if frame.f_code.co_filename.startswith(_DRIPCORE):
                self._count(event, frame)

        threading.setprofile(profile)
        sys.setprofile(profile)

    def _count(self, event: str, frame: FrameType | None = None) -> None:
        """One more event; the plan's K-th strikes. Where it struck is worked out only then."""
        if next(self._counted) == self.target:
            if frame is None:  # from a progress handler: the statement's caller is two frames up
                here = inspect.currentframe()
                frame = here and here.f_back and here.f_back.f_back
            self._strike(f"{event} in {_innermost(frame)}")

    def _strike(self, where: str) -> None:
        transaction = any(_in_transaction(c) for c in self.connections)
        line = f"{self.plan} {'in-transaction' if transaction else 'outside'} {where}\n"
        fd = os.open(self.report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, line.encode())  # one write: the page cache outlives the process
        os.close(fd)
        self.struck = True
        os.kill(os.getpid(), signal.SIGKILL)


def _in_transaction(connection: sqlite3.Connection) -> bool:
    try:
        return connection.in_transaction
    except sqlite3.ProgrammingError:  # closed
        return False


@contextlib.contextmanager
def watching_connections(crash: Crash) -> Iterator[None]:
    """Every SQLite connection this process opens meanwhile is handed to ``crash.watch``."""
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def watched(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        crash.watch(connection)
        return connection

    sqlite3.connect = watched
    try:
        yield
    finally:
        sqlite3.connect = connect


class DurableSender(MailSender):
    """Honours idempotency keys and records every call durably (see the module docstring)."""

    sends_real_mail = False  # a test double: the placeholder unsubscribe link is fine

    def __init__(self, log_dir: Path, worker: str, crash: Crash) -> None:
        self.delivered = set(read_logs(log_dir)[0])
        self.fd = os.open(log_dir / f"sent-{worker}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.crash = crash

    def send(self, email: Email) -> str | None:
        key = email.idempotency_key
        if key in self.delivered:
            os.write(self.fd, f"R {key}\n".encode())
            return None
        os.write(self.fd, f"D {key}\n".encode())
        self.delivered.add(key)
        self.crash.at("mid_delivery")
        return None

    def close(self) -> None:
        os.close(self.fd)


class CrashingStore(SQLiteStore):
    """A SQLiteStore that may die at the phases of a tick, or inside its write transactions."""

    crash: Crash

    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Enrollment | BrokenRecord]:
        with self.crash.inside("claim_due"):
            claimed = super().claim_due(now, limit=limit, lease=lease, owner=owner)
        if claimed:
            self.crash.at("after_claim")
        return claimed

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        if owner is not None and changes:
            self.crash.at("before_commit")
        with self.crash.inside("commit"):
            refused = super().commit(changes, owner=owner)
        if owner is not None and changes:
            self.crash.at("after_commit")
        return refused

    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        with self.crash.inside("settle"):
            super().settle(deliveries, owner=owner)
        if deliveries:
            self.crash.at("after_settle")


def done(store: SQLiteStore) -> bool:
    """No enrollment left to advance and no message left to settle."""
    return store.count_due(EVER) == 0 and store.next_message_at() is None


def wait_for_others(directory: Path, worker: str, parties: int, deadline: float) -> bool:
    """Mark this worker as arrived and wait until ``parties`` workers have; False at the deadline."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / worker).touch()
    while len(list(directory.iterdir())) < parties:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--log-dir", required=True, type=Path)
    parser.add_argument("--worker", default=f"w{os.getpid()}")
    parser.add_argument("--crash", default=None, help="PLAN, see the module docstring")
    parser.add_argument("--lease", type=float, default=0.3, help="lease in seconds")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=120.0, help="give up (exit 3) after this many seconds")
    parser.add_argument("--barrier-dir", type=Path, default=None, help="see the module docstring")
    parser.add_argument("--barrier-parties", type=int, default=0)
    args = parser.parse_args(argv)

    crash = Crash(args.crash, args.log_dir / f"crash-{args.worker}.log")
    with watching_connections(crash):
        store = CrashingStore(args.db)
    if crash.kind in (*TRANSACTIONS, ANYWHERE) and not crash.connections:
        store.close()
        print(f"{args.worker}: the store opened no connection through sqlite3.connect to watch", file=sys.stderr)
        return 2
    store.crash = crash
    sender = DurableSender(args.log_dir, args.worker, crash)
    drip = Drip(
        store=store, sender=sender, contacts=Contacts(), clock=SystemClock(), worker_id=args.worker,
        lease=timedelta(seconds=args.lease), batch_size=args.batch,
    )  # fmt: skip
    deadline = time.monotonic() + args.timeout
    waiting = args.barrier_dir is not None
    crash.start_ticking()
    try:
        while time.monotonic() < deadline:
            report = drip.tick()
            if report.errors:
                print(f"{args.worker}: {report.errors}", file=sys.stderr)
            if waiting:
                waiting = False
                if not wait_for_others(args.barrier_dir, args.worker, args.barrier_parties, deadline):
                    break
            if report.claimed or report.messages:
                continue
            if done(store):
                if crash.armed:
                    print(f"{args.worker}: no work left before the planned crash {args.crash}", file=sys.stderr)
                    return RAN_OUT
                return 0
            time.sleep(0.005)  # others hold the rest under lease, or a retry is not due yet
        print(f"{args.worker}: not done after {args.timeout}s", file=sys.stderr)
        return 3
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        sender.close()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
