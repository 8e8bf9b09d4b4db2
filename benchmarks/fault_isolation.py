"""Does one bad record hold up anyone else's email, and does it stop the worker?

For each kind of fault, on each store: a batch of one bad and nine healthy
enrollments, all due now (batch size 10), and ONE tick. It counts the healthy
emails that went out in that tick (accepted by the sender and recorded
DELIVERED in the outbox). Then, on a fresh batch with the same fault, it runs
``Drip.run(max_ticks=3)`` and says whether that returned normally. One line
per fault and store::

    fault=commit-rejects-one store=sqlite healthy_delivered_same_tick=0/9 ratio=0.00 worker_survives=no

A worker that neither returns nor raises (trying the same failing tick again
and again) counts as not surviving. What a tick or a run raised is printed on
stderr, so stdout holds only the summary lines.

    python benchmarks/fault_isolation.py                       # memory and SQLite
    python benchmarks/fault_isolation.py --postgres DSN        # and PostgreSQL (a schema of its own, dropped after)

It uses only public API that dripcore had before tick isolation, so it also
runs against an older checkout: ``PYTHONPATH=old/src python benchmarks/fault_isolation.py``.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import itertools
import secrets
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from dripcore import (
    Contact,
    Delay,
    Drip,
    Enrollment,
    ExitReason,
    LiquidRenderer,
    OutboxStatus,
    RecordRejected,
    Sequence,
    SequenceStatus,
    Step,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Change, ContactDirectory, Delivery, Email, Rendered, Renderer, Store
from dripcore.testing import FakeClock, MemoryContacts, RecordingEvents, RecordingSender

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BATCH = 10
HEALTHY = 9
RUN_WAITS = 200  # clock waits one run(max_ticks=3) may take before it counts as stuck


class HostError(Exception):
    """An exception from the host's own code: not a dripcore error."""


class Stuck(BaseException):
    """run() kept trying without finishing its ticks (a BaseException, so no handler in run() swallows it)."""


class BudgetClock(FakeClock):
    """A fake clock that gives up after ``RUN_WAITS`` waits."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.waits = 0

    def wait(self, seconds: float, wake: threading.Event) -> None:
        self.waits += 1
        if self.waits > RUN_WAITS:
            raise Stuck(f"still running after {RUN_WAITS} waits")
        super().wait(seconds, wake)


# --------------------------------------------------------------------------- wrappers


class StoreWrapper(Store):
    """A real store behind a wrapper that misbehaves on purpose; every call goes through to ``inner``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _pass_through(name: str) -> Callable[..., Any]:
    def method(self: StoreWrapper, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name, _value in vars(Store).items():
    if callable(_value) and not _name.startswith("_"):
        setattr(StoreWrapper, _name, _pass_through(_name))
abc.update_abstractmethods(StoreWrapper)


class RejectingCommits(StoreWrapper):
    bad: str | None = None

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        if self.bad is not None and any(c.enrollment.id == self.bad for c in changes):
            raise RecordRejected(kind="enrollment", reasons={self.bad: "text the store can't encode"})
        return self.inner.commit(changes, owner=owner)


class RejectingSettles(StoreWrapper):
    bad: str | None = None
    plain = False

    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        if self.bad is not None and any(d.key == self.bad for d in deliveries):
            if self.plain:
                raise HostError("the driver choked on a provider reply")
            raise RecordRejected(kind="message", reasons={self.bad: "provider reply the store can't encode"})
        self.inner.settle(deliveries, owner=owner)


class UnreadableSequence(StoreWrapper):
    bad: str | None = None

    def get_sequence(self, sequence_id: str) -> Sequence | None:
        if sequence_id == self.bad:
            raise HostError(f"sequence {sequence_id!r}: the JSON decoder crashed")
        return self.inner.get_sequence(sequence_id)


class FlakyDirectory(MemoryContacts):
    def __init__(self) -> None:
        super().__init__()
        self.unreadable: set[str] = set()
        self.batch_down = False

    def get(self, contact_id: str) -> Contact | None:
        if contact_id in self.unreadable:
            raise HostError(f"contacts row {contact_id!r} can't be read")
        return super().get(contact_id)

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        ids = set(contact_ids)
        if self.batch_down or ids & self.unreadable:
            raise HostError("the batch look-up failed")
        return super().get_many(ids)


class RowDirectory(ContactDirectory):
    """Builds a Contact from a row at each look-up, as an ORM mapper would."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, contact: Contact) -> Contact:
        self.rows[contact.id] = {"id": contact.id, "email": contact.email, "first_name": contact.first_name,
                                 "metadata": dict(contact.metadata)}  # fmt: skip
        return contact

    def get(self, contact_id: str) -> Contact | None:
        row = self.rows.get(contact_id)
        return None if row is None else Contact(**row)

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        self.rows[contact_id]["suppressed"] = reason


class BuggyRenderer(Renderer):
    def __init__(self) -> None:
        self.inner = LiquidRenderer()
        self.broken_for: set[str] = set()

    def render(self, step: Step, *, sequence: Sequence, contact: Contact, enrollment: Enrollment) -> Rendered:
        if contact.id in self.broken_for:
            raise HostError("template helper crashed")
        return self.inner.render(step, sequence=sequence, contact=contact, enrollment=enrollment)


class PickySender(RecordingSender):
    def __init__(self) -> None:
        super().__init__()
        self.raises_for: set[str] = set()
        self.odd_ids: dict[str, object] = {}

    def send(self, email: Email) -> str | None:
        if email.to in self.raises_for:
            raise HostError("provider SDK: unexpected response shape")
        provider_id = super().send(email)
        return self.odd_ids.get(email.to, provider_id)  # type: ignore[return-value]


class FussySink(RecordingEvents):
    refuse: str | None = None

    def publish(self, events: Seq[Any]) -> None:
        if self.refuse is not None and any(e.enrollment_id == self.refuse for e in events):
            raise HostError("webhook endpoint answered 500")
        super().publish(events)


# --------------------------------------------------------------------------- the batch


def person(contact_id: str) -> Contact:
    return Contact(id=contact_id, email=f"{contact_id}@example.com", first_name=contact_id.title(),
                   metadata={"plan": "gold"})  # fmt: skip


def spoiled(contact: Contact, field: str, char: str) -> Contact:
    """A copy of ``contact`` with ``char`` in ``field``, past the model's checks."""
    copy = attrs.evolve(contact)
    value: object = {"email": f"p{char}@example.com", "first_name": f"Pi{char}a",
                     "metadata": MappingProxyType({"plan": f"gold{char}"})}[field]  # fmt: skip
    object.__setattr__(copy, field, value)
    return copy


def drip_sequence(sequence_id: str, steps: int) -> Sequence:
    all_steps = (
        Step(position=1, subject="Welcome {{firstName}}", text="Hello {{firstName}}, your plan is {{plan}}."),
        Step(position=2, delay=Delay.minutes(10), subject="Tips", text="Tips on {{plan}}."),
        Step(position=3, delay=Delay.days(1), subject="An offer", text="Upgrade from {{plan}}."),
    )
    return Sequence(id=sequence_id, name=sequence_id.title(), status=SequenceStatus.ACTIVE, steps=all_steps[:steps])


class Bench:
    """A Drip with one bad and nine healthy enrollments due now."""

    def __init__(self, store: Store, *, contacts: Any = None, sender: RecordingSender | None = None,
                 renderer: Renderer | None = None, events: RecordingEvents | None = None,
                 steps: int = 3, bad_sequence: str = "drip") -> None:  # fmt: skip
        self.store = store
        self.clock = BudgetClock(T0)
        self.contacts = contacts if contacts is not None else MemoryContacts()
        self.sender = sender if sender is not None else RecordingSender()
        counter = itertools.count(1)
        self.drip = Drip(
            store=store, sender=self.sender, clock=self.clock, contacts=self.contacts,
            events=events if events is not None else RecordingEvents(), renderer=renderer, batch_size=BATCH,
            id_factory=lambda: f"enr_{next(counter):06d}",
        )  # fmt: skip
        self.drip.save_sequence(drip_sequence("drip", steps))
        if bad_sequence != "drip":
            self.drip.save_sequence(drip_sequence(bad_sequence, steps))
        for contact_id in ["bad", *(f"h{i:02d}" for i in range(1, HEALTHY + 1))]:
            self.contacts.add(person(contact_id))
        self.bad, _ = self.drip.enroll(bad_sequence, "bad")  # first, so it is in the first batch
        self.healthy = [self.drip.enroll("drip", f"h{i:02d}")[0] for i in range(1, HEALTHY + 1)]

    def healthy_delivered(self) -> int:
        sent = {e.idempotency_key for e in self.sender.sent}
        count = 0
        for enrollment in self.healthy:
            key = f"{enrollment.id}:1"
            message = self.store.get_message(key) if key in sent else None
            count += message is not None and message.status is OutboxStatus.DELIVERED
        return count


# --------------------------------------------------------------------------- raw rows


def corrupt(store: Store, table: str, row_id: str, column: str, value: str) -> None:
    """Write ``value`` into one stored row behind the store's back."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (value, row_id))
        return
    import psycopg

    postgres: Any = store  # a PostgresStore: its dsn and schema
    cast = "::jsonb" if column in ("variables", "body") else ""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'UPDATE "{postgres.schema}".{table} SET {column} = %s{cast} WHERE id = %s', (value, row_id))


# --------------------------------------------------------------------------- faults


def text_in_contact(field: str, char: str) -> Callable[[Store], Bench]:
    def arm(store: Store) -> Bench:
        bench = Bench(store)
        bench.contacts.add(spoiled(person("bad"), field, char))
        return bench

    return arm


def commit_rejects_one(store: Store) -> Bench:
    wrapper = RejectingCommits(store)
    bench = Bench(wrapper)
    wrapper.bad = bench.bad.id
    return bench


def contact_look_up_raises(store: Store, *, only_the_batch: bool = False) -> Bench:
    directory = FlakyDirectory()
    bench = Bench(store, contacts=directory)
    if only_the_batch:
        directory.batch_down = True
    else:
        directory.unreadable = {"bad"}
    return bench


def contact_cannot_be_built(store: Store) -> Bench:
    directory = RowDirectory()
    bench = Bench(store, contacts=directory)
    directory.rows["bad"]["first_name"] = "Ann\nMarie"
    return bench


def corrupt_enrollment(column: str, value: str, steps: int = 3) -> Callable[[Store], Bench]:
    def arm(store: Store) -> Bench:
        bench = Bench(store, steps=steps)
        corrupt(store, "enrollments", bench.bad.id, column, value)
        return bench

    return arm


def corrupt_sequence_row(store: Store) -> Bench:
    bench = Bench(store, bad_sequence="broken")
    corrupt(store, "sequences", "broken", "body", '["not", "a", "sequence"]')
    return bench


def sequence_read_raises(store: Store) -> Bench:
    wrapper = UnreadableSequence(store)
    bench = Bench(wrapper, bad_sequence="broken")
    wrapper.bad = "broken"
    return bench


def render_raises(store: Store) -> Bench:
    renderer = BuggyRenderer()
    bench = Bench(store, renderer=renderer)
    renderer.broken_for = {"bad"}
    return bench


def send_raises(store: Store) -> Bench:
    sender = PickySender()
    bench = Bench(store, sender=sender)
    sender.raises_for = {"bad@example.com"}
    return bench


def send_returns_a_dict(store: Store) -> Bench:
    sender = PickySender()
    bench = Bench(store, sender=sender)
    sender.odd_ids = {"bad@example.com": {"id": "abc-123", "status": "queued"}}
    return bench


def settle_rejects_one(store: Store, *, plain: bool = False) -> Bench:
    wrapper = RejectingSettles(store)
    wrapper.plain = plain
    bench = Bench(wrapper)
    wrapper.bad = f"{bench.bad.id}:1"
    return bench


def event_sink_raises(store: Store) -> Bench:
    sink = FussySink()
    bench = Bench(store, events=sink)
    sink.refuse = bench.bad.id
    return bench


ALL = ("memory", "sqlite", "postgres")
ON_DISK = ("sqlite", "postgres")
FAULTS: dict[str, tuple[Callable[[Store], Bench], tuple[str, ...]]] = {
    "surrogate-in-email": (text_in_contact("email", "\udce9"), ALL),
    "surrogate-in-first-name": (text_in_contact("first_name", "\udce9"), ALL),
    "nul-in-email": (text_in_contact("email", "\x00"), ALL),
    "nul-in-metadata": (text_in_contact("metadata", "\x00"), ALL),
    "commit-rejects-one": (commit_rejects_one, ALL),
    "contact-look-up-raises": (contact_look_up_raises, ALL),
    "batch-look-up-raises": (lambda store: contact_look_up_raises(store, only_the_batch=True), ALL),
    "contact-cannot-be-built": (contact_cannot_be_built, ALL),
    "undecodable-enrollment-row": (corrupt_enrollment("variables", "[1, 2]"), ON_DISK),
    "unknown-status-row": (corrupt_enrollment("status", "zombie"), ON_DISK),
    # One step: once the healthy ones complete, the corrupt row is all next_wake_at() has left to read.
    "text-due-time-row": (corrupt_enrollment("next_due", "tomorrow morning", steps=1), ("sqlite",)),
    "corrupt-sequence-row": (corrupt_sequence_row, ON_DISK),
    "sequence-read-raises": (sequence_read_raises, ALL),
    "render-raises": (render_raises, ALL),
    "send-raises": (send_raises, ALL),
    "send-returns-a-dict": (send_returns_a_dict, ALL),
    "settle-rejects-one": (settle_rejects_one, ALL),
    "settle-raises-for-the-batch": (lambda store: settle_rejects_one(store, plain=True), ALL),
    "event-sink-raises": (event_sink_raises, ALL),
}


# --------------------------------------------------------------------------- measuring


StoreFactory = Callable[[], contextlib.AbstractContextManager[Store]]


def note(fault: str, kind: str, what: str, exc: BaseException) -> None:
    print(f"# fault={fault} store={kind}: {what} raised {type(exc).__name__}: {str(exc)[:200]!r}", file=sys.stderr)


def one_tick(fault: str, kind: str, arm: Callable[[Store], Bench], stores: StoreFactory) -> int:
    """How many healthy emails go out in the first tick."""
    with stores() as store:
        bench = arm(store)
        try:
            bench.drip.tick()
        except Exception as exc:
            note(fault, kind, "tick()", exc)
        return bench.healthy_delivered()


def survives(fault: str, kind: str, arm: Callable[[Store], Bench], stores: StoreFactory) -> bool:
    """Whether run(max_ticks=3) returns normally on a fresh batch with the fault."""
    with stores() as store:
        bench = arm(store)
        try:
            bench.drip.run(max_ticks=3, idle=60)
        except (Exception, Stuck) as exc:
            note(fault, kind, "run(max_ticks=3)", exc)
            return False
        return True


def store_factories(postgres: str | None, tmp: Path) -> dict[str, StoreFactory]:
    counter = itertools.count()

    @contextlib.contextmanager
    def memory() -> Iterator[Store]:
        yield MemoryStore()

    @contextlib.contextmanager
    def sqlite() -> Iterator[Store]:
        store = SQLiteStore(tmp / f"drip-{next(counter)}.db")
        try:
            yield store
        finally:
            store.close()

    factories: dict[str, StoreFactory] = {"memory": memory, "sqlite": sqlite}
    if postgres is not None:
        import psycopg

        from dripcore.adapters.postgres import PostgresStore

        @contextlib.contextmanager
        def postgresql() -> Iterator[Store]:
            schema = f"fault_isolation_{secrets.token_hex(4)}"
            store = PostgresStore(postgres, schema=schema)
            try:
                yield store
            finally:
                store.close()
                with psycopg.connect(postgres, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

        factories["postgres"] = postgresql
    return factories


def main(argv: list[str] | None = None) -> dict[tuple[str, str], tuple[int, bool]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="DSN", help="also run on PostgreSQL (in a schema of its own)")
    parser.add_argument("--only", metavar="FAULT", action="append", help="run only these faults")
    args = parser.parse_args(argv)
    results: dict[tuple[str, str], tuple[int, bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        factories = store_factories(args.postgres, Path(tmp))
        for fault, (arm, kinds) in FAULTS.items():
            if args.only and fault not in args.only:
                continue
            for kind, stores in factories.items():
                if kind not in kinds:
                    continue
                delivered = one_tick(fault, kind, arm, stores)
                alive = survives(fault, kind, arm, stores)
                results[fault, kind] = (delivered, alive)
                print(
                    f"fault={fault} store={kind} healthy_delivered_same_tick={delivered}/{HEALTHY} "
                    f"ratio={delivered / HEALTHY:.2f} worker_survives={'yes' if alive else 'no'}",
                    flush=True,
                )
    return results


if __name__ == "__main__":
    main()
