"""MemoryStore: the reference :class:`~dripcore.ports.Store`, on plain dicts.

It is the executable meaning of the Store contract: the contract kit's state
machine compares every other adapter with it. It is thread-safe (one lock) and
fast enough for tests and demos, but keeps nothing across restarts; use
:class:`~dripcore.adapters.sqlite.SQLiteStore` for that.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta

import attrs

from .._checks import (
    MAX_SPAN,
    check_claim,
    check_count,
    check_counters,
    check_enum,
    check_enums,
    check_flag,
    check_id,
    check_ids,
    check_instant,
    check_key,
    check_opt_enum,
    check_opt_id,
    check_opt_instant,
    check_opt_position,
    check_record,
    check_records,
    check_span,
)
from ..errors import ConcurrencyConflict, InvalidArgument, SequenceNotFound, SequenceStateError
from ..model import UTC, Enrollment, EnrollmentStatus, Sequence, SequenceStatus, to_utc
from ..ports import BrokenRecord, Change, Counter, Delivery, EnrollmentOrder, OutboxMessage, OutboxStatus, Store
from ._common import checked_counters

__all__ = ["MemoryStore"]

_LIVE = (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)
# Stands in for a missing due time when sorting (those sort last anyway, before this is compared).
_NO_DUE = datetime.min.replace(tzinfo=UTC)


@attrs.define
class _Lease:
    owner: str
    until: datetime


class MemoryStore(Store):
    """An in-memory :class:`~dripcore.ports.Store`; the reference implementation."""

    capabilities = frozenset({"frequency_cap", "retention"})

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._sequences: dict[str, Sequence] = {}
        self._enrollments: dict[str, Enrollment] = {}
        self._by_identity: dict[tuple[str, str, str | None], list[str]] = defaultdict(list)
        self._leases: dict[str, _Lease] = {}
        self._outbox: dict[str, OutboxMessage] = {}
        self._message_leases: dict[str, _Lease] = {}
        self._pending_by_enrollment: dict[str, set[str]] = defaultdict(set)
        self._counters: dict[tuple[str, int, str], int] = defaultdict(int)

    # -- sequences

    def get_sequence(self, sequence_id: str) -> Sequence | None:
        """The sequence, or None."""
        sequence_id = check_id(sequence_id, "sequence_id")
        with self._lock:
            return self._sequences.get(sequence_id)

    def list_sequences(self, status: SequenceStatus | None = None) -> list[Sequence]:
        """All sequences (of one status), ordered by id."""
        status = check_opt_enum(status, SequenceStatus, "status")
        with self._lock:
            return [s for _, s in sorted(self._sequences.items()) if status is None or s.status is status]

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        """Insert (``expected_version=None``) or replace at the expected version."""
        check_record(sequence, Sequence, "sequence")
        if expected_version is not None:
            check_count(expected_version, "expected_version")
        with self._lock:
            current = self._sequences.get(sequence.id)
            if expected_version is None:
                if current is not None:
                    raise ConcurrencyConflict(kind="sequence", id=sequence.id, expected=0, actual=current.version)
            elif current is None or current.version != expected_version:
                raise ConcurrencyConflict(
                    kind="sequence", id=sequence.id, expected=expected_version,
                    actual=None if current is None else current.version,
                )  # fmt: skip
            self._sequences[sequence.id] = sequence

    def resume_sequence(self, sequence: Sequence, *, expected_version: int, shift: timedelta) -> int:
        """Save the resumed sequence and move its ACTIVE enrollments, and their PENDING messages'
        next attempts, ``shift`` later, at once."""
        check_record(sequence, Sequence, "sequence")
        check_count(expected_version, "expected_version")
        check_span(shift, "shift", maximum=MAX_SPAN)
        with self._lock:
            current = self._sequences.get(sequence.id)
            if current is None or current.version != expected_version:
                raise ConcurrencyConflict(
                    kind="sequence", id=sequence.id, expected=expected_version,
                    actual=None if current is None else current.version,
                )  # fmt: skip
            moved = {
                e.id: attrs.evolve(e, next_step_due_at=e.next_step_due_at + shift, version=e.version + 1)
                for e in self._enrollments.values()
                if e.sequence_id == sequence.id and e.status is EnrollmentStatus.ACTIVE and e.next_step_due_at
            }  # computed in full before anything is written: all or nothing
            retries = {
                m.key: attrs.evolve(m, next_attempt_at=m.next_attempt_at + shift)
                for m in self._outbox.values()
                if m.sequence_id == sequence.id and m.status is OutboxStatus.PENDING and m.next_attempt_at
                and m.enrollment_id in moved
            }  # fmt: skip
            self._sequences[sequence.id] = sequence
            self._enrollments.update(moved)
            self._outbox.update(retries)
            return len(moved)

    def delete_sequence(self, sequence_id: str) -> None:
        """Delete a sequence with no live enrollments, and everything of it."""
        sequence_id = check_id(sequence_id, "sequence_id")
        with self._lock:
            sequence = self._sequences.get(sequence_id)
            if sequence is None:
                raise SequenceNotFound(sequence_id)
            mine = [e for e in self._enrollments.values() if e.sequence_id == sequence_id]
            live = sum(e.status in _LIVE for e in mine)
            if live:
                raise SequenceStateError(
                    sequence_id=sequence_id, status=sequence.status.value, action="delete",
                    hint=f"it has {live} active or paused enrollments; archive it first",
                )  # fmt: skip
            for e in mine:
                del self._enrollments[e.id]
                self._leases.pop(e.id, None)
                self._by_identity.pop((e.sequence_id, e.contact_id, e.key), None)
            for key in [k for k, m in self._outbox.items() if m.sequence_id == sequence_id]:
                self._pending_by_enrollment.pop(self._outbox[key].enrollment_id, None)
                del self._outbox[key]
                self._message_leases.pop(key, None)
            for counter in [c for c in self._counters if c[0] == sequence_id]:
                del self._counters[counter]
            del self._sequences[sequence_id]

    # -- enrollments

    def add_enrollment(
        self, enrollment: Enrollment, *, allow_reentry: bool, counters: Seq[Counter] = ()
    ) -> tuple[Enrollment, bool]:
        """Insert unless the contact is already (or, without re-entry, was) in the sequence for that key."""
        check_record(enrollment, Enrollment, "enrollment")
        check_flag(allow_reentry, "allow_reentry")
        counters = check_counters(counters)
        with self._lock:
            identity = (enrollment.sequence_id, enrollment.contact_id, enrollment.key)
            previous = [self._enrollments[i] for i in self._by_identity.get(identity, ())]
            for existing in previous:
                if existing.status in _LIVE:
                    return existing, False
            if previous and not allow_reentry:
                return previous[-1], False
            if enrollment.id in self._enrollments:
                raise ConcurrencyConflict(kind="enrollment", id=enrollment.id, expected=0, actual=0)
            self._enrollments[enrollment.id] = enrollment
            self._by_identity[identity].append(enrollment.id)
            self._bump(counters)
            return enrollment, True

    def add_enrollment_batch(
        self,
        enrollments: Seq[Enrollment],
        *,
        allow_reentry: bool,
        counters: Callable[[Enrollment], Iterable[Counter]] | None = None,
    ) -> list[tuple[Enrollment, bool]]:
        """:meth:`add_enrollment` for each, in order, all under one lock (ids checked before anything is added)."""
        check_records(enrollments, Enrollment, "enrollments")
        check_flag(allow_reentry, "allow_reentry")
        checked = None if counters is None else checked_counters(counters)
        with self._lock:
            results: list[tuple[Enrollment, bool]] = []
            added: dict[tuple[str, str, str | None], Enrollment] = {}
            added_ids: set[str] = set()
            increments: list[Counter] = []
            for enrollment in enrollments:
                identity = (enrollment.sequence_id, enrollment.contact_id, enrollment.key)
                first = added.get(identity)
                if first is not None:
                    results.append((first, False))
                    continue
                previous = [self._enrollments[i] for i in self._by_identity.get(identity, ())]
                live = next((e for e in previous if e.status in _LIVE), None)
                if live is not None or (previous and not allow_reentry):
                    results.append((live or previous[-1], False))
                    continue
                if enrollment.id in self._enrollments or enrollment.id in added_ids:
                    raise ConcurrencyConflict(kind="enrollment", id=enrollment.id, expected=0, actual=0)
                added[identity] = enrollment
                added_ids.add(enrollment.id)
                if checked is not None:
                    increments.extend(checked(enrollment))
                results.append((enrollment, True))
            for identity, enrollment in added.items():
                self._enrollments[enrollment.id] = enrollment
                self._by_identity[identity].append(enrollment.id)
            self._bump(increments)
            return results

    def get_enrollment(self, enrollment_id: str) -> Enrollment | None:
        """The enrollment, or None."""
        enrollment_id = check_id(enrollment_id, "enrollment_id")
        with self._lock:
            return self._enrollments.get(enrollment_id)

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
        """Enrollments matching the filters, ordered by id (or by next due time)."""
        sequence_id = check_opt_id(sequence_id, "sequence_id")
        contact_id = check_opt_id(contact_id, "contact_id")
        statuses = check_enums(statuses, EnrollmentStatus, "statuses")
        limit, offset = check_count(limit, "limit"), check_count(offset, "offset")
        after = check_opt_id(after, "after")
        last_step_sent = check_opt_position(last_step_sent, "last_step_sent")
        order = check_enum(order, EnrollmentOrder, "order")
        wanted = None if statuses is None else frozenset(statuses)
        with self._lock:
            found = [
                e
                for e in self._enrollments.values()
                if (sequence_id is None or e.sequence_id == sequence_id)
                and (contact_id is None or e.contact_id == contact_id)
                and (wanted is None or e.status in wanted)
                and (after is None or e.id > after)
                and (last_step_sent is None or e.last_step_sent == last_step_sent)
            ]
        found.sort(key=lambda e: e.id)
        if order is EnrollmentOrder.NEXT_DUE:
            found.sort(key=lambda e: (e.next_step_due_at is None, e.next_step_due_at or _NO_DUE))  # stable: ids
        return found[offset : offset + limit]

    def _claimable(self, e: Enrollment, now: datetime) -> bool:
        if e.status is not EnrollmentStatus.ACTIVE or e.next_step_due_at is None or e.next_step_due_at > now:
            return False
        sequence = self._sequences.get(e.sequence_id)
        if sequence is None or sequence.status is not SequenceStatus.ACTIVE:
            return False
        if self._pending_by_enrollment.get(e.id):
            return False  # the previous step's email is not settled yet
        lease = self._leases.get(e.id)
        return lease is None or lease.until <= now

    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Enrollment | BrokenRecord]:
        """Lease the earliest due enrollments of active sequences to ``owner``."""
        now, limit, lease, owner = check_claim(now, limit, lease, owner)
        now = to_utc(now, "now")
        with self._lock:
            due = [e for e in self._enrollments.values() if self._claimable(e, now)]
            due.sort(key=lambda e: (e.next_step_due_at, e.id))
            claimed: list[Enrollment | BrokenRecord] = []
            for e in due[:limit]:
                self._leases[e.id] = _Lease(owner, now + lease)
                claimed.append(e)
            return claimed

    def release(self, enrollment_ids: Iterable[str], *, owner: str, until: datetime | None = None) -> None:
        """End (or, with ``until``, extend) ``owner``'s leases."""
        enrollment_ids = check_ids(enrollment_ids, "enrollment_ids")
        owner, until = check_id(owner, "owner"), check_opt_instant(until, "until")
        with self._lock:
            for enrollment_id in enrollment_ids:
                lease = self._leases.get(enrollment_id)
                if lease is None or lease.owner != owner:
                    continue
                if until is None:
                    del self._leases[enrollment_id]
                else:
                    lease.until = to_utc(until, "until")

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        """Apply every change whose version still matches; return the refused ids."""
        check_records(changes, Change, "changes")
        owner = check_opt_id(owner, "owner")
        refused: list[str] = []
        with self._lock:
            for change in changes:
                new = change.enrollment
                stored = self._enrollments.get(new.id)
                if stored is None or stored.version != new.version:
                    refused.append(new.id)
                    continue
                lease = self._leases.pop(new.id, None)
                self._enrollments[new.id] = attrs.evolve(new, version=new.version + 1)
                for message in change.outbox:
                    if message.key in self._outbox:
                        continue
                    self._outbox[message.key] = message
                    if message.status is OutboxStatus.PENDING:
                        self._pending_by_enrollment[message.enrollment_id].add(message.key)
                    held = owner is not None and lease is not None and lease.owner == owner
                    if held and lease is not None and message.status is OutboxStatus.PENDING:
                        self._message_leases[message.key] = _Lease(lease.owner, lease.until)
                self._bump(change.counters)
        return refused

    def next_due_at(self) -> datetime | None:
        """The earliest instant at which claim_due could return something."""
        with self._lock:
            times = []
            for e in self._enrollments.values():
                if e.status is not EnrollmentStatus.ACTIVE or e.next_step_due_at is None:
                    continue
                if self._pending_by_enrollment.get(e.id):
                    continue
                sequence = self._sequences.get(e.sequence_id)
                if sequence is None or sequence.status is not SequenceStatus.ACTIVE:
                    continue
                lease = self._leases.get(e.id)
                times.append(e.next_step_due_at if lease is None else max(e.next_step_due_at, lease.until))
            return min(times, default=None)

    def count_due(self, now: datetime) -> int:
        """How many enrollments claim_due could return at ``now``, leases aside."""
        now = check_instant(now, "now")
        now = to_utc(now, "now")
        with self._lock:
            return sum(
                1
                for e in self._enrollments.values()
                if e.status is EnrollmentStatus.ACTIVE
                and e.next_step_due_at is not None
                and e.next_step_due_at <= now
                and (s := self._sequences.get(e.sequence_id)) is not None
                and s.status is SequenceStatus.ACTIVE
            )

    # -- outbox

    def _held(self, m: OutboxMessage) -> bool:
        """Whether a pause holds the message: its enrollment is PAUSED, or ACTIVE in a sequence that
        is not. Messages of finished (or deleted) enrollments are not held: the engine drops them."""
        e = self._enrollments.get(m.enrollment_id)
        if e is None or e.status.is_terminal:
            return False
        if e.status is EnrollmentStatus.PAUSED:
            return True
        sequence = self._sequences.get(e.sequence_id)
        return sequence is None or sequence.status is not SequenceStatus.ACTIVE

    def claim_messages(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[OutboxMessage]:
        """Lease the oldest pending messages whose next attempt is due, unless a pause holds them."""
        now, limit, lease, owner = check_claim(now, limit, lease, owner)
        now = to_utc(now, "now")
        with self._lock:
            ready = [
                m
                for m in self._outbox.values()
                if m.status is OutboxStatus.PENDING
                and m.next_attempt_at is not None
                and m.next_attempt_at <= now
                and ((leased := self._message_leases.get(m.key)) is None or leased.until <= now)
                and not self._held(m)
            ]
            ready.sort(key=lambda m: (m.next_attempt_at, m.key))
            for m in ready[:limit]:
                self._message_leases[m.key] = _Lease(owner, now + lease)
            return ready[:limit]

    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        """Record delivery outcomes; settling a finished message again changes nothing."""
        check_records(deliveries, Delivery, "deliveries")
        owner = check_opt_id(owner, "owner")
        with self._lock:
            for delivery in deliveries:
                message = self._outbox.get(delivery.key)
                if message is None or message.status is not OutboxStatus.PENDING:
                    continue
                finished = delivery.status is not OutboxStatus.PENDING
                self._outbox[delivery.key] = attrs.evolve(
                    message,
                    status=delivery.status,
                    attempts=message.attempts + 1,
                    next_attempt_at=None if finished else delivery.next_attempt_at,
                    last_error=delivery.error,
                    settled_at=delivery.at if finished else None,
                    provider_id=delivery.provider_id,
                )
                self._message_leases.pop(delivery.key, None)
                if finished:
                    pending = self._pending_by_enrollment.get(message.enrollment_id)
                    if pending is not None:
                        pending.discard(delivery.key)
                        if not pending:
                            del self._pending_by_enrollment[message.enrollment_id]
                self._bump(delivery.counters)

    def requeue_message(self, message: OutboxMessage) -> bool:
        """Replace a FAILED message with ``message`` (PENDING)."""
        check_record(message, OutboxMessage, "message")
        if message.status is not OutboxStatus.PENDING:
            raise InvalidArgument("message.status", message.status.value, "a requeued message is pending")
        with self._lock:
            current = self._outbox.get(message.key)
            if current is None or current.status is not OutboxStatus.FAILED:
                return False
            self._outbox[message.key] = message
            self._pending_by_enrollment[message.enrollment_id].add(message.key)
            return True

    def get_message(self, key: str) -> OutboxMessage | None:
        """The outbox message with that key, or None."""
        key = check_key(key)
        with self._lock:
            return self._outbox.get(key)

    def find_messages(
        self, *, status: OutboxStatus | None = None, enrollment_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[OutboxMessage]:
        """Outbox messages matching the filters, ordered by (created_at, key)."""
        status = check_opt_enum(status, OutboxStatus, "status")
        enrollment_id = check_opt_id(enrollment_id, "enrollment_id")
        limit, offset = check_count(limit, "limit"), check_count(offset, "offset")
        with self._lock:
            found = [
                m
                for m in self._outbox.values()
                if (status is None or m.status is status)
                and (enrollment_id is None or m.enrollment_id == enrollment_id)
            ]
        found.sort(key=lambda m: (m.created_at, m.key))
        return found[offset : offset + limit]

    def count_messages(self, contact_id: str, since: datetime, until: datetime) -> int:
        """Emails queued for the contact in ``[since, until)`` (pending or delivered)."""
        contact_id = check_id(contact_id, "contact_id")
        since, until = check_instant(since, "since"), check_instant(until, "until")
        since, until = to_utc(since, "since"), to_utc(until, "until")
        with self._lock:
            return sum(
                1
                for m in self._outbox.values()
                if m.contact_id == contact_id and m.status is not OutboxStatus.FAILED and since <= m.created_at < until
            )

    def prune_messages(self, settled_before: datetime, *, batch_size: int = 10_000) -> int:
        """Delete settled (delivered or failed) messages settled before ``settled_before``."""
        settled_before = check_instant(settled_before, "settled_before")
        batch_size = check_count(batch_size, "batch_size", minimum=1)
        cutoff = to_utc(settled_before, "settled_before")
        with self._lock:
            old = [
                key
                for key, m in self._outbox.items()
                if m.status is not OutboxStatus.PENDING and m.settled_at is not None and m.settled_at < cutoff
            ]
            for key in old:
                del self._outbox[key]
            return len(old)

    def next_message_at(self) -> datetime | None:
        """The earliest next attempt of a pending message no pause holds (or its lease's end, if later)."""
        with self._lock:
            times = []
            for m in self._outbox.values():
                if m.status is not OutboxStatus.PENDING or m.next_attempt_at is None or self._held(m):
                    continue
                lease = self._message_leases.get(m.key)
                times.append(m.next_attempt_at if lease is None else max(m.next_attempt_at, lease.until))
            return min(times, default=None)

    # -- counters

    def _bump(self, counters: Iterable[Counter]) -> None:
        for sequence_id, position, name, delta in counters:
            self._counters[(sequence_id, position, name)] += delta

    def bump(self, counters: Seq[Counter]) -> None:
        """Apply counter increments."""
        counters = check_counters(counters)
        with self._lock:
            self._bump(counters)

    def counters(self, sequence_id: str) -> Mapping[tuple[int, str], int]:
        """Every counter of a sequence."""
        sequence_id = check_id(sequence_id, "sequence_id")
        with self._lock:
            return {(p, n): v for (s, p, n), v in self._counters.items() if s == sequence_id and v}
