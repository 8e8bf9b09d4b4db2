"""A storage adapter written from scratch, proved correct by dripcore's contract kit.

``DocumentStore`` keeps every record as a JSON document in a key-value
mapping, the shape of a document database or a key-value service: one
"collection" per record type, documents keyed by id, no secondary indexes,
and values that must be serialised (here with :func:`dripcore.make_converter`).
Swap the dicts for your database's client and the logic stays the same.

Run the contract kit against it::

    python -m pytest examples/custom_store.py -q

or run ``python examples/custom_store.py`` to see the engine work on it.
The kit is the ``TestDocumentStore`` class at the bottom: one fixture, and
every rule of the :class:`~dripcore.ports.Store` contract is checked, plus a
Hypothesis state machine that compares this store with the reference
:class:`~dripcore.adapters.memory.MemoryStore` operation by operation (closing
and reopening the store among them).

Two rules deserve a look in the code:

- **A document that can't be read never stops the others.** ``claim_due``
  hands it back as a :class:`~dripcore.ports.BrokenRecord` (leased like the
  rest, so the engine sets it aside and reports it); ``get_*`` raise an
  :class:`~dripcore.errors.UnreadableRecord` naming it; listings leave it out
  and log it. The kit checks this through the ``break_enrollment`` fixture.
- **Retention.** ``prune_messages`` deletes old settled outbox documents (the
  ``"retention"`` capability), so the outbox does not grow forever.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, time, timedelta, timezone
from typing import Any

import cattrs

from dripcore import Delay, Enrollment, EnrollmentStatus, Sequence, SequenceStatus, WaitUntil, make_converter
from dripcore.errors import (
    ConcurrencyConflict,
    InvalidArgument,
    SequenceNotFound,
    SequenceStateError,
    UnreadableRecord,
)
from dripcore.model import to_utc
from dripcore.ports import BrokenRecord, Change, Counter, Delivery, EnrollmentOrder, OutboxMessage, OutboxStatus, Store

log = logging.getLogger("custom_store")

LIVE = (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # sorts among the missing due times only


def document_converter() -> cattrs.Converter:
    """dripcore's converter, plus two rules a sequence body needs (see the SQLite adapter)."""
    converter = make_converter()
    converter.register_unstructure_hook(time, lambda value: value.isoformat())
    converter.register_structure_hook(time, lambda value, _type: time.fromisoformat(value))

    def structure_wait(value: Any, _type: Any) -> Delay | WaitUntil:
        cls = Delay if "amount" in value else WaitUntil  # decide by the keys, never by guessing
        return converter.structure(value, cls)  # type: ignore[no-any-return]

    converter.register_structure_hook(Delay | WaitUntil, structure_wait)
    return converter


def _instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class UnreadableDocument(UnreadableRecord):
    """A stored document that can't be decoded (broken JSON, an unknown enum value)."""

    def __init__(self, table: str, id: str, error: str) -> None:
        self.table = table
        self.id = id
        self.error = error
        super().__init__(f"{table} document {id!r} can't be read: {error}")


class DocumentStore(Store):
    """A :class:`~dripcore.ports.Store` on JSON documents in plain dicts (one process).

    ``documents`` is the "database": pass the :attr:`documents` of an earlier store to open
    it again on the same data (the contract kit's state machine does, to check that nothing
    lives only in the store object).
    """

    capabilities = frozenset({"frequency_cap", "retention"})

    def __init__(self, documents: dict[str, dict[str, str]] | None = None) -> None:
        self._lock = threading.RLock()
        self.documents = documents if documents is not None else {}
        for name in ("sequences", "enrollments", "leases", "outbox", "counters"):
            self.documents.setdefault(name, {})
        self._docs = self.documents
        self._conv = document_converter()

    # -- documents

    def _put(self, collection: str, key: str, value: Any, cls: type | None = None) -> None:
        body = self._conv.unstructure(value, cls) if cls is not None else value
        self._docs[collection][key] = json.dumps(body, sort_keys=True)

    def _decode(self, collection: str, key: str, text: str, cls: type | None) -> Any:
        """One document as ``cls``; :class:`UnreadableDocument` naming it if it can't be."""
        try:
            body = json.loads(text)
            return self._conv.structure(body, cls) if cls is not None else body
        except Exception as exc:  # whatever is wrong with the document, it is that document's fault
            raise UnreadableDocument(collection, key, f"{type(exc).__name__}: {exc}") from exc

    def _get(self, collection: str, key: str, cls: type | None = None) -> Any:
        text = self._docs[collection].get(key)
        return None if text is None else self._decode(collection, key, text, cls)

    def _all(self, collection: str, cls: type) -> Iterator[Any]:
        """Every readable document of a collection; an unreadable one is logged and left out."""
        for key, text in list(self._docs[collection].items()):
            try:
                yield self._decode(collection, key, text, cls)
            except UnreadableDocument as exc:
                log.error("%s", exc)

    def _lease_until(self, collection: str, key: str, now: datetime) -> datetime | None:
        """The end of an unexpired lease on ``key``, or None."""
        lease = self._get("leases", f"{collection}:{key}")
        until = None if lease is None else _instant(lease["until"])
        return until if until is not None and until > now else None

    def _lease(self, collection: str, key: str, owner: str, until: datetime) -> None:
        self._put("leases", f"{collection}:{key}", {"owner": owner, "until": until.isoformat()})

    def _pending(self, enrollment_id: str) -> bool:
        return any(
            m.enrollment_id == enrollment_id and m.status is OutboxStatus.PENDING
            for m in self._all("outbox", OutboxMessage)
        )

    def _bump(self, counters: Iterable[Counter]) -> None:
        for sequence_id, position, name, delta in counters:
            key = json.dumps([sequence_id, position, name])
            self._put("counters", key, (self._get("counters", key) or 0) + delta)

    # -- sequences

    def get_sequence(self, sequence_id: str) -> Sequence | None:
        """The sequence, or None."""
        with self._lock:
            return self._get("sequences", sequence_id, Sequence)  # type: ignore[no-any-return]

    def list_sequences(self, status: SequenceStatus | None = None) -> list[Sequence]:
        """All sequences (of one status), ordered by id."""
        with self._lock:
            found = [s for s in self._all("sequences", Sequence) if status is None or s.status is status]
        return sorted(found, key=lambda s: s.id)

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        """Insert, or replace at the expected version."""
        with self._lock:
            current = self.get_sequence(sequence.id)
            actual = None if current is None else current.version
            if (expected_version is None and current is not None) or (
                expected_version is not None and actual != expected_version
            ):
                raise ConcurrencyConflict(
                    kind="sequence", id=sequence.id, expected=expected_version or 0, actual=actual
                )
            self._put("sequences", sequence.id, sequence, Sequence)

    def delete_sequence(self, sequence_id: str) -> None:
        """Delete a sequence without live enrollments, with everything of it."""
        with self._lock:
            sequence = self.get_sequence(sequence_id)
            if sequence is None:
                raise SequenceNotFound(sequence_id)
            mine = [e for e in self._all("enrollments", Enrollment) if e.sequence_id == sequence_id]
            live = sum(e.status in LIVE for e in mine)
            if live:
                raise SequenceStateError(
                    sequence_id=sequence_id, status=sequence.status.value, action="delete",
                    hint=f"it has {live} active or paused enrollments",
                )  # fmt: skip
            for e in mine:
                del self._docs["enrollments"][e.id]
                self._docs["leases"].pop(f"enrollments:{e.id}", None)
            for m in [m for m in self._all("outbox", OutboxMessage) if m.sequence_id == sequence_id]:
                del self._docs["outbox"][m.key]
                self._docs["leases"].pop(f"outbox:{m.key}", None)
            for key in [k for k in self._docs["counters"] if json.loads(k)[0] == sequence_id]:
                del self._docs["counters"][key]
            del self._docs["sequences"][sequence_id]

    # -- enrollments

    def add_enrollment(
        self, enrollment: Enrollment, *, allow_reentry: bool, counters: Seq[Counter] = ()
    ) -> tuple[Enrollment, bool]:
        """Insert, unless the contact is (or, without re-entry, was) in the sequence for that key."""
        with self._lock:
            previous = sorted(
                (
                    e
                    for e in self._all("enrollments", Enrollment)
                    if (e.sequence_id, e.contact_id, e.key)
                    == (enrollment.sequence_id, enrollment.contact_id, enrollment.key)
                ),
                key=lambda e: (e.enrolled_at, e.id),
            )
            for existing in previous:
                if existing.status in LIVE:
                    return existing, False
            if previous and not allow_reentry:
                return previous[-1], False
            if enrollment.id in self._docs["enrollments"]:
                raise ConcurrencyConflict(kind="enrollment", id=enrollment.id, expected=0, actual=0)
            self._put("enrollments", enrollment.id, enrollment, Enrollment)
            self._bump(counters)
            return enrollment, True

    def get_enrollment(self, enrollment_id: str) -> Enrollment | None:
        """The enrollment, or None."""
        with self._lock:
            return self._get("enrollments", enrollment_id, Enrollment)  # type: ignore[no-any-return]

    def find_enrollments(
        self,
        *,
        sequence_id: str | None = None,
        contact_id: str | None = None,
        statuses: Iterable[EnrollmentStatus] | None = None,
        limit: int = 50,
        offset: int = 0,
        after: str | None = None,
        last_step_sent: int | None = None,
        order: EnrollmentOrder = EnrollmentOrder.ID,
    ) -> list[Enrollment]:
        """Enrollments matching every filter, ordered by id (or by next due time, none last)."""
        if last_step_sent is not None and (type(last_step_sent) is not int or last_step_sent < 0):
            raise InvalidArgument("last_step_sent", last_step_sent, "must be a step position (0 and up)")
        try:
            order = EnrollmentOrder(order)
        except ValueError:
            raise InvalidArgument("order", order, "expected 'id' or 'next_due'") from None
        wanted = None if statuses is None else frozenset(statuses)
        with self._lock:
            found = [
                e
                for e in self._all("enrollments", Enrollment)
                if (sequence_id is None or e.sequence_id == sequence_id)
                and (contact_id is None or e.contact_id == contact_id)
                and (wanted is None or e.status in wanted)
                and (after is None or e.id > after)
                and (last_step_sent is None or e.last_step_sent == last_step_sent)
            ]
        found.sort(key=lambda e: e.id)
        if order is EnrollmentOrder.NEXT_DUE:
            found.sort(key=lambda e: (e.next_step_due_at is None, e.next_step_due_at or EPOCH))  # stable: ties by id
        return found[offset : offset + limit]

    def _claimable(self, now: datetime) -> list[Enrollment]:
        active = {s.id for s in self._all("sequences", Sequence) if s.status is SequenceStatus.ACTIVE}
        waiting = {m.enrollment_id for m in self._all("outbox", OutboxMessage) if m.status is OutboxStatus.PENDING}
        return [
            e
            for e in self._all("enrollments", Enrollment)
            if e.status is EnrollmentStatus.ACTIVE
            and e.next_step_due_at is not None
            and e.sequence_id in active
            and e.id not in waiting
        ]

    def _broken_enrollments(self, now: datetime) -> list[BrokenRecord]:
        """The enrollment documents that can't be read and are not leased, as BrokenRecords.

        A document database has no columns to select on, so a broken document's due time is
        unknown: it is offered at every claim (after the due ones) until the engine's lease on
        it runs out. A store with a separate due-time column would hand it back only when due.
        """
        broken = []
        for key, text in sorted(self._docs["enrollments"].items()):
            try:
                self._decode("enrollments", key, text, Enrollment)
            except UnreadableDocument as exc:
                if self._lease_until("enrollments", key, now) is None:
                    broken.append(BrokenRecord(id=key, error=exc.error))
        return broken

    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Enrollment | BrokenRecord]:
        """Lease the earliest due enrollments of active sequences to ``owner``; a document
        that can't be read comes back as a :class:`BrokenRecord`, leased too, and the claim goes on."""
        with self._lock:
            due: list[Enrollment | BrokenRecord] = [
                e
                for e in self._claimable(now)
                if e.next_step_due_at is not None
                and e.next_step_due_at <= now
                and self._lease_until("enrollments", e.id, now) is None
            ]
            due.sort(key=lambda e: (e.next_step_due_at, e.id))  # type: ignore[union-attr]
            due += self._broken_enrollments(now)
            for item in due[:limit]:
                self._lease("enrollments", item.id, owner, now + lease)
            return due[:limit]

    def release(self, enrollment_ids: Iterable[str], *, owner: str, until: datetime | None = None) -> None:
        """End (or, with ``until``, extend) ``owner``'s leases."""
        with self._lock:
            for enrollment_id in enrollment_ids:
                key = f"enrollments:{enrollment_id}"
                lease = self._get("leases", key)
                if lease is None or lease["owner"] != owner:
                    continue
                if until is None:
                    del self._docs["leases"][key]
                else:
                    self._lease("enrollments", enrollment_id, owner, until.astimezone(timezone.utc))

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        """Apply each change whose version still matches; return the ids refused."""
        refused: list[str] = []
        with self._lock:
            for change in changes:
                new = change.enrollment
                stored = self.get_enrollment(new.id)
                if stored is None or stored.version != new.version:
                    refused.append(new.id)
                    continue
                lease = self._get("leases", f"enrollments:{new.id}")
                self._docs["leases"].pop(f"enrollments:{new.id}", None)
                self._put("enrollments", new.id, Enrollment(**{**_fields(new), "version": new.version + 1}), Enrollment)
                for message in change.outbox:
                    if message.key in self._docs["outbox"]:
                        continue
                    self._put("outbox", message.key, message, OutboxMessage)
                    held = owner is not None and lease is not None and lease["owner"] == owner
                    if held and lease is not None and message.status is OutboxStatus.PENDING:
                        self._lease("outbox", message.key, owner, datetime.fromisoformat(lease["until"]))  # type: ignore[arg-type]
                self._bump(change.counters)
        return refused

    def next_due_at(self) -> datetime | None:
        """The earliest instant at which claim_due could return something."""
        with self._lock:
            times = []
            for e in self._claimable(datetime.min.replace(tzinfo=timezone.utc)):
                assert e.next_step_due_at is not None
                lease = self._get("leases", f"enrollments:{e.id}")
                until = None if lease is None else _instant(lease["until"])
                times.append(e.next_step_due_at if until is None else max(e.next_step_due_at, until))
            return min(times, default=None)

    def count_due(self, now: datetime) -> int:
        """How many ACTIVE enrollments of active sequences are due at ``now``."""
        with self._lock:
            active = {s.id for s in self._all("sequences", Sequence) if s.status is SequenceStatus.ACTIVE}
            return sum(
                1
                for e in self._all("enrollments", Enrollment)
                if e.status is EnrollmentStatus.ACTIVE
                and e.sequence_id in active
                and e.next_step_due_at is not None
                and e.next_step_due_at <= now
            )

    # -- outbox

    def _held(self, m: OutboxMessage) -> bool:
        """A pause holds a message: its enrollment is PAUSED, or ACTIVE in a sequence that is not.
        (A finished or deleted enrollment's message is not held: the engine drops it unsent.)"""
        try:
            e: Enrollment | None = self._get("enrollments", m.enrollment_id, Enrollment)
        except UnreadableDocument:
            return True  # whether a pause holds it can't be told: hold it until the document is mended
        if e is None or e.status.is_terminal:
            return False
        if e.status is EnrollmentStatus.PAUSED:
            return True
        sequence: Sequence | None = self._get("sequences", e.sequence_id, Sequence)
        return sequence is None or sequence.status is not SequenceStatus.ACTIVE

    def claim_messages(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[OutboxMessage]:
        """Lease the oldest pending messages whose next attempt is due, unless a pause holds them."""
        with self._lock:
            ready = [
                m
                for m in self._all("outbox", OutboxMessage)
                if m.status is OutboxStatus.PENDING
                and m.next_attempt_at is not None
                and m.next_attempt_at <= now
                and self._lease_until("outbox", m.key, now) is None
                and not self._held(m)
            ]
            ready.sort(key=lambda m: (m.next_attempt_at, m.key))
            for m in ready[:limit]:
                self._lease("outbox", m.key, owner, now + lease)
            return ready[:limit]

    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        """Record delivery outcomes; a settled message stays as it is."""
        with self._lock:
            for delivery in deliveries:
                message: OutboxMessage | None = self._get("outbox", delivery.key, OutboxMessage)
                if message is None or message.status is not OutboxStatus.PENDING:
                    continue
                finished = delivery.status is not OutboxStatus.PENDING
                body = {
                    **_fields(message),
                    "status": delivery.status,
                    "attempts": message.attempts + 1,
                    "next_attempt_at": None if finished else delivery.next_attempt_at,
                    "last_error": delivery.error,
                    "settled_at": delivery.at if finished else None,
                    "provider_id": delivery.provider_id,
                }
                self._put("outbox", delivery.key, OutboxMessage(**body), OutboxMessage)
                self._docs["leases"].pop(f"outbox:{delivery.key}", None)
                self._bump(delivery.counters)

    def get_message(self, key: str) -> OutboxMessage | None:
        """The outbox message with that key, or None."""
        with self._lock:
            return self._get("outbox", key, OutboxMessage)  # type: ignore[no-any-return]

    def find_messages(
        self, *, status: OutboxStatus | None = None, enrollment_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[OutboxMessage]:
        """Outbox messages matching the filters, ordered by (created_at, key)."""
        with self._lock:
            found = [
                m
                for m in self._all("outbox", OutboxMessage)
                if (status is None or m.status is status)
                and (enrollment_id is None or m.enrollment_id == enrollment_id)
            ]
        found.sort(key=lambda m: (m.created_at, m.key))
        return found[offset : offset + limit]

    def count_messages(self, contact_id: str, since: datetime, until: datetime) -> int:
        """Emails queued for the contact in ``[since, until)`` (pending or delivered)."""
        with self._lock:
            return sum(
                1
                for m in self._all("outbox", OutboxMessage)
                if m.contact_id == contact_id and m.status is not OutboxStatus.FAILED and since <= m.created_at < until
            )

    def prune_messages(self, settled_before: datetime, *, batch_size: int = 10_000) -> int:
        """Delete DELIVERED and FAILED messages settled before ``settled_before``; pending ones stay."""
        cutoff = to_utc(settled_before, "settled_before")
        if type(batch_size) is not int or batch_size < 1:
            raise InvalidArgument("batch_size", batch_size, "must be a whole number, 1 or more")
        with self._lock:
            old = [
                m.key
                for m in self._all("outbox", OutboxMessage)
                if m.status is not OutboxStatus.PENDING and m.settled_at is not None and m.settled_at < cutoff
            ]
            for key in old:
                del self._docs["outbox"][key]
                self._docs["leases"].pop(f"outbox:{key}", None)
            return len(old)

    def next_message_at(self) -> datetime | None:
        """The earliest next attempt of a pending message no pause holds (or its lease's end, if later)."""
        with self._lock:
            times = []
            for m in self._all("outbox", OutboxMessage):
                if m.status is not OutboxStatus.PENDING or m.next_attempt_at is None or self._held(m):
                    continue
                lease = self._get("leases", f"outbox:{m.key}")
                until = None if lease is None else _instant(lease["until"])
                times.append(m.next_attempt_at if until is None else max(m.next_attempt_at, until))
            return min(times, default=None)

    # -- counters

    def bump(self, counters: Seq[Counter]) -> None:
        """Apply counter increments."""
        with self._lock:
            self._bump(counters)

    def counters(self, sequence_id: str) -> Mapping[tuple[int, str], int]:
        """Every non-zero counter of a sequence."""
        with self._lock:
            found = {}
            for key, text in self._docs["counters"].items():
                seq, position, name = json.loads(key)
                value = json.loads(text)
                if seq == sequence_id and value:
                    found[(position, name)] = value
            return found


def _fields(record: Any) -> dict[str, Any]:
    """An attrs record's init fields, to build an edited copy."""
    import attrs

    return {a.alias: getattr(record, a.name) for a in attrs.fields(type(record)) if a.init}


# --------------------------------------------------------------------------- the contract kit

try:
    import pytest

    from dripcore.testing.contract import StoreContract, StoreStateMachine
except ImportError:  # the kit needs pytest and Hypothesis (pip install 'dripcore[dev]')
    pass
else:

    def break_document(store: Store, enrollment_id: str) -> None:
        """Corrupt a stored enrollment document, as a bad write or a hand edit would."""
        assert isinstance(store, DocumentStore)
        store.documents["enrollments"][enrollment_id] = '{"id": "broken'

    class TestDocumentStore(StoreContract):
        """Every rule of the Store contract, against a fresh DocumentStore, broken documents included."""

        @pytest.fixture
        def store(self) -> Iterator[Store]:
            with DocumentStore() as store:
                yield store

        @pytest.fixture
        def break_enrollment(self) -> Any:
            return break_document

    class DocumentStoreAgreesWithMemory(StoreStateMachine):
        """Random operations, applied to DocumentStore and MemoryStore alike, give the same results."""

        def make_store(self) -> Store:
            return DocumentStore()

        def reopen_store(self, store: Store) -> Store:
            assert isinstance(store, DocumentStore)
            store.close()
            return DocumentStore(store.documents)  # the same "database", a new store object

    TestDocumentStoreStateMachine = DocumentStoreAgreesWithMemory.TestCase


# --------------------------------------------------------------------------- a short run


def main() -> None:
    """Run the welcome prefab for one contact on the document store."""
    from dripcore import Contact, Drip, TriggerEvent
    from dripcore.prefabs import welcome_series
    from dripcore.testing import FakeClock, MemoryContacts, RecordingSender

    clock, sender = FakeClock(), RecordingSender()
    contacts = MemoryContacts([Contact(id="ana", email="ana@example.com", first_name="Ana")])
    drip = Drip(store=DocumentStore(), sender=sender, clock=clock, contacts=contacts)
    drip.save_sequence(welcome_series())
    drip.activate("welcome")
    drip.notify(TriggerEvent.tag_added("ana", "new"))
    while (wake := drip.next_wake_at()) is not None:
        clock.set(max(wake, clock.now()))
        drip.tick()
    for email in sender.sent:
        print(f"{email.idempotency_key:<34} {email.subject}")
    print("Check it against the Store contract with: python -m pytest examples/custom_store.py")


if __name__ == "__main__":
    main()
