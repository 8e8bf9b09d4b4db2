"""How fast is ``Drip.enroll_many`` against the bare bulk path it is built on?

N contacts (default 10,000) enrolled into an active 3-step sequence in a fresh
SQLite file, two ways:

- ``Drip.enroll_many(sequence_id, contact_ids)``: the contact look-up, the
  pure ``enroll`` per contact, one ``Store.add_enrollment_batch`` write, the
  outcomes, the ``Subscribed`` events (to a sink that drops them) and the wake-up;
- the bare path a host would write without it: the pure ``dripcore.enroll`` per
  contact plus one ``SQLiteStore.add_enrollments`` call, with the same counters.

One line: the rate of each, and enroll_many's as a share of the bare path's,
against the target (at least 80%). Best of ``--repeats`` runs each, in alternation.
Wall-clock figures depend on the machine::

    python benchmarks/bench_enroll_many.py              # 10,000 contacts
    python benchmarks/bench_enroll_many.py --n 100000
    python benchmarks/bench_enroll_many.py --n 200 --repeats 1   # the smoke run the test suite uses
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dripcore import Contact, Delay, Drip, EnrollOutcome, ExitReason, SequenceStatus, Step, enroll
from dripcore import Sequence as DripSequence
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.engine import new_id
from dripcore.model import Event
from dripcore.ports import ContactDirectory, EventSink
from dripcore.testing import FakeClock, NullSender

UTC = timezone.utc
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TARGET_SHARE = 0.80


def welcome() -> DripSequence:
    return DripSequence(
        id="welcome",
        name="Welcome",
        status=SequenceStatus.ACTIVE,
        steps=(
            Step(position=1, subject="Welcome {{ firstName }}", text="Hello"),
            Step(position=2, delay=Delay.hours(24), subject="Tips", text="Tips"),
            Step(position=3, delay=Delay.hours(144), subject="Offer", text="Offer"),
        ),
    )


class Contacts(ContactDirectory):
    """N contacts in a dict, looked up in one batch."""

    def __init__(self, n: int) -> None:
        self.by_id = {f"c{i}": Contact(id=f"c{i}", email=f"c{i}@example.com", first_name="Ana") for i in range(n)}

    def get(self, contact_id: str) -> Contact | None:
        return self.by_id.get(contact_id)

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        by_id = self.by_id
        return {i: by_id[i] for i in contact_ids if i in by_id}

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        """Nobody is suppressed in the benchmark."""


class DroppedEvents(EventSink):
    """Takes the events and drops them (the sink's own cost is the host's)."""

    def publish(self, events: Sequence[Event]) -> None:
        """Drop ``events``."""


def run_enroll_many(path: Path, contacts: Contacts) -> float:
    """Seconds for one ``Drip.enroll_many`` of every contact into a fresh file."""
    with SQLiteStore(path) as store:
        drip = Drip(store=store, sender=NullSender(), contacts=contacts, clock=FakeClock(NOW), events=DroppedEvents())
        drip.save_sequence(welcome())
        ids = list(contacts.by_id)
        started = time.perf_counter()
        result = drip.enroll_many("welcome", ids)
        elapsed = time.perf_counter() - started
    assert result.counts()[EnrollOutcome.CREATED] == len(ids)
    return elapsed


def run_bare(path: Path, contacts: Contacts) -> float:
    """Seconds for the pure ``enroll`` per contact plus one ``SQLiteStore.add_enrollments`` into a fresh file."""
    store = SQLiteStore(path)
    with store:
        sequence = welcome()
        store.save_sequence(sequence)
        ids = list(contacts.by_id)
        counters = [("welcome", 0, "recipients", 1), ("welcome", 0, "status:active", 1)]
        started = time.perf_counter()
        found = contacts.get_many(ids)
        created = store.add_enrollments(
            (enroll(sequence, found[i], NOW, enrollment_id=new_id()).enrollment for i in ids),
            allow_reentry=False,
            counters=lambda _: counters,
        )
        elapsed = time.perf_counter() - started
    assert created == len(ids)
    return elapsed


def measure(n: int, repeats: int, directory: Path) -> dict[str, Any]:
    contacts = Contacts(n)
    many: list[float] = []
    bare: list[float] = []
    for i in range(repeats):
        for name, run, into in (("many", run_enroll_many, many), ("bare", run_bare, bare)):
            path = directory / f"{name}-{i}.db"
            into.append(run(path, contacts))
    many_rate, bare_rate = n / min(many), n / min(bare)
    return {"n": n, "many_rate": many_rate, "bare_rate": bare_rate, "share": many_rate / bare_rate}


def report(f: Mapping[str, Any]) -> str:
    verdict = "met" if f["share"] >= TARGET_SHARE else "MISSED"
    return (
        f"[{f['n']:,}] Drip.enroll_many: {f['many_rate']:,.0f}/s = {f['share']:.0%} of the bare path "
        f"(pure enroll() + SQLiteStore.add_enrollments, {f['bare_rate']:,.0f}/s); "
        f"target >= {TARGET_SHARE:.0%}: {verdict}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="contacts enrolled (default 10,000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each path; the best counts (default 5)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the database files (default: a temp dir)")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="dripcore-bench-", dir=args.dir))
    try:
        figures = measure(args.n, args.repeats, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(report(figures))
    return figures


if __name__ == "__main__":
    main()
