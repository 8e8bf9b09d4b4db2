"""One bad record never holds up anyone else's email, and the worker never stops.

Each tick test builds a batch of one bad and nine healthy enrollments, all due
now (batch size 10), injects one fault at a port boundary, runs ONE tick and
checks that:

- the nine healthy emails went out in that same tick and are recorded
  DELIVERED, with the right counters;
- the bad one is reported in ``TickReport.errors`` under its own id (the
  enrollment id, or the message key for kind ``"message"``), and no healthy
  one is;
- the bad one is set aside, not lost: its enrollment is not advanced (so it is
  claimable again after ``set_aside_for``), or its message is kept;
- the next tick, shortly after, goes on with the healthy ones without
  claiming the bad one again.

Faults are injected as a real corrupt row (raw SQL on the file or the server)
where a store can hold one, and otherwise by a wrapper around the real store,
directory, renderer, sender or event sink. The ``run()`` tests inject the same
faults into a running worker and check it is still delivering afterwards.

Parametrized over MemoryStore, SQLiteStore on a file and PostgresStore (a real
server, see ``tests/postgres_fixtures.py``; skipped, with the reason shown,
when there is none).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import psycopg
import pytest

from dripcore import (
    Contact,
    Delay,
    Drip,
    Enrollment,
    EnrollmentStatus,
    Event,
    ExitReason,
    LiquidRenderer,
    OutboxStatus,
    RecordRejected,
    Sequence,
    SequenceStatus,
    Step,
    StepSent,
    TickReport,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.postgres import PostgresStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import (
    Change,
    ContactDirectory,
    Delivery,
    Email,
    RateLimiter,
    Rendered,
    Renderer,
    Store,
    idempotency_key,
)
from dripcore.testing import FakeClock, MemoryContacts, RecordingEvents, RecordingSender
from tests.builders import T0

pytest_plugins = ["tests.postgres_fixtures"]

BATCH = 10
HEALTHY = 9
SHORTLY = timedelta(minutes=10)  # step 2's delay: the next tick, well inside set_aside_for
SET_ASIDE = timedelta(hours=1)  # Drip's default set_aside_for
SURROGATE = "\udce9"  # a lone surrogate: no UTF-8 encoding exists
NUL = "\x00"  # PostgreSQL text can't hold it


class HostError(Exception):
    """An exception from the host's own code (a driver, an SDK, a helper): not a dripcore error."""


# --------------------------------------------------------------------------- stores


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A real store of each kind: in memory, SQLite on a file, a PostgreSQL schema of the test's own."""
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "drip.db")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        made = PostgresStore(dsn, schema=request.getfixturevalue("new_schema")())
    yield made
    made.close()


def kind_of(store: Store) -> str:
    inner = store.inner if isinstance(store, StoreWrapper) else store
    return {MemoryStore: "memory", SQLiteStore: "sqlite", PostgresStore: "postgres"}[type(inner)]


def rows_on_disk(*kinds: str) -> Any:
    """Run the test on these stores only (those that keep rows raw SQL can corrupt)."""
    return pytest.mark.parametrize("store", kinds, indirect=True)


_JSONB = frozenset({"variables", "opened", "clicked", "skipped", "body"})


def corrupt(store: Store, table: str, row_id: str, column: str, value: object) -> None:
    """Write ``value`` into one stored row behind the store's back, as a hand edit or a bad migration would."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (value, row_id))
    elif isinstance(store, PostgresStore):
        cast = "::jsonb" if column in _JSONB else ""
        assert store.dsn is not None
        with psycopg.connect(store.dsn, autocommit=True) as conn:
            conn.execute(f'UPDATE "{store.schema}".{table} SET {column} = %s{cast} WHERE id = %s', (value, row_id))
    else:
        raise AssertionError(f"no raw rows in {store!r}")


def raw_value(store: Store, table: str, row_id: str, column: str) -> object:
    """One column of one stored row, read with raw SQL."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return conn.execute(f"SELECT {column} FROM {table} WHERE id = ?", (row_id,)).fetchone()[0]
    assert isinstance(store, PostgresStore)
    assert store.dsn is not None
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        row = conn.execute(f'SELECT {column}::text FROM "{store.schema}".{table} WHERE id = %s', (row_id,)).fetchone()
        assert row is not None
        return row[0]


class StoreWrapper(Store):
    """A real store behind a wrapper that a test teaches to misbehave; every call goes through to ``inner``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities

    def __getattr__(self, name: str) -> Any:  # an adapter's extras, beyond the port
        return getattr(self.inner, name)


def _pass_through(name: str) -> Callable[..., Any]:
    def method(self: StoreWrapper, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


# Every public method of the port, abstract or not, goes through (so a method the port
# gains later is forwarded too, not silently served by the port's default).
for _name, _value in vars(Store).items():
    if callable(_value) and not _name.startswith("_"):
        setattr(StoreWrapper, _name, _pass_through(_name))
abc.update_abstractmethods(StoreWrapper)


class RejectingCommits(StoreWrapper):
    """Refuses, as a store that can't encode its text would, every commit holding one enrollment."""

    def __init__(self, inner: Store, *, kind: str = "enrollment") -> None:
        super().__init__(inner)
        self.bad: str | None = None
        self.kind = kind

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        bad = self.bad
        if bad is not None and any(c.enrollment.id == bad for c in changes):
            named = bad if self.kind == "enrollment" else idempotency_key(bad, 1)
            raise RecordRejected(kind=self.kind, reasons={named: "text the store can't encode"})
        return self.inner.commit(changes, owner=owner)


class RejectingSettles(StoreWrapper):
    """Fails every settle holding one message's outcome: with RecordRejected, or a plain exception."""

    def __init__(self, inner: Store, *, plain: bool = False) -> None:
        super().__init__(inner)
        self.bad: str | None = None
        self.plain = plain

    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        if self.bad is not None and any(d.key == self.bad for d in deliveries):
            if self.plain:
                raise HostError("the driver choked on a provider reply")
            raise RecordRejected(kind="message", reasons={self.bad: "provider reply the store can't encode"})
        self.inner.settle(deliveries, owner=owner)


class UnreadableSequence(StoreWrapper):
    """Reading one sequence raises a non-dripcore error (a custom store's decoder bug)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.bad: str | None = None

    def get_sequence(self, sequence_id: str) -> Sequence | None:
        if sequence_id == self.bad:
            raise HostError(f"sequence {sequence_id!r}: the JSON decoder crashed")
        return self.inner.get_sequence(sequence_id)


class HiccupingStore(StoreWrapper):
    """``claim_due`` or ``next_due_at`` raise a non-StoreError exception a few times, then work."""

    def __init__(self, inner: Store, method: str, times: int) -> None:
        super().__init__(inner)
        self.failures = {method: times}

    def _hiccup(self, method: str) -> None:
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            raise HostError(f"{method}: connection reset by peer (from a driver that isn't wrapped)")

    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Any]:
        self._hiccup("claim_due")
        return self.inner.claim_due(now, limit=limit, lease=lease, owner=owner)

    def next_due_at(self) -> datetime | None:
        self._hiccup("next_due_at")
        return self.inner.next_due_at()


# --------------------------------------------------------------------------- the other ports


def person(contact_id: str) -> Contact:
    return Contact(
        id=contact_id, email=f"{contact_id}@example.com", first_name=contact_id.title(), metadata={"plan": "gold"}
    )


def spoiled(contact: Contact, field: str, char: str) -> Contact:
    """A copy of ``contact`` with ``char`` in ``field``, past the model's checks (as a directory that
    builds contacts its own way, or unpickles old ones, could hand it over)."""
    copy = attrs.evolve(contact)
    value: object = {
        "email": f"p{char}@example.com",
        "first_name": f"Pi{char}a",
        "metadata": MappingProxyType({"plan": f"gold{char}"}),
    }[field]
    object.__setattr__(copy, field, value)
    return copy


class FlakyDirectory(MemoryContacts):
    """The host's contacts, whose look-ups can fail: for some ids, for whole batches, or for everyone."""

    def __init__(self) -> None:
        super().__init__()
        self.unreadable: set[str] = set()
        self.batch_down = False
        self.down = False
        self.calls = 0

    def get(self, contact_id: str) -> Contact | None:
        self.calls += 1
        if self.down or contact_id in self.unreadable:
            raise HostError(f"contacts row {contact_id!r}: invalid byte sequence for encoding UTF8")
        return super().get(contact_id)

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        self.calls += 1
        ids = set(contact_ids)
        if self.down or self.batch_down or ids & self.unreadable:
            raise HostError(f"SELECT ... FROM contacts WHERE id IN ({len(ids)} ids) failed")
        return super().get_many(ids)


class RowDirectory(ContactDirectory):
    """A host's contacts table: each look-up builds a Contact from a row, as an ORM mapper would."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, contact: Contact) -> Contact:
        self.rows[contact.id] = {
            "id": contact.id, "email": contact.email, "first_name": contact.first_name,
            "metadata": dict(contact.metadata),
        }  # fmt: skip
        return contact

    def get(self, contact_id: str) -> Contact | None:
        row = self.rows.get(contact_id)
        return None if row is None else Contact(**row)

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        self.rows[contact_id]["suppressed"] = reason


class BuggyRenderer(Renderer):
    """The default renderer, except that a host helper crashes for some contacts."""

    def __init__(self) -> None:
        self.inner = LiquidRenderer()
        self.broken_for: set[str] = set()

    def render(self, step: Step, *, sequence: Sequence, contact: Contact, enrollment: Enrollment) -> Rendered:
        if contact.id in self.broken_for:
            raise HostError("template helper crashed: unsupported format character")
        return self.inner.render(step, sequence=sequence, contact=contact, enrollment=enrollment)


class PickySender(RecordingSender):
    """A recording sender whose provider SDK raises for some addresses, or answers with odd ids.

    ``offered`` counts every call per key, the raising ones included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raises_for: set[str] = set()
        self.odd_ids: dict[str, object] = {}
        self.offered: collections.Counter[str] = collections.Counter()
        self._count = threading.Lock()

    def send(self, email: Email) -> str | None:
        with self._count:
            self.offered[email.idempotency_key] += 1
        if email.to in self.raises_for:
            raise HostError("provider SDK: unexpected response shape")
        provider_id = super().send(email)
        if email.to in self.odd_ids:
            return self.odd_ids[email.to]  # type: ignore[return-value]
        return provider_id


class FussySink(RecordingEvents):
    """A webhook sink whose endpoint fails for any batch holding one enrollment's events."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: str | None = None

    def publish(self, events: Seq[Event]) -> None:
        if self.refuse is not None and any(e.enrollment_id == self.refuse for e in events):
            raise HostError("webhook endpoint answered 500")
        super().publish(events)


# --------------------------------------------------------------------------- the bench


def drip_sequence(sequence_id: str = "drip", *, steps: int = 3) -> Sequence:
    """Three steps: now, ten minutes later, a day later."""
    all_steps = (
        Step(position=1, subject="Welcome {{firstName}}", text="Hello {{firstName}}, your plan is {{plan}}."),
        Step(position=2, delay=Delay.minutes(10), subject="Tips for {{firstName}}", text="Tips on {{plan}}."),
        Step(position=3, delay=Delay.days(1), subject="An offer", text="Upgrade from {{plan}}."),
    )
    return Sequence(id=sequence_id, name=sequence_id.title(), status=SequenceStatus.ACTIVE, steps=all_steps[:steps])


class Bench:
    """A Drip over a real store and the fakes, with one bad and some healthy enrollments due now."""

    def __init__(
        self,
        store: Store,
        *,
        contacts: Any = None,
        sender: RecordingSender | None = None,
        renderer: Renderer | None = None,
        events: RecordingEvents | None = None,
        set_aside_for: timedelta = SET_ASIDE,
    ) -> None:
        self.clock = FakeClock(T0)
        self.store = store
        self.contacts = contacts if contacts is not None else MemoryContacts()
        self.sender = sender if sender is not None else RecordingSender()
        self.events = events if events is not None else RecordingEvents()
        counter = itertools.count(1)
        self.drip = Drip(
            store=store, sender=self.sender, clock=self.clock, contacts=self.contacts, events=self.events,
            renderer=renderer, batch_size=BATCH, set_aside_for=set_aside_for,
            id_factory=lambda: f"enr_{next(counter):06d}",
        )  # fmt: skip
        self.bad: Enrollment
        self.healthy: list[Enrollment] = []
        self.repair: Callable[[], None] | None = None

    def populate(self, healthy: int = HEALTHY, *, steps: int = 3, bad_sequence: str = "drip") -> Bench:
        self.drip.save_sequence(drip_sequence(steps=steps))
        if bad_sequence != "drip":
            self.drip.save_sequence(drip_sequence(bad_sequence, steps=steps))
        self.contacts.add(person("bad"))
        for i in range(1, healthy + 1):
            self.contacts.add(person(f"h{i:02d}"))
        # Enrolled first, so its id sorts first: it is in the first batch claimed.
        self.bad, _ = self.drip.enroll(bad_sequence, "bad")
        self.healthy = [self.drip.enroll("drip", f"h{i:02d}")[0] for i in range(1, healthy + 1)]
        return self

    def sent_keys(self) -> list[str]:
        return [e.idempotency_key for e in list(self.sender.sent)]

    def went_out(self, enrollment: Enrollment, position: int) -> bool:
        return idempotency_key(enrollment.id, position) in self.sent_keys()

    def delivered(self, enrollment: Enrollment, position: int) -> bool:
        """The step went to the sender and the outbox records it DELIVERED."""
        message = self.store.get_message(idempotency_key(enrollment.id, position))
        ok = message is not None and message.status is OutboxStatus.DELIVERED
        return ok and self.went_out(enrollment, position)

    def enroll_late(self) -> Enrollment:
        """A contact enrolled after the fault was met."""
        self.contacts.add(person("late"))
        return self.drip.enroll("drip", "late")[0]


def offered(bench: Bench) -> collections.Counter[str]:
    assert isinstance(bench.sender, PickySender)
    return bench.sender.offered


def assert_went_out(bench: Bench, enrollments: Seq[Enrollment], position: int) -> None:
    """Each enrollment's step went to the sender once, is DELIVERED in the outbox, and the enrollment moved on."""
    sent = bench.sent_keys()
    missing = [e.contact_id for e in enrollments if idempotency_key(e.id, position) not in sent]
    assert missing == [], f"step {position} did not go out to {missing}"
    for enrollment in enrollments:
        key = idempotency_key(enrollment.id, position)
        assert sent.count(key) == 1
        message = bench.store.get_message(key)
        assert message is not None
        assert message.status is OutboxStatus.DELIVERED, (key, message.status, message.last_error)
        stored = bench.store.get_enrollment(enrollment.id)
        assert stored is not None
        assert stored.last_step_sent >= position


def assert_counters(bench: Bench, position: int, *, sent: int, delivered: int, failed: int = 0) -> None:
    stats = bench.drip.stats("drip").steps[position - 1]
    assert (stats.sent, stats.delivered, stats.failed) == (sent, delivered, failed)


def named(report: TickReport) -> set[str]:
    """The enrollment ids the report's errors name."""
    return {e.id.rsplit(":", 1)[0] if e.kind == "message" else e.id for e in report.errors}


def assert_reported(report: TickReport, enrollment: Enrollment, kinds: Iterable[str], position: int = 1) -> None:
    """The bad one is reported under its own id (its message key for kind "message"), and only it."""
    key = idempotency_key(enrollment.id, position)
    expected = {(kind, key if kind == "message" else enrollment.id) for kind in kinds}
    found = {(e.kind, e.id) for e in report.errors}
    assert expected & found, f"{enrollment.id} is not reported as one of {sorted(kinds)}: {report.errors}"
    assert named(report) == {enrollment.id}, f"a healthy enrollment is reported too: {report.errors}"


def assert_not_advanced(bench: Bench) -> None:
    """The bad enrollment is as it was: not advanced, its step not queued nor sent."""
    stored = bench.store.get_enrollment(bench.bad.id)
    assert stored is not None
    assert (stored.status, stored.last_step_sent, stored.next_step_due_at, stored.version) == (
        EnrollmentStatus.ACTIVE, 0, bench.bad.next_step_due_at, bench.bad.version,
    )  # fmt: skip
    assert bench.store.get_message(idempotency_key(bench.bad.id, 1)) is None
    assert not bench.went_out(bench.bad, 1)


def tick_shortly_after(bench: Bench) -> TickReport:
    """The next tick, ten minutes on: every healthy enrollment goes on to step 2."""
    bench.clock.advance(SHORTLY)
    report = bench.drip.tick()
    assert_went_out(bench, bench.healthy, 2)
    return report


def assert_left_alone(report: TickReport, bench: Bench) -> None:
    """The tick neither claimed nor reported the bad one again."""
    assert bench.bad.id not in named(report), report.errors
    assert report.claimed == len(bench.healthy)


def assert_comes_back_after_set_aside(bench: Bench) -> None:
    """Once the fault is gone and ``set_aside_for`` has passed, the bad one's first email goes out."""
    assert bench.repair is not None
    bench.repair()
    bench.clock.advance(SET_ASIDE)
    bench.drip.tick()
    assert_went_out(bench, [bench.bad], 1)


# --------------------------------------------------------------------------- fault builders
# Each returns a populated bench with its fault in place; the tick tests and the run()
# tests share them.


def unencodable_email(store: Store, healthy: int = HEALTHY, **kw: Any) -> Bench:
    bench = Bench(store, **kw).populate(healthy)
    bench.contacts.add(spoiled(person("bad"), "email", SURROGATE))
    bench.repair = lambda: bench.contacts.add(person("bad"))
    return bench


def commit_rejects_one(store: Store, healthy: int = HEALTHY, **kw: Any) -> Bench:
    wrapper = RejectingCommits(store)
    bench = Bench(wrapper, **kw).populate(healthy)
    wrapper.bad = bench.bad.id

    def repair() -> None:
        wrapper.bad = None

    bench.repair = repair
    return bench


def contact_look_up_raises(store: Store, healthy: int = HEALTHY, **kw: Any) -> Bench:
    directory = FlakyDirectory()
    bench = Bench(store, contacts=directory, **kw).populate(healthy)
    directory.unreadable = {"bad"}
    bench.repair = directory.unreadable.clear
    return bench


def batch_look_up_raises(store: Store, **kw: Any) -> Bench:
    directory = FlakyDirectory()
    bench = Bench(store, contacts=directory, **kw).populate()
    directory.batch_down = True
    return bench


MESSY_ROWS = {
    "newline-in-first-name": {"first_name": "Ann\nMarie"},
    "300-char-first-name": {"first_name": "A" * 300},
    "malformed-email": {"email": "not-an-email"},
}


def contact_cannot_be_built(store: Store, messy: str = "newline-in-first-name", **kw: Any) -> Bench:
    directory = RowDirectory()
    bench = Bench(store, contacts=directory, **kw).populate()
    clean = dict(directory.rows["bad"])
    directory.rows["bad"].update(MESSY_ROWS[messy])  # the host's row changed after enrollment
    bench.repair = lambda: directory.rows.__setitem__("bad", clean)
    return bench


def undecodable_enrollment_row(store: Store, **kw: Any) -> Bench:
    bench = Bench(store, **kw).populate()
    corrupt(store, "enrollments", bench.bad.id, "variables", "[1, 2]")
    return bench


def unknown_status_row(store: Store, **kw: Any) -> Bench:
    bench = Bench(store, **kw).populate()
    corrupt(store, "enrollments", bench.bad.id, "status", "zombie")
    return bench


def text_due_time_row(store: Store, **kw: Any) -> Bench:
    # One step: once the healthy ones complete, the corrupt row is all next_wake_at() has left to read.
    bench = Bench(store, **kw).populate(steps=1)
    corrupt(store, "enrollments", bench.bad.id, "next_due", "tomorrow morning")
    return bench


def corrupt_sequence_row(store: Store, **kw: Any) -> Bench:
    bench = Bench(store, **kw).populate(bad_sequence="broken")
    corrupt(store, "sequences", "broken", "body", '["not", "a", "sequence"]')
    return bench


def sequence_read_raises(store: Store, healthy: int = HEALTHY, **kw: Any) -> Bench:
    wrapper = UnreadableSequence(store)
    bench = Bench(wrapper, **kw).populate(healthy, bad_sequence="broken")
    wrapper.bad = "broken"

    def repair() -> None:
        wrapper.bad = None

    bench.repair = repair
    return bench


def render_raises(store: Store, **kw: Any) -> Bench:
    renderer = BuggyRenderer()
    bench = Bench(store, renderer=renderer, **kw).populate()
    renderer.broken_for = {"bad"}
    bench.repair = renderer.broken_for.clear
    return bench


def send_raises(store: Store, **kw: Any) -> Bench:
    sender = PickySender()
    bench = Bench(store, sender=sender, **kw).populate()
    sender.raises_for = {"bad@example.com"}
    bench.repair = sender.raises_for.clear
    return bench


def send_returns_a_dict(store: Store, **kw: Any) -> Bench:
    sender = PickySender()
    bench = Bench(store, sender=sender, **kw).populate()
    sender.odd_ids = {"bad@example.com": {"id": "abc-123", "status": "queued"}}
    return bench


def settle_rejects_one(store: Store, *, plain: bool = False, **kw: Any) -> Bench:
    wrapper = RejectingSettles(store, plain=plain)
    bench = Bench(wrapper, **kw).populate()
    wrapper.bad = idempotency_key(bench.bad.id, 1)
    return bench


def settle_raises_for_the_batch(store: Store, **kw: Any) -> Bench:
    return settle_rejects_one(store, plain=True, **kw)


def event_sink_raises(store: Store, **kw: Any) -> Bench:
    sink = FussySink()
    bench = Bench(store, events=sink, **kw).populate()
    sink.refuse = bench.bad.id
    return bench


ALL = ("memory", "sqlite", "postgres")
ON_DISK = ("sqlite", "postgres")
FAULTS: dict[str, tuple[Callable[..., Bench], tuple[str, ...]]] = {
    "unencodable-email": (unencodable_email, ALL),
    "commit-rejects-one": (commit_rejects_one, ALL),
    "contact-look-up-raises": (contact_look_up_raises, ALL),
    "batch-look-up-raises": (batch_look_up_raises, ALL),
    "contact-cannot-be-built": (contact_cannot_be_built, ALL),
    "undecodable-enrollment-row": (undecodable_enrollment_row, ON_DISK),
    "unknown-status-row": (unknown_status_row, ON_DISK),
    "text-due-time-row": (text_due_time_row, ("sqlite",)),
    "corrupt-sequence-row": (corrupt_sequence_row, ON_DISK),
    "sequence-read-raises": (sequence_read_raises, ALL),
    "render-raises": (render_raises, ALL),
    "send-raises": (send_raises, ALL),
    "send-returns-a-dict": (send_returns_a_dict, ALL),
    "settle-rejects-one": (settle_rejects_one, ALL),
    "settle-raises-for-the-batch": (settle_raises_for_the_batch, ALL),
    "event-sink-raises": (event_sink_raises, ALL),
}


# --------------------------------------------------------------------------- contacts


class TestContacts:
    # What a store can't hold as given: a lone surrogate anywhere, and NUL in PostgreSQL's text.
    CANT_HOLD = frozenset({("sqlite", "surrogate"), ("postgres", "surrogate"), ("postgres", "nul")})

    @pytest.mark.parametrize("field", ["email", "first_name", "metadata"])
    @pytest.mark.parametrize("char", ["surrogate", "nul"])
    def test_contact_with_unencodable_text_is_set_aside_and_batch_mates_are_delivered(
        self, store: Store, field: str, char: str
    ) -> None:
        """A contact whose email, first name or metadata holds a lone surrogate or NUL costs only its own email."""
        bench = Bench(store).populate()
        bench.contacts.add(spoiled(person("bad"), field, SURROGATE if char == "surrogate" else NUL))
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        key = idempotency_key(bench.bad.id, 1)
        if (kind_of(store), char) in self.CANT_HOLD:
            assert not bench.went_out(bench.bad, 1), "the store can't hold this text, yet it went out"
        if bench.went_out(bench.bad, 1):  # a store that holds the text as given may send it: once
            assert bench.sent_keys().count(key) == 1
            assert bench.bad.id not in named(report)
        else:
            assert_reported(report, bench.bad, {"contact", "enrollment", "message"})
            message = bench.store.get_message(key)
            if message is None:
                assert_not_advanced(bench)  # set aside, claimable again later
            else:
                assert message.status is OutboxStatus.FAILED
                assert message.last_error
        later = tick_shortly_after(bench)
        stored = bench.store.get_enrollment(bench.bad.id)
        assert stored is not None
        if stored.last_step_sent == 0:
            assert_left_alone(later, bench)

    @pytest.mark.parametrize("kind", ["enrollment", "message"])
    def test_enrollment_the_store_rejects_is_set_aside_and_batch_mates_are_delivered(
        self, store: Store, kind: str
    ) -> None:
        """A commit the store refuses with RecordRejected for one record commits everyone else's step."""
        bench = commit_rejects_one(store)
        if kind == "message":
            assert isinstance(bench.store, RejectingCommits)
            bench.store.kind = "message"
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"enrollment", "message", "contact"})
        assert_not_advanced(bench)
        assert_counters(bench, 1, sent=HEALTHY, delivered=HEALTHY)
        assert_left_alone(tick_shortly_after(bench), bench)
        assert_comes_back_after_set_aside(bench)

    def test_contact_whose_look_up_raises_is_set_aside_and_batch_mates_are_delivered(self, store: Store) -> None:
        """get_many raising for the batch falls back to one-by-one look-ups; only the contact whose get raises waits."""
        bench = contact_look_up_raises(store)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"contact", "enrollment"})
        assert "invalid byte sequence" in next(e.error for e in report.errors)
        assert_not_advanced(bench)
        assert_counters(bench, 1, sent=HEALTHY, delivered=HEALTHY)
        assert_left_alone(tick_shortly_after(bench), bench)
        assert_comes_back_after_set_aside(bench)

    def test_batch_look_up_that_raises_falls_back_to_one_by_one_and_everyone_is_delivered(self, store: Store) -> None:
        """A directory whose get_many raises but whose get works delivers to the whole batch in the same tick."""
        bench = batch_look_up_raises(store)
        bench.drip.tick()
        assert_went_out(bench, [bench.bad, *bench.healthy], 1)
        assert_counters(bench, 1, sent=HEALTHY + 1, delivered=HEALTHY + 1)
        bench.clock.advance(SHORTLY)
        bench.drip.tick()
        assert_went_out(bench, [bench.bad, *bench.healthy], 2)

    @pytest.mark.parametrize("messy", list(MESSY_ROWS))
    def test_contact_that_cannot_be_built_is_set_aside_and_batch_mates_are_delivered(
        self, store: Store, messy: str
    ) -> None:
        """A host row the model refuses (InvalidContact from the directory's get) holds back only its own contact."""
        bench = contact_cannot_be_built(store, messy)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"contact", "enrollment"})
        assert "InvalidContact" in next(e.error for e in report.errors)
        assert_not_advanced(bench)
        assert_counters(bench, 1, sent=HEALTHY, delivered=HEALTHY)
        assert_left_alone(tick_shortly_after(bench), bench)
        assert_comes_back_after_set_aside(bench)


# --------------------------------------------------------------------------- stored rows


class TestCorruptRows:
    @rows_on_disk(*ON_DISK)
    @pytest.mark.parametrize(
        ("column", "value"), [("variables", "[1, 2]"), ("exit_reason", "abducted")], ids=["variables", "exit-reason"]
    )
    def test_enrollment_row_that_cannot_be_decoded_is_set_aside_and_batch_mates_are_delivered(
        self, store: Store, column: str, value: str
    ) -> None:
        """A claimed row that doesn't decode is reported by its id and set aside; the batch goes on."""
        bench = Bench(store).populate()
        corrupt(store, "enrollments", bench.bad.id, column, value)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"enrollment"})
        assert str(raw_value(store, "enrollments", bench.bad.id, "last_step_sent")) == "0"
        assert bench.store.get_message(idempotency_key(bench.bad.id, 1)) is None
        assert_counters(bench, 1, sent=HEALTHY, delivered=HEALTHY)
        assert_left_alone(tick_shortly_after(bench), bench)

    @rows_on_disk(*ON_DISK)
    def test_enrollment_row_with_an_unknown_status_never_holds_up_the_batch(self, store: Store) -> None:
        """A row whose status is garbage is left as it is; the others go, and next_wake_at() still answers."""
        bench = unknown_status_row(store)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert named(report) <= {bench.bad.id}
        assert raw_value(store, "enrollments", bench.bad.id, "status") == "zombie"
        assert not bench.went_out(bench.bad, 1)
        wake = bench.drip.next_wake_at()
        assert wake is None or isinstance(wake, datetime)
        later = tick_shortly_after(bench)
        assert named(later) <= {bench.bad.id}

    @rows_on_disk("sqlite")
    def test_text_in_a_due_time_column_stops_neither_next_wake_at_nor_the_worker(self, store: Store) -> None:
        """A next_due holding text (SQLite keeps what it is given) never raises out of next_wake_at() or run()."""
        bench = text_due_time_row(store)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert named(report) <= {bench.bad.id}
        assert not bench.went_out(bench.bad, 1)
        wake = bench.drip.next_wake_at()
        assert wake is None or isinstance(wake, datetime)
        with Worker(bench.drip) as worker:
            worker.wait_until(lambda: len(worker.reports) >= 3, "three ticks")
        worker.assert_stopped_cleanly()
        assert raw_value(store, "enrollments", bench.bad.id, "next_due") == "tomorrow morning"

    @rows_on_disk(*ON_DISK)
    def test_corrupt_sequence_row_holds_back_only_its_own_enrollments(self, store: Store) -> None:
        """A sequence row holding JSON of the wrong shape sets aside its enrollments; the other sequence's
        batch-mates are delivered in the same tick."""
        bench = corrupt_sequence_row(store)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"sequence", "enrollment"})
        assert_not_advanced(bench)
        assert_counters(bench, 1, sent=HEALTHY, delivered=HEALTHY)
        assert_left_alone(tick_shortly_after(bench), bench)

    def test_sequence_read_raising_a_foreign_error_holds_back_only_its_own_enrollments(self, store: Store) -> None:
        """A store raising a non-dripcore exception reading one sequence costs only that sequence's enrollments."""
        bench = sequence_read_raises(store)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"sequence", "enrollment"})
        assert "JSON decoder crashed" in next(e.error for e in report.errors)
        assert_not_advanced(bench)
        assert_left_alone(tick_shortly_after(bench), bench)
        assert_comes_back_after_set_aside(bench)


# --------------------------------------------------------------------------- render, send, settle, events


class TestDelivery:
    def test_renderer_raising_a_foreign_error_sets_that_one_aside_and_batch_mates_are_delivered(
        self, store: Store
    ) -> None:
        """A custom renderer raising a non-dripcore exception for one contact sets that enrollment aside (a
        template service that is down must not fail the step for good); the batch goes on, and the step is
        sent once the renderer works again."""
        bench = render_raises(store)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"enrollment"})
        assert "template helper crashed" in next(e.error for e in report.errors)
        assert bench.store.get_message(idempotency_key(bench.bad.id, 1)) is None
        assert_not_advanced(bench)
        assert_counters(bench, 1, sent=HEALTHY, delivered=HEALTHY)
        assert_left_alone(tick_shortly_after(bench), bench)
        assert_comes_back_after_set_aside(bench)

    def test_sender_raising_a_foreign_error_sets_that_message_aside_and_batch_mates_are_delivered(
        self, store: Store
    ) -> None:
        """A sender raising a non-dripcore exception for one message keeps that message (PENDING, with the
        error) and delivers the others in the same tick."""
        bench = send_raises(store)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"message"})
        message = bench.store.get_message(idempotency_key(bench.bad.id, 1))
        assert message is not None
        assert message.status is OutboxStatus.PENDING
        assert "unexpected response shape" in (message.last_error or "")
        assert_counters(bench, 1, sent=HEALTHY + 1, delivered=HEALTHY)
        later = tick_shortly_after(bench)
        assert later.claimed == len(bench.healthy)  # its next step waits for the message
        assert_comes_back_after_set_aside(bench)
        assert bench.sent_keys().count(idempotency_key(bench.bad.id, 1)) == 1

    def test_message_whose_send_raised_is_retried_with_backoff_not_at_once(self, store: Store) -> None:
        """A message whose send raised a foreign error is treated as a transient failure: offered again only
        after its backoff (retry_base, one minute), not by the next tick."""
        bench = send_raises(store)
        bench.drip.tick()
        key = idempotency_key(bench.bad.id, 1)
        assert offered(bench)[key] == 1
        bench.clock.advance(timedelta(seconds=30))
        bench.drip.tick()
        assert offered(bench)[key] == 1, "offered again before its backoff"
        bench.clock.advance(timedelta(seconds=31))
        bench.drip.tick()
        assert offered(bench)[key] == 2, "retried after its backoff"

    @pytest.mark.parametrize(
        ("odd_id", "text"),
        [({"id": "abc-123", "status": "queued"}, "abc-123"), (12345, "12345"), (b"abc-123", "abc-123")],
        ids=["dict", "int", "bytes"],
    )
    def test_sender_returning_a_non_str_id_is_settled_delivered_and_never_sent_again(
        self, store: Store, odd_id: object, text: str
    ) -> None:
        """A provider id that isn't a str is kept as text, the message settled DELIVERED, and never re-sent."""
        bench = Bench(store, sender=PickySender()).populate()
        assert isinstance(bench.sender, PickySender)
        bench.sender.odd_ids = {"bad@example.com": odd_id}
        bench.drip.tick()
        assert_went_out(bench, [bench.bad, *bench.healthy], 1)
        message = bench.store.get_message(idempotency_key(bench.bad.id, 1))
        assert message is not None
        assert isinstance(message.provider_id, str)
        assert text in message.provider_id
        assert_counters(bench, 1, sent=HEALTHY + 1, delivered=HEALTHY + 1)
        for _ in range(4):
            bench.clock.advance(SHORTLY)
            bench.drip.tick()
        assert offered(bench)[idempotency_key(bench.bad.id, 1)] == 1
        assert_went_out(bench, [bench.bad, *bench.healthy], 2)

    @pytest.mark.parametrize("plain", [False, True], ids=["record-rejected", "plain-exception"])
    def test_settle_failing_for_one_outcome_records_the_batch_mates_outcomes(self, store: Store, plain: bool) -> None:
        """A settle that fails for one message (RecordRejected naming it, or a plain exception for any batch
        holding it) still records every other delivery; that message is kept, not lost."""
        bench = settle_rejects_one(store, plain=plain)
        report = bench.drip.tick()
        assert_went_out(bench, bench.healthy, 1)
        assert_reported(report, bench.bad, {"message"})
        key = idempotency_key(bench.bad.id, 1)
        assert bench.sent_keys().count(key) == 1
        message = bench.store.get_message(key)
        assert message is not None
        assert message.status is OutboxStatus.PENDING  # the store took nothing about it
        assert_counters(bench, 1, sent=HEALTHY + 1, delivered=HEALTHY)
        later = tick_shortly_after(bench)
        assert later.claimed == len(bench.healthy)

    def test_event_sink_raising_for_one_enrollment_loses_nobody_elses_events(self, store: Store) -> None:
        """An event sink failing on one enrollment's events is reported for that one; every email goes out and
        the other enrollments' events are still published."""
        bench = event_sink_raises(store)
        report = bench.drip.tick()
        assert_went_out(bench, [bench.bad, *bench.healthy], 1)
        assert_reported(report, bench.bad, {"events"})
        published = {e.enrollment_id for e in bench.events.of(StepSent)}
        assert {h.id for h in bench.healthy} <= published
        bench.clock.advance(SHORTLY)
        bench.drip.tick()
        assert_went_out(bench, [bench.bad, *bench.healthy], 2)


# --------------------------------------------------------------------------- starvation


class TestNoStarvation:
    @pytest.mark.parametrize(
        "fault", ["commit-rejects-one", "contact-look-up-raises", "sequence-read-raises", "unencodable-email"]
    )
    def test_set_aside_record_does_not_starve_thirty_batch_mates(self, store: Store, fault: str) -> None:
        """With batch size 10, one bad record among 30 healthy: every healthy contact gets step 1 within
        four ticks and step 2 within four more, and the bad one is reported once, not re-claimed each tick."""
        arm, _ = FAULTS[fault]
        bench = arm(store, healthy=30)
        reports = [bench.drip.tick() for _ in range(4)]
        assert_went_out(bench, bench.healthy, 1)
        reported = sum(bench.bad.id in named(r) for r in reports)
        assert reported == (0 if bench.went_out(bench.bad, 1) else 1)  # a store that holds it may just send it
        bench.clock.advance(SHORTLY)
        reports = [bench.drip.tick() for _ in range(4)]
        assert_went_out(bench, bench.healthy, 2)
        assert not any(bench.bad.id in named(r) for r in reports)


# --------------------------------------------------------------------------- run()


class Worker:
    """``drip.run()`` on a thread with a stop event; remembers how it ended."""

    def __init__(self, drip: Drip, *, idle: float = 1.0) -> None:
        self.drip = drip
        self.idle = idle
        self.stop = threading.Event()
        self.reports: list[TickReport] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="drip-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.drip.run(stop=self.stop, idle=self.idle, on_tick=self.reports.append)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Worker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Poll ``condition``; fail at once if the worker died (a generous timeout is only a safety net)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if not self.thread.is_alive():
                raise AssertionError(f"the worker died before {what}: {self.error!r}") from self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker is alive but never got to {what}")
            time.sleep(0.005)

    def assert_stopped_cleanly(self) -> None:
        assert not self.thread.is_alive(), "the worker did not stop"
        assert self.error is None, f"run() raised {self.error!r}"


RUN_CASES = [pytest.param(fault, kind, id=f"{fault}-{kind}") for fault, (_, kinds) in FAULTS.items() for kind in kinds]


class TestRun:
    @pytest.mark.parametrize(("fault", "store"), RUN_CASES, indirect=["store"])
    def test_worker_meeting_a_bad_record_keeps_delivering(self, fault: str, store: Store) -> None:
        """A running worker that meets one bad record delivers its batch-mates (sent and recorded DELIVERED),
        stays alive, and delivers to a contact enrolled afterwards."""
        arm, _ = FAULTS[fault]
        bench = arm(store, set_aside_for=timedelta(minutes=1))
        with Worker(bench.drip) as worker:
            worker.wait_until(lambda: all(bench.delivered(h, 1) for h in bench.healthy), "the healthy first emails")
            late = bench.enroll_late()
            worker.wait_until(lambda: bench.delivered(late, 1), "the first email of a contact enrolled afterwards")
        worker.assert_stopped_cleanly()

    @pytest.mark.parametrize("method", ["claim_due", "next_due_at"])
    def test_store_raising_foreign_errors_for_a_while_does_not_end_the_worker(self, store: Store, method: str) -> None:
        """claim_due or next_due_at raising a non-StoreError exception a few times: the worker backs off, goes on,
        and delivers what was due and what comes later."""
        hiccups = HiccupingStore(store, method, times=3)
        bench = Bench(hiccups).populate()
        with Worker(bench.drip) as worker:
            worker.wait_until(lambda: hiccups.failures[method] == 0, f"{method} failing three times")
            worker.wait_until(
                lambda: all(bench.delivered(e, 1) for e in [bench.bad, *bench.healthy]), "everyone's first email"
            )
            late = bench.enroll_late()
            worker.wait_until(lambda: bench.delivered(late, 1), "the first email of a contact enrolled afterwards")
        worker.assert_stopped_cleanly()

    def test_directory_down_for_a_while_does_not_end_the_worker(self, store: Store) -> None:
        """A contact directory raising for everyone for a while: the worker waits it out, then delivers to all."""
        directory = FlakyDirectory()
        bench = Bench(store, contacts=directory, set_aside_for=timedelta(minutes=1)).populate()
        directory.down = True
        with Worker(bench.drip) as worker:
            worker.wait_until(lambda: directory.calls >= 20, "twenty failed look-ups")
            assert bench.sent_keys() == []
            directory.down = False
            worker.wait_until(
                lambda: all(bench.delivered(e, 1) for e in [bench.bad, *bench.healthy]), "everyone's first email"
            )
            late = bench.enroll_late()
            worker.wait_until(lambda: bench.delivered(late, 1), "the first email of a contact enrolled afterwards")
        worker.assert_stopped_cleanly()

    def test_exception_from_the_hosts_on_tick_ends_run(self) -> None:
        """The host's own on_tick callback raising is the host's decision to stop: run() ends with it."""
        bench = Bench(MemoryStore()).populate()
        seen: list[TickReport] = []

        def on_tick(report: TickReport) -> None:
            seen.append(report)
            raise HostError("the host's metrics exporter gave up")

        with pytest.raises(HostError, match="metrics exporter"):
            bench.drip.run(on_tick=on_tick, max_ticks=5, idle=60)
        assert len(seen) == 1


class BrokenLimiter(RateLimiter):
    """A host's rate limiter that fails for a while."""

    def __init__(self) -> None:
        self.down = True

    def available(self, now: datetime) -> int | None:
        return None

    def consume(self, count: int, now: datetime) -> int:
        if self.down:
            raise HostError("rate limiter backend unreachable")
        return count


def test_a_tick_that_fails_as_a_whole_gives_its_claims_back(store: Store) -> None:
    """When something of the whole batch fails (here the host's rate limiter), the tick raises and leaves
    the batch claimable at once, not after the lease: the next tick, once it works, sends everyone."""
    bench = Bench(store).populate()
    limiter = BrokenLimiter()
    bench.drip.rate_limiter = limiter
    with pytest.raises(HostError):
        bench.drip.tick()
    assert bench.sent_keys() == []
    limiter.down = False
    report = bench.drip.tick()  # same instant: the lease (five minutes) has not run out
    assert report.claimed == HEALTHY + 1
    assert_went_out(bench, [bench.bad, *bench.healthy], 1)


class DownStore:
    """Wraps a store whose commits fail with a foreign error (a driver's ConnectionError) for everyone."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = True
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, changes: Any, *, owner: str | None = None) -> list[str]:
        self.commits += 1
        if self.down:
            raise ConnectionError("server closed the connection unexpectedly")
        return self.inner.commit(changes, owner=owner)


Store.register(DownStore)  # a wrapper, not a subclass: Drip accepts it as a Store


def test_a_lone_contact_that_fails_is_set_aside_not_taken_for_a_directory_outage(store: Store) -> None:
    """A batch of one whose contact look-up raises: the tick does not raise (which would repeat every
    tick); that enrollment is set aside and reported, and comes back once repaired."""
    directory = FlakyDirectory()
    bench = Bench(store, contacts=directory).populate(healthy=0)
    directory.unreadable = {"bad"}
    report = bench.drip.tick()
    assert [(e.kind, e.id) for e in report.errors] == [("contact", bench.bad.id)]
    assert_not_advanced(bench)
    bench.clock.advance(SHORTLY)
    assert bench.drip.tick().claimed == 0, "set aside, not claimed again at once"
    directory.unreadable = set()
    bench.clock.advance(SET_ASIDE)
    bench.drip.tick()
    assert_went_out(bench, [bench.bad], 1)


def test_a_directory_down_for_everyone_fails_the_tick_and_sets_nobody_aside(store: Store) -> None:
    """Every look-up failing is an outage, not ten bad records: the tick raises, gives its claims back,
    and the next tick after the directory recovers delivers everyone."""
    directory = FlakyDirectory()
    bench = Bench(store, contacts=directory).populate()
    directory.down = True
    with pytest.raises(HostError):
        bench.drip.tick()
    directory.down = False
    report = bench.drip.tick()  # same instant: nothing was set aside or left leased
    assert report.claimed == HEALTHY + 1
    assert_went_out(bench, [bench.bad, *bench.healthy], 1)


def test_a_store_failing_every_commit_with_a_foreign_error_is_an_outage_not_bad_records(store: Store) -> None:
    """A commit that raises a foreign error for every change, with nothing going in, is the store being
    down: the tick raises after a few tries instead of setting the whole batch aside for an hour."""
    down = DownStore(store)
    bench = Bench(down).populate()  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        bench.drip.tick()
    assert down.commits <= 8, "narrowing stopped after a few failures with nothing committed"
    down.down = False
    report = bench.drip.tick()  # same instant
    assert report.claimed == HEALTHY + 1
    assert report.errors == ()
    assert_went_out(bench, [bench.bad, *bench.healthy], 1)


def test_an_unsubscribe_service_that_is_down_sets_emails_aside_instead_of_failing_them(store: Store) -> None:
    """The host's unsubscribe-link callable raising (its token service is down) is not a broken template:
    the enrollments wait (set aside) and their emails go once it works again; none is FAILED."""
    service_down = True

    def link(contact: Contact, enrollment: Enrollment) -> str:
        if service_down:
            raise HostError("token service unreachable")
        return f"https://example.com/u/{enrollment.id}"

    bench = Bench(store, renderer=LiquidRenderer(unsubscribe_url=link)).populate()
    report = bench.drip.tick()
    assert report.failed == 0
    assert report.sent == 0
    assert {e.kind for e in report.errors} == {"enrollment"}
    assert bench.store.find_messages(status=OutboxStatus.FAILED) == []
    service_down = False
    bench.clock.advance(SET_ASIDE)
    bench.drip.tick()
    assert_went_out(bench, [bench.bad, *bench.healthy], 1)
