"""A dripcore worker process for the crash tests: a ``Drip`` on ``SQLiteStore`` with a durable sender.

Run as a script (``python tests/workers/sqlite_worker.py --db drip.db --log-dir logs``) or
call :func:`main` in a forked child. It ticks until every enrollment is finished and
every message settled, then exits 0; ``--crash PHASE:N`` makes it SIGKILL itself the
N-th time it reaches PHASE of a tick:

``after_claim``     enrollments leased, nothing advanced
``before_commit``   advanced in memory, nothing committed
``after_commit``    new states and their PENDING messages committed, nothing delivered
``mid_delivery``    an email durably delivered, its outcome not yet settled
``after_settle``    a batch settled

The sender writes one line per call to its own append-only file,
``LOG_DIR/sent-<worker>.log``: ``D <key>`` when it delivers, ``R <key>`` when it
refuses a key it already delivered (what a careful provider does; a naive sender
would have sent it again). A single ``os.write`` per line, so a SIGKILL never
leaves half a line, and the file survives the process. At start the sender
reads every worker's log, so keys delivered by a killed predecessor are honoured.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `dripcore` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from dripcore import Contact, Delay, Drip, Enrollment, ExitReason, Sequence, SequenceStatus, Step
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.model import UTC
from dripcore.ports import BrokenRecord, Change, ContactDirectory, Delivery, Email, MailSender, SystemClock

PHASES = ("after_claim", "before_commit", "after_commit", "mid_delivery", "after_settle")
STEPS = 3


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


class Crash:
    """SIGKILLs this process the N-th time a phase is reached."""

    def __init__(self, plan: str | None) -> None:
        self.phase, count = plan.split(":") if plan else ("", "0")
        self.remaining = int(count)

    def at(self, phase: str) -> None:
        if phase == self.phase:
            self.remaining -= 1
            if self.remaining <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


class DurableSender(MailSender):
    """Honours idempotency keys and records every call durably (see the module docstring)."""

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
    """A SQLiteStore that may die at the phases of a tick."""

    crash: Crash

    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Enrollment | BrokenRecord]:
        claimed = super().claim_due(now, limit=limit, lease=lease, owner=owner)
        if claimed:
            self.crash.at("after_claim")
        return claimed

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        if owner is not None and changes:
            self.crash.at("before_commit")
        refused = super().commit(changes, owner=owner)
        if owner is not None and changes:
            self.crash.at("after_commit")
        return refused

    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        super().settle(deliveries, owner=owner)
        if deliveries:
            self.crash.at("after_settle")


def done(store: SQLiteStore) -> bool:
    """No enrollment left to advance and no message left to settle."""
    return store.count_due(datetime(9999, 1, 1, tzinfo=UTC)) == 0 and store.next_message_at() is None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--log-dir", required=True, type=Path)
    parser.add_argument("--worker", default=f"w{os.getpid()}")
    parser.add_argument("--crash", default=None, help="PHASE:N, see the module docstring")
    parser.add_argument("--lease", type=float, default=0.3, help="lease in seconds")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=120.0, help="give up (exit 3) after this many seconds")
    args = parser.parse_args(argv)

    crash = Crash(args.crash)
    store = CrashingStore(args.db)
    store.crash = crash
    sender = DurableSender(args.log_dir, args.worker, crash)
    drip = Drip(
        store=store, sender=sender, contacts=Contacts(), clock=SystemClock(), worker_id=args.worker,
        lease=timedelta(seconds=args.lease), batch_size=args.batch,
    )  # fmt: skip
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            report = drip.tick()
            if report.errors:
                print(f"{args.worker}: {report.errors}", file=sys.stderr)
            if report.claimed or report.messages:
                continue
            if done(store):
                return 0
            time.sleep(0.005)  # others hold the rest under lease, or a retry is not due yet
        print(f"{args.worker}: not done after {args.timeout}s", file=sys.stderr)
        return 3
    finally:
        sender.close()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
