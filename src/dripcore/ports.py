"""The ports a host application implements, and the records that cross them.

dripcore's engine talks to the outside world only through these small abstract
classes. Their docstrings are the contract; the storage contract kit in
:mod:`dripcore.testing` checks a :class:`Store` against it.

- :class:`Store` keeps sequences, enrollments, the outbox and counters. It is
  batch-oriented: claim a batch of due enrollments under a lease, commit a
  batch of :class:`Change` atomically.
- :class:`Clock` says what time it is (and waits).
- :class:`MailSender` hands an :class:`Email` to a mail service.
- :class:`ContactDirectory` knows contacts and their suppression.
- :class:`EventSink` receives lifecycle events (for webhooks).
- :class:`RateLimiter` caps sends (daily limits, domain warm-up).
- :class:`Renderer` turns a step into subject and bodies for one contact.
- :class:`TemplateStore` holds the content that ``template_id`` steps point at.

Ports depend on the model only; adapters depend on ports and model, never on
the engine.
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import attrs

from .model import (
    UTC,
    Contact,
    Enrollment,
    EnrollmentStatus,
    Event,
    ExitReason,
    SenderIdentity,
    Sequence,
    SequenceStatus,
    Step,
    Trigger,
    to_utc,
)

__all__ = [
    "BrokenRecord",
    "Change",
    "Clock",
    "ContactDirectory",
    "Counter",
    "CounterName",
    "Delivery",
    "Email",
    "EnrollmentOrder",
    "EventSink",
    "MailSender",
    "OutboxMessage",
    "OutboxStatus",
    "RateLimiter",
    "Rendered",
    "Renderer",
    "SequenceStats",
    "SequenceSummary",
    "StepStats",
    "Store",
    "SystemClock",
    "Template",
    "TemplateStore",
    "idempotency_key",
]


def idempotency_key(enrollment_id: str, position: int) -> str:
    """The key that makes a step's email unique: ``"{enrollment_id}:{position}"``."""
    return f"{enrollment_id}:{position}"


# --------------------------------------------------------------------------- records


def _readonly_str(value: Mapping[str, str]) -> Mapping[str, str]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


def _readonly_int(value: Mapping[str, int]) -> Mapping[str, int]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


def _created_at(value: datetime) -> datetime:
    if value.__class__ is datetime and value.tzinfo is UTC:
        return value
    return to_utc(value, "outbox.created_at")


Counter = tuple[str, int, str, int]
"""A counter increment: ``(sequence_id, position, name, delta)``; position 0 is the sequence itself.

Stores keep counters so statistics never scan enrollments. The engine decides
every increment; a store only adds them up, atomically with the write they
belong to. Names are plain strings from :class:`CounterName` (``"recipients"``,
``"status:active"``, ``"exited:bounced"``, ``"sent"``, ``"skipped:inactive"`` ...).
"""


class CounterName(enum.Enum):
    """The names of the counters: one vocabulary, written by the engine and read by
    :meth:`SequenceStats.from_counters`.

    A member's value is the stored name (stores persist it: it never changes). The
    members STATUS, EXITED and SKIPPED name a family, one counter per key:
    ``CounterName.STATUS.of(EnrollmentStatus.ACTIVE)`` is ``"status:active"``.
    Sequence-level counters (position 0): RECIPIENTS, STATUS, EXITED (by
    :class:`~dripcore.model.ExitReason`) and REPLAN_PENDING (an edit's replan under
    way); the others count per step (SKIPPED by :class:`~dripcore.model.SkipReason`;
    DEFERRED: a step's send held back by the rate limiter, once per time it was held).

    >>> CounterName.STATUS.of(EnrollmentStatus.ACTIVE)
    'status:active'
    >>> CounterName.EXITED.key_in("exited:bounced")
    'bounced'
    """

    RECIPIENTS = "recipients"
    """Contacts enrolled into the sequence, ever (position 0)."""
    SENT = "sent"
    """A step's emails committed for sending."""
    DELIVERED = "delivered"
    """A step's emails the mail sender accepted."""
    FAILED = "failed"
    """A step's emails given up on."""
    BOUNCED = "bounced"
    """A step's emails given up on because the address bounced."""
    COMPLAINED = "complained"
    """A step's emails given up on because the contact complained."""
    OPENED = "opened"
    """Enrollments that opened a step's email (once each)."""
    CLICKED = "clicked"
    """Enrollments that clicked a link in a step's email (once each, whatever the links)."""
    REPLAN_PENDING = "replan:pending"
    """Above 0 while an edit's replan of the live enrollments is under way (position 0)."""
    STATUS = "status"
    """A family: enrollments in each :class:`~dripcore.model.EnrollmentStatus` now (position 0)."""
    EXITED = "exited"
    """A family: enrollments that exited, by :class:`~dripcore.model.ExitReason` (position 0)."""
    SKIPPED = "skipped"
    """A family: times a step was passed over, by :class:`~dripcore.model.SkipReason`."""
    DEFERRED = "deferred"
    """Times a step's send was held back by the rate limiter."""

    def of(self, key: enum.Enum | str) -> str:
        """The stored name of this family's counter for ``key`` (an enum member or its value)."""
        value = key.value if isinstance(key, enum.Enum) else key
        return f"{self.value}:{value}"

    def key_in(self, name: str) -> str | None:
        """The key of a stored ``name`` of this family, or None if ``name`` is not one of it."""
        prefix = f"{self.value}:"
        return name[len(prefix) :] if name.startswith(prefix) else None


@attrs.frozen(kw_only=True)
class Email:
    """A rendered email, ready for a :class:`MailSender`.

    ``idempotency_key`` is the same every time this step is attempted for
    this enrollment: a sender that remembers keys never sends twice.
    """

    idempotency_key: str
    enrollment_id: str
    """The enrollment whose step this is."""
    sequence_id: str
    """The enrollment's sequence."""
    contact_id: str
    """The contact it goes to."""
    position: int
    """The step's position."""
    to: str
    """The recipient's address (the contact's email)."""
    subject: str
    """The rendered subject, one line."""
    html: str | None = None
    """The rendered HTML body, or None."""
    text: str | None = None
    """The rendered plain-text body, or None."""
    sender: SenderIdentity | None = None
    """Who it comes from (the step's sender, else the sequence's); None: the mail sender's own."""
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_readonly_str, hash=False)
    """Extra headers to send, such as ``List-Unsubscribe`` (read-only)."""


class OutboxStatus(enum.Enum):
    """Where an outbox message is: waiting (or retrying), delivered, or given up on."""

    PENDING = "pending"
    """Waiting for its first attempt or a retry."""
    DELIVERED = "delivered"
    """Accepted by the mail sender; final."""
    FAILED = "failed"
    """Given up on (or never rendered); final unless an operator resends it."""


class EnrollmentOrder(enum.Enum):
    """How :meth:`Store.find_enrollments` orders what it finds.

    ``ID``: by id (the default; ``after`` pages through it by keyset).
    ``NEXT_DUE``: by next due time, soonest first, enrollments with none
    (completed, exited) last, equal times by id.
    """

    ID = "id"
    NEXT_DUE = "next_due"


@attrs.frozen(kw_only=True)
class OutboxMessage:
    """One email a committed step owes a contact, and its delivery state.

    Written in the same transaction as the enrollment state that sent it, so
    a crash leaves either neither or both. ``email`` is None when rendering
    failed (the message is then FAILED with ``last_error``).
    """

    key: str
    """Its unique key: the email's idempotency key."""
    enrollment_id: str
    """The enrollment whose step it is."""
    sequence_id: str
    """The enrollment's sequence."""
    contact_id: str
    """The contact it goes to."""
    position: int
    """The step's position."""
    email: Email | None
    status: OutboxStatus = OutboxStatus.PENDING
    """Where it is: PENDING, DELIVERED or FAILED."""
    created_at: datetime = attrs.field(converter=_created_at)
    """When the step was committed (UTC)."""
    next_attempt_at: datetime | None = None
    """When its next attempt is due, while PENDING; None once settled."""
    attempts: int = 0
    """Delivery attempts recorded so far."""
    last_error: str | None = None
    """The last attempt's error, or None."""
    settled_at: datetime | None = None
    """When it became DELIVERED or FAILED; None while PENDING."""
    provider_id: str | None = None
    """The id the mail sender returned for it, if any."""


@attrs.frozen(kw_only=True)
class Delivery:
    """The outcome of one delivery attempt, for :meth:`Store.settle`.

    ``status`` PENDING means "retry at ``next_attempt_at``".
    """

    key: str
    """The outbox message's key."""
    status: OutboxStatus
    at: datetime
    """When the attempt ended."""
    next_attempt_at: datetime | None = None
    """When to try again, for a PENDING outcome."""
    error: str | None = None
    """What went wrong, or None."""
    provider_id: str | None = None
    """The id the mail sender returned, if any."""
    counters: tuple[Counter, ...] = ()
    """Counter increments applied with it (delivered, failed, bounced...)."""


@attrs.frozen(kw_only=True)
class Change:
    """One enrollment's new state, committed with its outbox messages and counters.

    ``enrollment.version`` must be the version that was read: the store
    applies the change only if the stored row still has that version, then
    stores ``version + 1``. ``events`` travel with the change so a store may
    keep them; the engine publishes them after the commit.
    """

    enrollment: Enrollment
    """The enrollment's new state, with the version that was read."""
    outbox: tuple[OutboxMessage, ...] = ()
    """The outbox messages it writes."""
    events: tuple[Event, ...] = ()
    counters: tuple[Counter, ...] = ()
    """The counter increments applied with it."""


@attrs.frozen(kw_only=True)
class BrokenRecord:
    """A stored enrollment that could not be read (corrupt data, an unknown enum value)."""

    id: str
    """The id of the enrollment that could not be read."""
    error: str
    """Why it could not be read."""


@attrs.frozen(kw_only=True)
class StepStats:
    """Per-step counters of a sequence.

    ``sent``: emails dripcore committed for sending; ``delivered``: accepted by
    the mail sender; ``failed``: given up on (``bounced`` counts the hard
    bounces among them); ``opened``/``clicked``: unique per enrollment;
    ``skipped``: by reason (inactive, condition, outside window, expired,
    frequency cap, suppressed, cancelled); ``deferred``: times the step's send
    was held back by the rate limiter (a domain's warm-up limit, a daily cap) and
    put off to when it reopens, so one send held over two days counts 2.
    """

    position: int
    """The step's position."""
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    bounced: int = 0
    """Hard bounces among the failed."""
    opened: int = 0
    clicked: int = 0
    skipped: Mapping[str, int] = attrs.field(factory=dict, converter=_readonly_int, hash=False)
    deferred: int = 0


@attrs.frozen(kw_only=True)
class SequenceStats:
    """Sequence-level figures: who came in, where they are, how they left."""

    sequence_id: str
    """The sequence."""
    recipients: int = 0
    """Contacts enrolled, ever."""
    active: int = 0
    """Enrollments ACTIVE now (counted as paused while the sequence is paused)."""
    paused: int = 0
    """Enrollments PAUSED now."""
    completed: int = 0
    """Enrollments that completed."""
    exited: int = 0
    """Enrollments that exited early."""
    exited_by_reason: Mapping[str, int] = attrs.field(factory=dict, converter=_readonly_int, hash=False)
    """The exited ones by :class:`~dripcore.model.ExitReason` value (non-zero counts only)."""
    steps: tuple[StepStats, ...] = ()
    """The figures of each step that has any counter, by position."""

    @property
    def completion_rate(self) -> float:
        """Completed over recipients (0.0 with no recipients)."""
        return self.completed / self.recipients if self.recipients else 0.0

    @property
    def delivered(self) -> int:
        """Emails of every step accepted by the mail sender."""
        return sum(step.delivered for step in self.steps)

    @property
    def open_rate(self) -> float:
        """Unique opens over delivered emails, all steps together (0.0 when nothing was delivered)."""
        delivered = self.delivered
        return sum(step.opened for step in self.steps) / delivered if delivered else 0.0

    @property
    def click_rate(self) -> float:
        """Unique clicks over delivered emails, all steps together."""
        delivered = self.delivered
        return sum(step.clicked for step in self.steps) / delivered if delivered else 0.0

    @classmethod
    def from_counters(cls, sequence_id: str, counters: Mapping[tuple[int, str], int]) -> SequenceStats:
        """Build the figures from a store's raw counters ``{(position, name): value}``
        (names from :class:`CounterName`)."""
        seq_level = {name: value for (position, name), value in counters.items() if position == 0}
        by_step: dict[int, dict[str, int]] = {}
        for (position, name), value in counters.items():
            if position:
                by_step.setdefault(position, {})[name] = value
        steps = tuple(
            StepStats(
                position=position,
                sent=names.get(_SENT, 0),
                delivered=names.get(_DELIVERED, 0),
                failed=names.get(_FAILED, 0),
                bounced=names.get(_BOUNCED, 0),
                opened=names.get(_OPENED, 0),
                clicked=names.get(_CLICKED, 0),
                skipped=_family(CounterName.SKIPPED, names),
                deferred=names.get(_DEFERRED, 0),
            )
            for position, names in sorted(by_step.items())
        )
        return cls(
            sequence_id=sequence_id,
            recipients=seq_level.get(CounterName.RECIPIENTS.value, 0),
            active=seq_level.get(CounterName.STATUS.of(EnrollmentStatus.ACTIVE), 0),
            paused=seq_level.get(CounterName.STATUS.of(EnrollmentStatus.PAUSED), 0),
            completed=seq_level.get(CounterName.STATUS.of(EnrollmentStatus.COMPLETED), 0),
            exited=seq_level.get(CounterName.STATUS.of(EnrollmentStatus.EXITED), 0),
            exited_by_reason=_family(CounterName.EXITED, seq_level),
            steps=steps,
        )


_SENT, _DELIVERED, _FAILED = CounterName.SENT.value, CounterName.DELIVERED.value, CounterName.FAILED.value
_BOUNCED, _OPENED, _CLICKED = CounterName.BOUNCED.value, CounterName.OPENED.value, CounterName.CLICKED.value
_DEFERRED = CounterName.DEFERRED.value


def _family(family: CounterName, names: Mapping[str, int]) -> dict[str, int]:
    """The non-zero counters of one family among ``names``, by key."""
    found: dict[str, int] = {}
    for name, value in names.items():
        key = family.key_in(name)
        if key is not None and value:
            found[key] = value
    return found


@attrs.frozen(kw_only=True)
class SequenceSummary:
    """One row of the sequences overview: what it is and how many are in it.

    ``created_at`` and ``updated_at`` are the sequence's (None when it was stored
    before dripcore kept them).
    """

    id: str
    """The sequence's id."""
    name: str
    """The sequence's name."""
    status: SequenceStatus
    """The sequence's status."""
    trigger: Trigger
    """What enrolls contacts into it."""
    steps: int
    """How many steps it has."""
    active_steps: int
    """How many of them are active."""
    active_enrollments: int
    """Enrollments ACTIVE now (none while it is paused)."""
    paused_enrollments: int
    """Enrollments PAUSED now (all its live ones while it is paused)."""
    recipients: int
    """Contacts enrolled, ever."""
    created_at: datetime | None = None
    updated_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Rendered:
    """A step's content rendered for one contact."""

    subject: str
    """The subject, one line."""
    html: str | None = None
    """The HTML body, or None."""
    text: str | None = None
    """The plain-text body, or None."""
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_readonly_str, hash=False)
    """Headers to send with it (``List-Unsubscribe``), read-only."""


# --------------------------------------------------------------------------- ports


class Clock(ABC):
    """What time it is. The engine never calls ``datetime.now`` itself."""

    @abstractmethod
    def now(self) -> datetime:
        """The current instant, timezone-aware."""

    def wait(self, seconds: float, wake: threading.Event) -> None:
        """Block for up to ``seconds``, returning early when ``wake`` is set."""
        wake.wait(max(0.0, seconds))


class SystemClock(Clock):
    """The real clock, in UTC."""

    def now(self) -> datetime:
        """The current instant in UTC."""
        return datetime.now(UTC)


class MailSender(ABC):
    """Hands an :class:`Email` to a mail service.

    Must raise :class:`~dripcore.errors.TransientSendError` for a failure that
    may pass (the engine retries with backoff),
    :class:`~dripcore.errors.SenderUnavailable` (a kind of transient failure)
    when the sender as a whole can't send (credentials refused, misconfigured,
    service down: the engine pauses all sending rather than charging each
    message an attempt), and :class:`~dripcore.errors.PermanentSendError` for a
    failure of this message that will not pass (with ``reason="bounced"`` or
    ``"complained"`` the contact is suppressed). A sender should honour
    ``email.idempotency_key``: after a crash the same key may be offered again,
    and it must not be sent twice.
    """

    #: How many :meth:`send` calls this sender takes at once, from as many threads (it must
    #: then be thread-safe). The engine keeps at most this many in flight (and at most
    #: ``Drip(concurrency=...)``); 1, the default, means calls one at a time from one thread.
    max_in_flight: int = 1

    #: True when the sender (or the service behind it) drops a second send of an
    #: idempotency key it already accepted. The engine may then record outcomes in larger
    #: groups, since a message offered again after a crash is not sent twice; otherwise it
    #: records each outcome before more than ``max_in_flight`` sends are outstanding, so a
    #: crash repeats at most the messages in flight.
    honours_idempotency_keys: bool = False

    #: False for a test double that delivers nothing to anyone (the fakes in
    #: :mod:`dripcore.testing`). A :class:`~dripcore.engine.Drip` whose sender sends real
    #: mail refuses the placeholder unsubscribe link, so no customer gets a dead one.
    sends_real_mail: bool = True

    @abstractmethod
    def send(self, email: Email) -> str | None:
        """Send ``email``; return the provider's message id, if any."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release connections; called when a worker stops."""


class ContactDirectory(ABC):
    """The host's contacts, as dripcore needs to see them."""

    @abstractmethod
    def get(self, contact_id: str) -> Contact | None:
        """The contact with that id, or None."""

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        """Contacts by id; unknown ids are left out. Override to batch the look-up."""
        found: dict[str, Contact] = {}
        for contact_id in contact_ids:
            contact = self.get(contact_id)
            if contact is not None:
                found[contact_id] = contact
        return found

    @abstractmethod
    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        """Record that the contact must not be mailed again (unsubscribed, bounced, complained)."""

    def anniversaries(self, field: str, month: int, day: int) -> Iterable[Contact]:
        """Contacts whose ``field`` (``"birthday"`` or ``"created"``) falls on that month and day."""
        return ()

    def members(self, trigger: Trigger) -> Iterable[str]:
        """Ids of the contacts currently in the trigger's list, group or tag (for ``enroll_existing``)."""
        return ()


class EventSink(ABC):
    """Receives lifecycle events after they are committed (webhooks, analytics)."""

    @abstractmethod
    def publish(self, events: Seq[Event]) -> None:
        """Handle ``events``, in order. Exceptions are reported, never fatal to a tick."""


class RateLimiter(ABC):
    """Caps how many emails may go (a daily limit, a domain warm-up plan).

    A limiter keeps one budget for every send, unless it sets ``keyed`` (as
    :class:`~dripcore.warmup.WarmupLimiter` does): the tick then groups a batch's
    sends by their key, the domain of the sender address (lower case; ``""`` for
    an email with no sender identity, which goes from the mail sender's own
    address), and asks :meth:`consume_for` and :meth:`next_opening_for` per key.
    """

    #: True when the limiter keeps a budget per key (per sending domain).
    keyed: bool = False

    @abstractmethod
    def available(self, now: datetime) -> int | None:
        """How many sends may go now; None for no limit."""

    @abstractmethod
    def consume(self, count: int, now: datetime) -> int:
        """Reserve up to ``count`` sends; return how many were granted."""

    def next_opening(self, now: datetime) -> datetime | None:
        """When capacity comes back, if it is exhausted now."""
        return None

    def consume_for(self, key: str, count: int, now: datetime) -> int:
        """Reserve up to ``count`` sends from ``key``'s budget; return how many were granted.

        By default every key shares the one budget of :meth:`consume`."""
        return self.consume(count, now)

    def next_opening_for(self, key: str, now: datetime) -> datetime | None:
        """When ``key``'s capacity comes back, if it is exhausted now (by default :meth:`next_opening`)."""
        return self.next_opening(now)


class Renderer(ABC):
    """Turns a step into a subject and bodies for one contact."""

    @abstractmethod
    def render(self, step: Step, *, sequence: Sequence, contact: Contact, enrollment: Enrollment) -> Rendered:
        """Render ``step``; raise :class:`~dripcore.errors.DripcoreError` naming the step on failure."""


class Store(ABC):
    """Durable state: sequences, enrollments, the outbox and counters.

    Contract (checked by :class:`dripcore.testing.StoreContract`):

    - Every write method is atomic: it applies completely or not at all.
    - Enrollments carry a ``version``; a write based on a stale version is
      refused (:meth:`commit` reports it, other methods raise
      :class:`~dripcore.errors.ConcurrencyConflict`).
    - :meth:`claim_due` leases enrollments to one ``owner`` until the lease
      expires; no other owner can claim a leased enrollment meanwhile.
    - Outbox messages are unique by key: adding one again changes nothing.
    - Times are stored as UTC instants and come back equal.
    - A stored row that can't be read never stops the others: :meth:`claim_due`
      returns it as a :class:`BrokenRecord`; single look-ups (``get_*``) raise an
      :class:`~dripcore.errors.UnreadableRecord` naming it; listings
      (:meth:`find_enrollments`, :meth:`list_sequences`, :meth:`claim_messages`)
      leave it out and log it.
    - A write holding records the store can't encode (text it can't hold, a
      number out of its range) applies nothing and raises
      :class:`~dripcore.errors.RecordRejected` naming them, so the engine sets
      those aside and writes the others.
    - The store itself failing (down, full, locked, read-only) raises another
      :class:`~dripcore.errors.StoreError`: the engine takes that for an outage
      and tries the whole tick again later. (Other exceptions are narrowed down
      to the records that cause them, and taken for an outage when the first few
      records all fail.)
    """

    #: Optional capabilities the contract kit checks (or visibly skips): ``"multiprocess"``
    #: (several processes may share the store), ``"frequency_cap"`` (:meth:`count_messages`
    #: works, as frequency caps need) and ``"retention"`` (:meth:`prune_messages` works).
    capabilities: frozenset[str] = frozenset()

    # -- sequences

    @abstractmethod
    def get_sequence(self, sequence_id: str) -> Sequence | None:
        """The sequence, or None."""

    @abstractmethod
    def list_sequences(self, status: SequenceStatus | None = None) -> list[Sequence]:
        """All sequences (of one status), ordered by id."""

    @abstractmethod
    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        """Insert or replace a sequence.

        ``expected_version=None`` inserts and raises ConcurrencyConflict if the
        id exists; otherwise the stored version must equal ``expected_version``.
        """

    def resume_sequence(self, sequence: Sequence, *, expected_version: int, shift: timedelta) -> int:
        """Save ``sequence`` (resumed: ACTIVE) at ``expected_version`` and move the next due
        time of each of its ACTIVE enrollments ``shift`` later (bumping their versions), and
        the next attempt of each of their PENDING outbox messages (the retries the pause
        held) as well, in one transaction; return how many enrollments moved.

        This is the EXTEND resume policy applied all or nothing, so a resume that fails
        can be called again without shifting anyone twice. Raises
        :class:`~dripcore.errors.ConcurrencyConflict` (and changes nothing) as
        :meth:`save_sequence` does. Optional: a store without it raises
        ``NotImplementedError`` and the engine shifts enrollments page by page instead
        (which a failure half-way leaves half done).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement resume_sequence")

    @abstractmethod
    def delete_sequence(self, sequence_id: str) -> None:
        """Delete a sequence and its finished enrollments.

        Raises :class:`~dripcore.errors.SequenceStateError` (and deletes
        nothing) if it still has ACTIVE or PAUSED enrollments;
        :class:`~dripcore.errors.SequenceNotFound` if there is no such sequence.
        """

    # -- enrollments

    @abstractmethod
    def add_enrollment(
        self, enrollment: Enrollment, *, allow_reentry: bool, counters: Seq[Counter] = ()
    ) -> tuple[Enrollment, bool]:
        """Insert ``enrollment`` unless the contact is already in the sequence for that key.

        If an ACTIVE or PAUSED enrollment exists for the same
        ``(sequence_id, contact_id, key)``, return ``(it, False)``. Otherwise, if a
        finished one exists and ``allow_reentry`` is false, return ``(the most
        recent finished one, False)``. Otherwise insert and return
        ``(enrollment, True)``, applying ``counters``. Atomic: two concurrent
        calls for the same triple create one enrollment.
        """

    def add_enrollment_batch(
        self,
        enrollments: Seq[Enrollment],
        *,
        allow_reentry: bool,
        counters: Callable[[Enrollment], Iterable[Counter]] | None = None,
    ) -> list[tuple[Enrollment, bool]]:
        """:meth:`add_enrollment` for each of ``enrollments`` (a list), in order: one
        ``(enrollment, created)`` per item, exactly as calling it for each in turn would give.

        So two items with the same ``(sequence_id, contact_id, key)`` create one
        enrollment: the first; the later one gets it back with ``created=False``.
        ``counters(enrollment)`` gives the increments of each created one. Atomic
        like every write: an id that already exists raises
        :class:`~dripcore.errors.ConcurrencyConflict` and adds nothing; and a
        concurrent add for the same identity (single or batched) creates one
        enrollment in all. The stores shipped with dripcore do it in one
        transaction, many times faster than a loop; this default loops over
        :meth:`add_enrollment`, so a third-party store keeps working, but is
        then neither atomic nor fast (override it).
        """
        results: list[tuple[Enrollment, bool]] = []
        for enrollment in enrollments:
            increments = () if counters is None else tuple(counters(enrollment))
            results.append(self.add_enrollment(enrollment, allow_reentry=allow_reentry, counters=increments))
        return results

    @abstractmethod
    def get_enrollment(self, enrollment_id: str) -> Enrollment | None:
        """The enrollment, or None."""

    @abstractmethod
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
        """Enrollments matching every given filter, ordered by id.

        ``after`` keeps only ids greater than it (keyset pagination, safe while
        the matching set changes); ``offset`` skips that many first.
        ``last_step_sent`` keeps the enrollments whose last sent step is at that
        position (0: none sent yet), the step each contact is on. ``order``
        (an :class:`EnrollmentOrder` or its value) orders by next due time
        instead: soonest first, enrollments with none last, ties by id; ``after``
        still filters by id, so page that order with ``offset``. A negative
        position or an unknown order raises
        :class:`~dripcore.errors.InvalidArgument` naming it. (The engine passes
        these two only when its caller asks for them, so a store written before
        them keeps listing by id.)
        """

    @abstractmethod
    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Enrollment | BrokenRecord]:
        """Lease up to ``limit`` ACTIVE enrollments due at ``now`` (earliest first) to ``owner``.

        Only enrollments of ACTIVE sequences are claimed. Skips enrollments under
        an unexpired lease, and enrollments that still have a PENDING outbox
        message: a contact's next step waits until the previous email is
        delivered or given up on, so steps are delivered in order whatever the
        retries, crashes or number of workers. A stored
        enrollment that can't be read comes back as a :class:`BrokenRecord`,
        leased like the others so the caller can set it aside.
        """

    @abstractmethod
    def release(self, enrollment_ids: Iterable[str], *, owner: str, until: datetime | None = None) -> None:
        """End ``owner``'s leases; with ``until``, keep them until then (set aside, deferred)."""

    @abstractmethod
    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        """Apply ``changes`` in one transaction; return the ids refused for a stale version.

        For each change whose stored version matches, store the new state with
        ``version + 1``, clear its lease, add its outbox messages (ignoring keys
        already present) and apply its counters. Outbox messages added with
        ``owner`` are leased to it (for the lease the claim had) so the owner can
        deliver them at once. Nothing of a refused change is applied.
        """

    @abstractmethod
    def next_due_at(self) -> datetime | None:
        """The earliest instant at which :meth:`claim_due` could return an enrollment:
        its due time, or its lease's end if that is later. Enrollments waiting for a
        PENDING message are left out (:meth:`next_message_at` covers them)."""

    @abstractmethod
    def count_due(self, now: datetime) -> int:
        """How many ACTIVE enrollments of ACTIVE sequences are due at ``now``.

        Leases and pending messages are not considered, so this is an upper
        bound of what :meth:`claim_due` would return (the engine reports it
        as deferred work when a rate limit holds a tick short).
        """

    # -- outbox

    @abstractmethod
    def claim_messages(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[OutboxMessage]:
        """Lease up to ``limit`` PENDING messages whose next attempt is due, oldest first, to ``owner``.

        A pause holds a message: one whose enrollment is PAUSED, or ACTIVE in a sequence
        that is not ACTIVE, is not claimed until both are active again. Messages of
        COMPLETED, EXITED or deleted enrollments are claimed whatever the sequence's status
        (the engine drops an exited enrollment's message unsent).
        """

    @abstractmethod
    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        """Record delivery outcomes in one transaction: each counts one attempt, clears
        the lease, and applies its counters. A message already DELIVERED or FAILED
        is left as it is (settling twice counts once)."""

    def requeue_message(self, message: OutboxMessage) -> bool:
        """Put a FAILED message back in the outbox as ``message`` (PENDING, same key, a fresh
        email and attempt count), for an operator resending a step that failed; True if it
        replaced a FAILED one, False (and nothing changed) otherwise. Atomic. Optional: a
        store without it raises ``NotImplementedError`` (then :meth:`Drip.resend
        <dripcore.engine.Drip.resend>` can't be used on it).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement requeue_message")

    @abstractmethod
    def get_message(self, key: str) -> OutboxMessage | None:
        """The outbox message with that key, or None."""

    @abstractmethod
    def find_messages(
        self, *, status: OutboxStatus | None = None, enrollment_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[OutboxMessage]:
        """Outbox messages matching the filters, ordered by ``(created_at, key)``."""

    def count_messages(self, contact_id: str, since: datetime, until: datetime) -> int:
        """How many emails were queued for the contact (PENDING or DELIVERED outbox
        messages) with ``since <= created_at < until``. Used by frequency caps;
        stores that declare the ``"frequency_cap"`` capability implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not support frequency caps (count_messages)")

    @abstractmethod
    def next_message_at(self) -> datetime | None:
        """The earliest instant at which :meth:`claim_messages` could return a message: the next
        attempt of a PENDING message that no pause holds, or its lease's end if that is later."""

    # -- counters

    @abstractmethod
    def bump(self, counters: Seq[Counter]) -> None:
        """Apply counter increments outside a commit (engagement, for example)."""

    @abstractmethod
    def counters(self, sequence_id: str) -> Mapping[tuple[int, str], int]:
        """Every counter of a sequence, ``{(position, name): value}``; cost independent of enrollments."""

    def prune_messages(self, settled_before: datetime, *, batch_size: int = 10_000) -> int:
        """Delete DELIVERED and FAILED outbox messages settled before ``settled_before``
        and return how many; PENDING ones are never touched. The outbox grows by
        one row per email, so run this from a periodic job with your retention
        (for instance 90 days, longer than any late open or click you want to
        record: engagement for a pruned message is refused). Stores that do not
        implement it raise NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement prune_messages")

    def wait_for_work(self, timeout: float, wake: threading.Event | None = None) -> bool:
        """Block up to ``timeout`` seconds, returning early (True) when work may be
        due, or when ``wake`` is set; False when the timeout passed.

        The default just waits on ``wake``. A store that can hear other
        processes' writes overrides it (PostgreSQL's ``LISTEN``; SQLite polls
        ``PRAGMA data_version``), so an idle worker wakes when another process
        enrolls someone. A wake-up may be spurious (a write that is not work);
        the caller then just finds nothing due. One thread per store should wait
        at a time. Used by :meth:`Drip.run <dripcore.engine.Drip.run>` with the
        system clock.
        """
        if wake is None:
            time.sleep(max(0.0, timeout))
            return False
        return wake.wait(max(0.0, timeout))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- templates by id


@attrs.frozen(kw_only=True)
class Template:
    """Stored email content a step can point at with ``template_id``; any field may be missing."""

    subject: str | None = None
    """The subject, a Liquid template, or None."""
    html: str | None = None
    """The HTML body, a Liquid template, or None."""
    text: str | None = None
    """The plain-text body, a Liquid template, or None."""


class TemplateStore(ABC):
    """Where ``template_id`` steps find their content.

    ``get`` returns the template or None when there is none with that id. It
    is called once per rendering, so a store backed by a database should
    cache; the renderer caches compiled templates by content, so an edited
    template takes effect at once.
    """

    @abstractmethod
    def get(self, template_id: str) -> Template | None:
        """The template with that id, or None."""
