"""Fakes for testing code that uses dripcore: real implementations, not mocks.

They are public and documented, in the manner of httpx's ``MockTransport``:

>>> from datetime import timedelta
>>> clock = FakeClock()
>>> start = clock.now()
>>> clock.advance(timedelta(days=1)) - start
datetime.timedelta(days=1)
"""

from __future__ import annotations

import threading
from collections import Counter as _Counter
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta

import attrs

from .._checks import check_count
from ..errors import PermanentSendError, TransientSendError
from ..model import UTC, Contact, Event, ExitReason, Trigger, TriggerType, to_utc
from ..ports import Clock, ContactDirectory, Email, EventSink, MailSender, RateLimiter

__all__ = [
    "DailyCap",
    "FakeClock",
    "FlakySender",
    "MemoryContacts",
    "NullSender",
    "RecordingEvents",
    "RecordingSender",
]

DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class FakeClock(Clock):
    """A clock that moves only when told to; ``wait`` moves it forward instead of sleeping."""

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self._now = to_utc(start, "start")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The fake current instant."""
        with self._lock:
            return self._now

    def set(self, instant: datetime) -> datetime:
        """Jump to ``instant`` (backwards too)."""
        with self._lock:
            self._now = to_utc(instant, "instant")
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by ``delta`` and return the new time."""
        with self._lock:
            self._now = self._now + delta
            return self._now

    def wait(self, seconds: float, wake: threading.Event) -> None:
        """Advance by ``seconds`` at once, unless ``wake`` is already set."""
        if not wake.is_set():
            self.advance(timedelta(seconds=max(0.0, seconds)))


class RecordingSender(MailSender):
    """Records every email, and honours idempotency keys like a careful provider.

    ``sent`` holds each distinct email once; ``attempts`` counts every call per
    key, so ``duplicate_attempts`` shows how often a key was offered again
    (which a naive sender would have sent twice).
    """

    honours_idempotency_keys = True
    sends_real_mail = False

    def __init__(self, *, max_in_flight: int = 1) -> None:
        self.sent: list[Email] = []
        self.attempts: _Counter[str] = _Counter()
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        # Thread-safe, so any number may be in flight; 1 by default, so that ``sent`` comes in
        # a deterministic order in tests (pass more to test concurrent delivery).
        self.max_in_flight = max_in_flight

    def send(self, email: Email) -> str | None:
        """Record ``email`` unless its key was already sent."""
        with self._lock:
            self.attempts[email.idempotency_key] += 1
            if email.idempotency_key in self._keys:
                return f"dup-{email.idempotency_key}"
            self._keys.add(email.idempotency_key)
            self.sent.append(email)
            return f"msg-{len(self.sent)}"

    @property
    def duplicate_attempts(self) -> int:
        """How many calls repeated a key already sent."""
        return sum(n - 1 for n in self.attempts.values() if n > 1)

    def to(self, address: str) -> list[Email]:
        """The emails sent to ``address``, in order."""
        return [e for e in self.sent if e.to == address]


class NullSender(MailSender):
    """Accepts everything and keeps nothing (for benchmarks). It claims to honour keys, since
    sending nothing twice is sending nothing: outcomes are then recorded a batch at a time."""

    honours_idempotency_keys = True
    sends_real_mail = False

    def __init__(self) -> None:
        self.count = 0

    def send(self, email: Email) -> str | None:
        """Count ``email`` and forget it."""
        self.count += 1
        return None


@attrs.define
class _Failure:
    permanent: bool
    reason: str | None
    remaining: int | None


class FlakySender(MailSender):
    """Wraps another sender and fails on demand, transiently or permanently.

    >>> sender = FlakySender(RecordingSender())
    >>> sender.fail_next(2)                                  # two transient failures, then fine
    >>> sender.fail_address("gone@example.com", reason="bounced")  # always a hard bounce
    """

    def __init__(self, inner: MailSender | None = None) -> None:
        self.inner = inner if inner is not None else RecordingSender()
        self._next: list[_Failure] = []
        self._addresses: dict[str, _Failure] = {}
        self.failures = 0
        self._lock = threading.Lock()

    def fail_next(self, count: int = 1, *, permanent: bool = False, reason: str | None = None) -> None:
        """Make the next ``count`` sends fail."""
        with self._lock:
            self._next.extend(_Failure(permanent, reason, None) for _ in range(count))

    def fail_address(
        self, address: str, *, permanent: bool = True, reason: str | None = None, times: int | None = None
    ) -> None:
        """Make sends to ``address`` fail (``times`` times, or always)."""
        with self._lock:
            self._addresses[address] = _Failure(permanent, reason, times)

    @property
    def max_in_flight(self) -> int:  # type: ignore[override]
        """The inner sender's."""
        return self.inner.max_in_flight

    @property
    def honours_idempotency_keys(self) -> bool:  # type: ignore[override]
        """The inner sender's."""
        return self.inner.honours_idempotency_keys

    @property
    def sends_real_mail(self) -> bool:  # type: ignore[override]
        """The inner sender's."""
        return self.inner.sends_real_mail

    def send(self, email: Email) -> str | None:
        """Fail if told to, otherwise pass ``email`` to the inner sender."""
        with self._lock:
            failure = self._next.pop(0) if self._next else None
            if failure is None and email.to in self._addresses:
                failure = self._addresses[email.to]
                if failure.remaining is not None:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        del self._addresses[email.to]
            if failure is not None:
                self.failures += 1
        if failure is not None:
            if failure.permanent:
                raise PermanentSendError(f"refused {email.idempotency_key}", reason=failure.reason)
            raise TransientSendError(f"temporarily failed {email.idempotency_key}")
        return self.inner.send(email)


class MemoryContacts(ContactDirectory):
    """Contacts in a dict, with list, group and tag memberships for ``enroll_existing``."""

    def __init__(self, contacts: Iterable[Contact] = ()) -> None:
        self._contacts: dict[str, Contact] = {c.id: c for c in contacts}
        self._members: dict[tuple[TriggerType, str], set[str]] = {}
        self._lock = threading.Lock()

    def add(self, contact: Contact) -> Contact:
        """Add or replace a contact."""
        with self._lock:
            self._contacts[contact.id] = contact
        return contact

    def join(self, contact_id: str, trigger_type: TriggerType, value: str) -> None:
        """Record that the contact is in a list, group or tag (for ``members``)."""
        with self._lock:
            self._members.setdefault((trigger_type, value.casefold()), set()).add(contact_id)

    def get(self, contact_id: str) -> Contact | None:
        """The contact, or None."""
        with self._lock:
            return self._contacts.get(contact_id)

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        """Contacts by id."""
        with self._lock:
            return {i: self._contacts[i] for i in contact_ids if i in self._contacts}

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        """Mark the contact as not to be mailed."""
        with self._lock:
            contact = self._contacts.get(contact_id)
            if contact is not None and contact.suppressed is None:
                self._contacts[contact_id] = attrs.evolve(contact, suppressed=reason)

    def anniversaries(self, field: str, month: int, day: int) -> Iterable[Contact]:
        """Contacts whose birthday (or sign-up date) falls on month/day."""
        with self._lock:
            contacts = list(self._contacts.values())
        found = []
        for contact in contacts:
            origin = contact.birthday if field == "birthday" else (
                contact.created_at.date() if contact.created_at else None
            )  # fmt: skip
            if origin is not None and origin.month == month and origin.day == day:
                found.append(contact)
        return found

    def members(self, trigger: Trigger) -> Iterable[str]:
        """Contacts in the trigger's list, group or tag."""
        with self._lock:
            if trigger.value is None:
                ids = set().union(*(v for (t, _), v in self._members.items() if t is trigger.type))
            else:
                ids = set(self._members.get((trigger.type, trigger.value.casefold()), ()))
        return sorted(ids)


class RecordingEvents(EventSink):
    """Keeps every published event, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def publish(self, events: Seq[Event]) -> None:
        """Append ``events``."""
        with self._lock:
            self.events.extend(events)

    def names(self) -> list[str]:
        """The wire names of the events so far."""
        return [e.wire_name for e in self.events]

    def of(self, kind: type) -> list[Event]:
        """The events of one class."""
        return [e for e in self.events if isinstance(e, kind)]


class DailyCap(RateLimiter):
    """At most ``limit`` sends per UTC day (a warm-up plan in its simplest form)."""

    def __init__(self, limit: int) -> None:
        check_count(limit, "limit")
        self.limit = limit
        self._day: object = None
        self._used = 0
        self._lock = threading.Lock()

    def _roll(self, now: datetime) -> None:
        day = to_utc(now).date()
        if day != self._day:
            self._day, self._used = day, 0

    def available(self, now: datetime) -> int | None:
        """Sends left today."""
        with self._lock:
            self._roll(now)
            return self.limit - self._used

    def consume(self, count: int, now: datetime) -> int:
        """Grant up to ``count`` of today's remaining sends."""
        with self._lock:
            self._roll(now)
            granted = max(0, min(count, self.limit - self._used))
            self._used += granted
            return granted

    def next_opening(self, now: datetime) -> datetime | None:
        """Midnight UTC after ``now`` when today's cap is used up."""
        with self._lock:
            self._roll(now)
            if self._used < self.limit:
                return None
        utc = to_utc(now)
        return datetime(utc.year, utc.month, utc.day, tzinfo=UTC) + timedelta(days=1)
