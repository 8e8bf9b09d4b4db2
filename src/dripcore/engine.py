"""The imperative shell: :class:`Drip` wires the ports to the pure core.

Everything that touches the outside world happens here, and only here: reading
the clock, loading and committing through the :class:`~dripcore.ports.Store`,
handing emails to the :class:`~dripcore.ports.MailSender`, publishing events.
The decisions themselves are made by :mod:`dripcore.scheduler`.

Delivery: never lost, never doubled
-----------------------------------

:meth:`Drip.tick` claims due enrollments under a lease, runs
:func:`~dripcore.scheduler.advance` on each, and commits the new states
together with one outbox message per send, in one transaction. It then hands
each message to the sender with the idempotency key
``"{enrollment_id}:{position}"`` and records the outcome. A crash at any point
leaves either the old state, or the new state plus its pending message, which
the next tick (of any worker) delivers once the lease has expired. A sender
that honours the key therefore never sends twice, and nothing is lost.

A transient failure is retried with exponential backoff; a permanent one
becomes ``StepFailed`` and, for a bounce or complaint, suppresses the contact
and exits all their enrollments. One bad row or one bad template is reported
and set aside; it never stops the tick for the others.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as Seq
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import date, datetime, timedelta, tzinfo
from datetime import time as dtime
from typing import Any

import attrs

from . import scheduler
from ._checks import (
    MAX_COUNT,
    check_count,
    check_day,
    check_flag,
    check_id,
    check_opt_enum,
    check_opt_id,
    check_span,
)
from .errors import (
    ConcurrencyConflict,
    ContactNotFound,
    DripcoreError,
    EnrollmentConflict,
    EnrollmentNotFound,
    InvalidArgument,
    InvalidEngagement,
    InvalidTransition,
    InvalidTriggerEvent,
    PermanentSendError,
    RecordRejected,
    SenderUnavailable,
    SequenceNotFound,
    SequenceStateError,
    StoreError,
    TransientSendError,
    UnreadableRecord,
    ValidationError,
)
from .model import (
    UTC,
    Contact,
    Enrollment,
    EnrollmentStatus,
    Event,
    ExitReason,
    PausePolicy,
    ReentryPolicy,
    Sequence,
    SequenceStatus,
    SkipReason,
    Step,
    StepFailed,
    StepSent,
    StepSkipped,
    TriggerEvent,
    TriggerType,
    check_text,
    to_utc,
)
from .ports import (
    BrokenRecord,
    Change,
    Clock,
    ContactDirectory,
    Counter,
    Delivery,
    Email,
    EventSink,
    MailSender,
    OutboxMessage,
    OutboxStatus,
    RateLimiter,
    Renderer,
    SequenceStats,
    SequenceSummary,
    Store,
    SystemClock,
    idempotency_key,
)
from .render import LiquidRenderer

__all__ = ["CapAction", "Drip", "FrequencyCap", "TickError", "TickReport", "new_id"]

log = logging.getLogger("dripcore")

_LIVE = (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)
_PAGE = 500
# Look-ups (or commits) failing in a row, with none succeeding, that make a port "down" rather
# than a record "bad": the tick then raises, and run() tries again later.
_DOWN_AFTER = 3
# A sequence-level counter set while an edit's replan is under way (see Drip.save_sequence).
_REPLAN_PENDING = "replan:pending"
_MAX_IDLE = 366 * 86_400  # seconds: a year (longer waits overflow the platform's timers)


# Errors of one record, not of the store: the record is set aside, the store is fine.
_RECORD_ERRORS = (UnreadableRecord, RecordRejected)
# Sender classes already warned about for returning a provider id that is not a str.
_WARNED_PROVIDER_TYPES: set[type] = set()


def _safe_text(text: str, limit: int = 2000) -> str:
    """``text`` as every store can hold it: NUL and lone surrogates escaped, at most ``limit`` characters."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _describe(exc: BaseException) -> str:
    """``"ErrorType: message"``, safe to store and to log."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # an exception whose __str__ raises
        text = f"{type(exc).__name__} (unprintable)"
    return _safe_text(text)


def new_id(prefix: str = "enr") -> str:
    """A new, time-sortable, unique id such as ``"enr_0193c9f1a2b3_5f2e8c1d9a7b"``."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}_{secrets.token_hex(6)}"


@attrs.frozen(kw_only=True)
class TickError:
    """Something one tick set aside instead of stopping: which record, and why."""

    kind: str
    id: str
    error: str


@attrs.frozen(kw_only=True)
class TickReport:
    """What one :meth:`Drip.tick` did.

    ``queued``: steps committed to the outbox; ``sent``: messages the sender
    accepted; ``deferred``: due sends held back by the rate limiter;
    ``retried``: transient failures scheduled for another attempt;
    ``failed``: messages given up on; ``held``: enrollments held because their
    step's email failed (see :meth:`Drip.release` and :meth:`Drip.resend`);
    ``conflicts``: enrollments changed by someone else mid-tick (picked up
    again next tick); ``circuit_open``: the sender failed for everyone and
    sending is paused for a while (nothing is claimed meanwhile).
    """

    claimed: int = 0
    queued: int = 0
    sent: int = 0
    skipped: int = 0
    completed: int = 0
    exited: int = 0
    deferred: int = 0
    retried: int = 0
    failed: int = 0
    held: int = 0
    conflicts: int = 0
    messages: int = 0
    errors: tuple[TickError, ...] = ()
    busy: bool = False
    circuit_open: bool = False

    def summary(self) -> str:
        """A one-line summary for logs and terminals."""
        parts = [
            f"claimed={self.claimed}",
            f"sent={self.sent}",
            f"skipped={self.skipped}",
            f"completed={self.completed}",
            f"exited={self.exited}",
            f"deferred={self.deferred}",
            f"retried={self.retried}",
            f"failed={self.failed}",
        ]
        if self.held:
            parts.append(f"held={self.held}")
        if self.conflicts:
            parts.append(f"conflicts={self.conflicts}")
        if self.circuit_open:
            parts.append("circuit=open")
        if self.errors:
            parts.append(f"errors={len(self.errors)}")
        return " ".join(parts)


class CapAction(enum.Enum):
    """What happens to a step that would go over a :class:`FrequencyCap`."""

    WAIT = "wait"
    SKIP = "skip"


@attrs.frozen(kw_only=True)
class FrequencyCap:
    """At most ``per_day`` sequence emails per contact per calendar day in the
    contact's zone, and/or at most ``per_window`` within any rolling ``window``.

    Counted across all sequences. A step over the cap waits (``over=WAIT``:
    until the next local midnight, or for a rolling window a fraction of it,
    then into the step's send window) or is skipped (``over=SKIP``:
    ``StepSkipped(reason="frequency cap")``).

    >>> from datetime import timedelta
    >>> FrequencyCap(per_day=2, per_window=3, window=timedelta(days=7))
    FrequencyCap(per_day=2, per_window=3, window=datetime.timedelta(days=7), over=<CapAction.WAIT: 'wait'>)
    """

    per_day: int | None = None
    per_window: int | None = None
    window: timedelta | None = None
    over: CapAction = CapAction.WAIT

    def __attrs_post_init__(self) -> None:
        for name in ("per_day", "per_window"):
            value = getattr(self, name)
            if value is not None and (value.__class__ is not int or value < 1):
                raise ValidationError(f"frequency_cap.{name}", value, "must be a positive integer")
        if (self.per_window is None) is not (self.window is None):
            raise ValidationError("frequency_cap.window", self.window, "per_window and window go together")
        if self.window is not None and (
            not isinstance(self.window, timedelta) or not timedelta(0) < self.window <= timedelta(days=3660)
        ):
            raise ValidationError("frequency_cap.window", self.window, "must be a timedelta of 0 to 3660 days")
        if self.per_day is None and self.per_window is None:
            raise ValidationError("frequency_cap", None, "give per_day and/or per_window")
        if not isinstance(self.over, CapAction):
            raise ValidationError("frequency_cap.over", self.over, "must be CapAction.WAIT or CapAction.SKIP")


@attrs.define
class _Tally:
    claimed: int = 0
    queued: int = 0
    sent: int = 0
    skipped: int = 0
    completed: int = 0
    exited: int = 0
    deferred: int = 0
    retried: int = 0
    failed: int = 0
    held: int = 0
    conflicts: int = 0
    messages: int = 0
    errors: list[TickError] = attrs.Factory(list)
    busy: bool = False
    circuit_open: bool = False

    def freeze(self) -> TickReport:
        return TickReport(**{**attrs.asdict(self, recurse=False), "errors": tuple(self.errors)})


def _status_counters(sequence_id: str, before: Enrollment | None, after: Enrollment) -> list[Counter]:
    """The sequence-level counter increments of a status change."""
    if before is not None and before.status is after.status:
        return []
    counters: list[Counter] = []
    if before is None:
        counters.append((sequence_id, 0, "recipients", 1))
    else:
        counters.append((sequence_id, 0, f"status:{before.status.value}", -1))
    counters.append((sequence_id, 0, f"status:{after.status.value}", 1))
    if after.status is EnrollmentStatus.EXITED and after.exit_reason is not None:
        counters.append((sequence_id, 0, f"exited:{after.exit_reason.value}", 1))
    return counters


def _event_counters(events: Iterable[Event]) -> list[Counter]:
    return [(e.sequence_id, e.position, f"skipped:{e.reason.value}", 1) for e in events if isinstance(e, StepSkipped)]


@attrs.frozen
class _Raised:
    """What a send raised, carried back from the thread that sent it."""

    exc: Exception


class _Breaker:
    """The circuit breaker in front of the sender.

    Closed, sends go. ``threshold`` failures in a row (transient ones, or errors the
    sender should not raise), or one :class:`~dripcore.errors.SenderUnavailable`, open
    it for a cooldown that starts at ``cooldown`` and doubles up to ``longest`` while it
    keeps failing. While open nothing is sent and nothing claimed. Once the cooldown
    has passed, sends go again; the first failure then reopens it, the first success
    closes it.
    """

    def __init__(self, *, threshold: int = 5, cooldown: timedelta = timedelta(seconds=30),
                 longest: timedelta = timedelta(minutes=10)) -> None:  # fmt: skip
        self.threshold = threshold
        self.first_cooldown = cooldown
        self.longest = longest
        self._lock = threading.Lock()
        self._failures = 0
        self._cooldown = cooldown
        self.open_until: datetime | None = None

    def is_open(self, now: datetime) -> bool:
        """Whether sending is held back at ``now``."""
        until = self.open_until
        return until is not None and now < until

    def succeeded(self) -> None:
        """A send reached the provider: close."""
        with self._lock:
            self._failures = 0
            self._cooldown = self.first_cooldown
            self.open_until = None

    def failed(self, now: datetime, *, whole: bool) -> bool:
        """A send failed (``whole``: the sender as a whole); True if that opened the breaker."""
        with self._lock:
            self._failures += 1
            if not whole and self._failures < self.threshold:
                return False
            if self.open_until is not None and now < self.open_until:
                return False  # already open: a send that was in flight when it opened
            self.open_until = now + self._cooldown
            self._cooldown = min(self._cooldown * 2, self.longest)
            self._failures = self.threshold - 1  # half-open after the cooldown: one failure reopens
            return True


class _Delivery:
    """One delivery run of a tick: the outcomes not yet recorded, and what they lead to."""

    def __init__(
        self,
        drip: Drip,
        contacts: Mapping[str, Contact],
        exited: Mapping[str, str],
        now: datetime,
        tally: _Tally,
        committed: Mapping[str, tuple[Enrollment, Sequence]],
    ) -> None:
        self.drip = drip
        self.contacts = contacts
        self.exited = exited
        self.now = now
        self.tally = tally
        self.committed = committed
        self.deliveries: list[Delivery] = []
        self.events: list[Event] = []
        self.delivered: list[str] = []  # enrollment ids of this tick's commits whose email went
        self.holds: dict[str, str] = {}  # enrollment id -> why its step failed
        self.suppressed_after: list[tuple[str, ExitReason]] = []

    def screen(self, message: OutboxMessage) -> bool:
        """Record (and return True for) a message that must not go: its enrollment exited, its
        contact is gone or suppressed."""
        now, where = self.now, (message.sequence_id, message.position)
        if message.enrollment_id in self.exited:
            self.deliveries.append(
                Delivery(key=message.key, status=OutboxStatus.FAILED, at=now,
                         error=f"enrollment exited ({self.exited[message.enrollment_id]}) before delivery",
                         counters=((*where, "skipped:cancelled", 1),))
            )  # fmt: skip
            self.tally.skipped += 1
            return True
        contact = self.contacts.get(message.contact_id)
        if contact is None or contact.suppressed is not None:
            why = "contact not found" if contact is None else f"contact suppressed ({contact.suppressed})"
            self.deliveries.append(
                Delivery(key=message.key, status=OutboxStatus.FAILED, at=now, error=why,
                         counters=((*where, "skipped:suppressed", 1),))
            )  # fmt: skip
            self.tally.skipped += 1
            return True
        return False

    def record(self, message: OutboxMessage, outcome: object) -> None:
        """Turn a send's outcome into a delivery to record (and events, a hold, a bounce)."""
        drip, now, tally = self.drip, self.now, self.tally
        if not isinstance(outcome, _Raised):
            drip._breaker.succeeded()
            provider_id: str | None = None
            if outcome is not None:
                if outcome.__class__ is str and outcome.isprintable():
                    provider_id = outcome
                else:
                    provider_id = drip._provider_id(outcome)
            self.deliveries.append(
                Delivery(key=message.key, status=OutboxStatus.DELIVERED, at=now, provider_id=provider_id,
                         counters=((message.sequence_id, message.position, "delivered", 1),))
            )  # fmt: skip
            if drip.events is not None:
                self.events.append(
                    StepSent(enrollment_id=message.enrollment_id, sequence_id=message.sequence_id,
                             contact_id=message.contact_id, at=now, position=message.position,
                             idempotency_key=message.key)
                )  # fmt: skip
            if message.enrollment_id in self.committed:
                self.delivered.append(message.enrollment_id)
            tally.sent += 1
            return
        exc = outcome.exc
        if isinstance(exc, PermanentSendError):
            drip._breaker.succeeded()  # the provider answered: the sender works
            self.fail(message, exc, exc.reason)
            if exc.reason in ("bounced", "complained"):
                self.suppressed_after.append((message.contact_id, ExitReason(exc.reason)))
            return
        whole = isinstance(exc, SenderUnavailable)
        if not isinstance(exc, TransientSendError):
            log.exception("sender raised on %s", message.key, exc_info=exc)
            tally.errors.append(TickError(kind="message", id=message.key, error=_describe(exc)))
        if drip._breaker.failed(now, whole=whole):
            log.warning("sending paused until %s: %s", drip._breaker.open_until, _describe(exc))
            tally.circuit_open = True
        if whole:
            return  # the sender's fault, not the message's: no attempt counted; it comes back after its lease
        attempts = message.attempts + 1
        out_of_time = now - message.created_at >= drip.retry_for
        if out_of_time or (drip.max_attempts is not None and attempts >= drip.max_attempts):
            self.fail(message, exc, "retries exhausted")
            return
        self.deliveries.append(
            Delivery(key=message.key, status=OutboxStatus.PENDING, at=now, error=_describe(exc),
                     next_attempt_at=now + drip._backoff(attempts))
        )  # fmt: skip
        tally.retried += 1

    def fail(self, message: OutboxMessage, exc: BaseException, reason: str | None) -> None:
        """The step's email is given up on: FAILED, a StepFailed, and (unless the contact
        bounced or complained, which exits them) the enrollment held for an operator."""
        counters: list[Counter] = [(message.sequence_id, message.position, "failed", 1)]
        if reason in ("bounced", "complained"):
            counters.append((message.sequence_id, message.position, reason, 1))
        else:
            self.holds[message.enrollment_id] = _safe_text(str(exc) or repr(exc))
        error = _safe_text(str(exc) or repr(exc))
        self.events.append(
            StepFailed(enrollment_id=message.enrollment_id, sequence_id=message.sequence_id,
                       contact_id=message.contact_id, at=self.now, position=message.position,
                       error=error, reason=reason)
        )  # fmt: skip
        self.tally.failed += 1
        self.deliveries.append(
            Delivery(key=message.key, status=OutboxStatus.FAILED, at=self.now, error=error, counters=tuple(counters))
        )

    def settle(self) -> None:
        """Record the outcomes so far, then publish their events."""
        if self.deliveries:
            deliveries, self.deliveries = self.deliveries, []
            self.drip._settle(deliveries, self.tally)
        if self.events:
            events, self.events = self.events, []
            self.drip._publish(events, self.tally.errors)

    def finish(self) -> None:
        """Complete the enrollments whose last email went, hold those whose email failed,
        and exit the contacts who bounced or complained."""
        drip, now, tally = self.drip, self.now, self.tally
        transitions: dict[str, Callable[[Enrollment], scheduler.Advance]] = {}
        for enrollment_id in self.delivered:
            state, sequence = self.committed[enrollment_id]
            due = state.next_step_due_at
            if state.status is EnrollmentStatus.ACTIVE and due is not None and due <= now:
                contact = self.contacts.get(state.contact_id)

                def complete(
                    e: Enrollment, sequence: Sequence = sequence, contact: Contact | None = contact
                ) -> scheduler.Advance:
                    result = scheduler.advance(e, now, sequence=sequence, contact=contact)
                    return result if result.send is None else scheduler.Advance(e)  # a next step goes next tick

                transitions[enrollment_id] = complete
        for enrollment_id in self.holds:
            transitions[enrollment_id] = lambda e: (
                scheduler.pause(e, now) if e.status is EnrollmentStatus.ACTIVE else scheduler.Advance(e)
            )
        if transitions:
            changes: list[Change] = []
            befores: dict[str, Enrollment] = {}
            for enrollment_id, transition in transitions.items():
                known = self.committed.get(enrollment_id)
                if known is None:
                    continue
                result = transition(known[0])
                if result.enrollment is not known[0]:
                    changes.append(drip._change(known[0], result))
                    befores[enrollment_id] = known[0]
            try:
                refused = set(drip.store.commit(changes)) if changes else set()
                again = [i for i in transitions if i not in befores or i in refused]
                events = [ev for c in changes if c.enrollment.id not in refused for ev in c.events]
                done = [c.enrollment for c in changes if c.enrollment.id not in refused]
                for enrollment_id in again:
                    done.append(drip._apply_one(enrollment_id, transitions[enrollment_id]))
                drip._publish(events, tally.errors)
            except Exception as exc:  # the emails are recorded: the next claim completes or holds them
                log.warning("completing or holding %d enrollments failed (%s)", len(transitions), _describe(exc))
                tally.errors.append(TickError(kind="store", id=next(iter(transitions)), error=_describe(exc)))
                done = []
            for enrollment in done:
                tally.completed += enrollment.status is EnrollmentStatus.COMPLETED
                tally.held += enrollment.id in self.holds and enrollment.status is EnrollmentStatus.PAUSED
        for contact_id, exit_reason in self.suppressed_after:
            try:
                drip._contact_exits(contact_id, exit_reason)
            except StoreError as exc:
                if not isinstance(exc, _RECORD_ERRORS):
                    raise
                tally.errors.append(TickError(kind="contact", id=contact_id, error=_describe(exc)))
            except Exception as exc:  # the directory's suppress() failed: the bounce is retried with the next one
                log.exception("suppressing contact %s after a %s failed", contact_id, exit_reason.value)
                tally.errors.append(TickError(kind="contact", id=contact_id, error=_describe(exc)))


class Drip:
    """A drip-campaign engine: your ports in, correct scheduling out.

    >>> from dripcore import Drip, Sequence, SequenceStatus, Step, Contact
    >>> from dripcore.adapters.memory import MemoryStore
    >>> from dripcore.testing import FakeClock, MemoryContacts, RecordingSender
    >>> contacts = MemoryContacts([Contact(id="ana", email="ana@example.com", first_name="Ana")])
    >>> sender = RecordingSender()
    >>> drip = Drip(store=MemoryStore(), sender=sender, clock=FakeClock(), contacts=contacts)
    >>> _ = drip.save_sequence(Sequence(id="hello", name="Hello", status=SequenceStatus.ACTIVE,
    ...     steps=(Step(position=1, subject="Hi {{firstName}}", text="Welcome!"),)))
    >>> enrollment, created = drip.enroll("hello", "ana")
    >>> drip.tick().sent
    1
    >>> sender.sent[0].subject
    'Hi Ana'

    Ports are keyword arguments. ``contacts`` resolves contact ids to email
    addresses, zones and suppression; ``events`` receives lifecycle events;
    ``rate_limiter`` caps sends; ``renderer`` turns steps into content (the
    default is :class:`~dripcore.render.LiquidRenderer` with a placeholder
    unsubscribe link: pass ``LiquidRenderer(unsubscribe_url=...)`` in production).
    """

    def __init__(
        self,
        *,
        store: Store,
        sender: MailSender,
        contacts: ContactDirectory,
        clock: Clock | None = None,
        events: EventSink | None = None,
        rate_limiter: RateLimiter | None = None,
        renderer: Renderer | None = None,
        batch_size: int = 500,
        lease: timedelta = timedelta(minutes=5),
        set_aside_for: timedelta = timedelta(hours=1),
        max_attempts: int | None = None,
        retry_base: timedelta = timedelta(minutes=1),
        retry_cap: timedelta = timedelta(hours=1),
        retry_for: timedelta = timedelta(days=5),
        concurrency: int | None = None,
        worker_id: str | None = None,
        id_factory: Callable[[], str] | None = None,
        frequency_cap: FrequencyCap | None = None,
    ) -> None:
        check_count(batch_size, "batch_size", minimum=1, maximum=100_000)
        if max_attempts is not None:
            check_count(max_attempts, "max_attempts", minimum=1, maximum=10_000)
        if concurrency is not None:
            check_count(concurrency, "concurrency", minimum=1, maximum=1_000)
        for name, span in (("lease", lease), ("set_aside_for", set_aside_for), ("retry_base", retry_base),
                           ("retry_cap", retry_cap), ("retry_for", retry_for)):  # fmt: skip
            check_span(span, name, minimum=timedelta(microseconds=1), maximum=timedelta(days=3660))
        if worker_id is not None:
            check_id(worker_id, "worker_id")
        required: tuple[tuple[str, object, type], ...] = (
            ("store", store, Store), ("sender", sender, MailSender), ("contacts", contacts, ContactDirectory),
        )  # fmt: skip
        optional: tuple[tuple[str, object, type], ...] = (
            ("clock", clock, Clock), ("events", events, EventSink), ("rate_limiter", rate_limiter, RateLimiter),
            ("renderer", renderer, Renderer), ("frequency_cap", frequency_cap, FrequencyCap),
        )  # fmt: skip
        for name, port, kind in (*required, *((n, p, k) for n, p, k in optional if p is not None)):
            if not isinstance(port, kind):
                raise InvalidArgument(name, port, f"must be a {kind.__name__}, not {type(port).__name__}")
        if id_factory is not None and not callable(id_factory):
            raise InvalidArgument("id_factory", id_factory, "must be a callable returning a new id")
        self.store = store
        self.sender = sender
        self.contacts = contacts
        self.clock: Clock = clock or SystemClock()
        self.events = events
        self.rate_limiter = rate_limiter
        self.renderer: Renderer = renderer or LiquidRenderer()
        self.batch_size = batch_size
        self.lease = lease
        self.set_aside_for = set_aside_for
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.retry_for = retry_for
        self.concurrency = concurrency
        self._breaker = _Breaker()
        self._pool_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_size = 0
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
        self._new_id = id_factory or new_id
        if frequency_cap is not None and "frequency_cap" not in store.capabilities:
            raise DripcoreError(
                f"{type(store).__name__} does not declare the 'frequency_cap' capability, so frequency_cap "
                "can't be enforced with it"
            )
        self.frequency_cap = frequency_cap
        self._wake = threading.Event()
        self._stop = threading.Event()

    # ------------------------------------------------------------------ helpers

    def _now(self) -> datetime:
        return to_utc(self.clock.now(), "clock.now()")

    def _sequence(self, sequence_id: str) -> Sequence:
        sequence = self.store.get_sequence(check_id(sequence_id, "sequence_id"))
        if sequence is None:
            raise SequenceNotFound(sequence_id)
        return sequence

    def _contact(self, contact_id: str) -> Contact:
        contact = self.contacts.get(check_id(contact_id, "contact_id"))
        if contact is None:
            raise ContactNotFound(contact_id)
        return contact

    def _enrollment(self, enrollment_id: str) -> Enrollment:
        enrollment = self.store.get_enrollment(check_id(enrollment_id, "enrollment_id"))
        if enrollment is None:
            raise EnrollmentNotFound(enrollment_id)
        return enrollment

    def _publish(self, events: Seq[Event], errors: list[TickError] | None = None) -> None:
        """Hand events to the sink. A sink that raises on a batch is given its events one at a
        time, so one bad event costs only itself (the events it took before raising may reach
        it twice: sinks are at least once); each failure is reported under its enrollment."""
        if not events or self.events is None:
            return
        try:
            self.events.publish(events)
            return
        except Exception as exc:
            if len(events) == 1:
                log.exception("event sink failed on %s of %s", events[0].wire_name, events[0].enrollment_id)
                if errors is not None:
                    errors.append(TickError(kind="events", id=events[0].enrollment_id, error=_describe(exc)))
                return
            log.warning("event sink failed on %d events (%s); one at a time now", len(events), _describe(exc))
        for event in events:
            self._publish((event,), errors)

    def _change(
        self,
        before: Enrollment | None,
        result: scheduler.Advance,
        outbox: tuple[OutboxMessage, ...] = (),
        counters: tuple[Counter, ...] = (),
    ) -> Change:
        after = result.enrollment
        events = result.events
        if before is None or before.status is not after.status or events:
            counters = (*_status_counters(after.sequence_id, before, after), *_event_counters(events), *counters)
        return Change(enrollment=after, outbox=outbox, events=events, counters=counters)

    def _apply_one(self, enrollment_id: str, transition: Callable[[Enrollment], scheduler.Advance]) -> Enrollment:
        """Read, transition, commit one enrollment; retry on a concurrent change."""
        for _ in range(5):
            before = self._enrollment(enrollment_id)
            result = transition(before)
            if result.enrollment is before:
                return before
            if not self.store.commit([self._change(before, result)]):
                self._publish(result.events)
                self._wake.set()
                return attrs.evolve(result.enrollment, version=before.version + 1)
        raise ConcurrencyConflict(kind="enrollment", id=enrollment_id, expected=-1, actual=None)

    def _live(self, *, sequence_id: str | None = None, contact_id: str | None = None) -> Iterator[list[Enrollment]]:
        """Pages of ACTIVE and PAUSED enrollments, keyset-paginated so changes can't skip rows."""
        after: str | None = None
        while True:
            page = self.store.find_enrollments(
                sequence_id=sequence_id, contact_id=contact_id, statuses=_LIVE, limit=_PAGE, after=after
            )
            if not page:
                return
            yield page
            after = page[-1].id

    def _commit_all(
        self, transitions: Callable[[Enrollment], scheduler.Advance], pages: Iterator[list[Enrollment]]
    ) -> int:
        """Apply a transition to every enrollment of ``pages`` in batched commits; returns how many changed."""
        changed = 0
        for page in pages:
            changes: list[Change] = []
            for before in page:
                result = transitions(before)
                if result.enrollment is not before:
                    changes.append(self._change(before, result))
            refused = set(self.store.commit(changes)) if changes else set()
            events = [ev for c in changes if c.enrollment.id not in refused for ev in c.events]
            changed += len(changes) - len(refused)
            for enrollment_id in refused:  # changed under us: redo it on a fresh read
                self._apply_one(enrollment_id, transitions)
                changed += 1
            self._publish(events)
        return changed

    # ------------------------------------------------------------------ sequences

    def save_sequence(self, sequence: Sequence) -> Sequence:
        """Create a sequence or save an edit of it; returns what was stored.

        An edit bumps ``version`` and replans in-flight enrollments: they go on
        from where they were with the latest steps. Status changes go through
        :meth:`activate`, :meth:`pause`, :meth:`resume` and :meth:`archive`.

        Retry-safe: the edit is stored first (every tick from then on reads the
        new steps), then its enrollments are replanned page by page. A marker
        (the counter ``replan:pending``) is set before and cleared after, so if
        the replan fails part-way (a store error, a crash), saving again (the
        same edit, or a newer one) replans every live enrollment afresh from
        its last send, which finishes it.
        """
        if not isinstance(sequence, Sequence):
            raise InvalidArgument("sequence", sequence, f"must be a Sequence, not {type(sequence).__name__}")
        current = self.store.get_sequence(sequence.id)
        if current is None:
            if sequence.status not in (SequenceStatus.DRAFT, SequenceStatus.ACTIVE):
                raise SequenceStateError(
                    sequence_id=sequence.id, status=sequence.status.value, action="create",
                    hint="a new sequence starts as draft or active",
                )  # fmt: skip
            stored = attrs.evolve(sequence, version=1)
            self.store.save_sequence(stored, expected_version=None)
            return stored
        if current.status is SequenceStatus.ARCHIVED:
            raise SequenceStateError(sequence_id=sequence.id, status="archived", action="edit")
        if sequence.status is not current.status:
            raise SequenceStateError(
                sequence_id=sequence.id, status=current.status.value, action=f"set status={sequence.status.value} of",
                hint="use activate(), pause(), resume() or archive()",
            )  # fmt: skip
        stored = attrs.evolve(sequence, version=current.version + 1, paused_at=current.paused_at)
        pending = self.store.counters(sequence.id).get((0, _REPLAN_PENDING), 0)
        self.store.bump([(sequence.id, 0, _REPLAN_PENDING, 1)])
        try:
            self.store.save_sequence(stored, expected_version=current.version)
        except ConcurrencyConflict:
            self.store.bump([(sequence.id, 0, _REPLAN_PENDING, -1)])  # nothing was stored: nothing to replan
            raise
        # After an interrupted replan some enrollments follow an older plan than ``current``:
        # replan everyone from their last send (losing only EXTEND shifts and cap deferrals).
        changed = self._replan(stored, None if pending > 0 else current)
        self.store.bump([(sequence.id, 0, _REPLAN_PENDING, -(pending + 1))])
        if changed:
            self._wake.set()
        return stored

    def _replan(self, sequence: Sequence, previous: Sequence | None) -> int:
        contacts: Mapping[str, Contact] = {}

        def transition(e: Enrollment) -> scheduler.Advance:
            return scheduler.replan(e, sequence, contact=contacts.get(e.contact_id), previous=previous)

        def pages() -> Iterator[list[Enrollment]]:
            nonlocal contacts
            for page in self._live(sequence_id=sequence.id):
                # A contact that can't be looked up is replanned in the sequence's zone.
                contacts = self._look_up_contacts({e.contact_id for e in page})[0]
                yield page

        return self._commit_all(transition, pages())

    def get_sequence(self, sequence_id: str) -> Sequence:
        """The sequence, or :class:`~dripcore.errors.SequenceNotFound`."""
        return self._sequence(sequence_id)

    def sequences(self, status: SequenceStatus | None = None) -> list[Sequence]:
        """Every sequence (of one status), ordered by id."""
        return self.store.list_sequences(check_opt_enum(status, SequenceStatus, "status"))

    def _set_status(self, sequence: Sequence, status: SequenceStatus, paused_at: datetime | None) -> Sequence:
        updated = attrs.evolve(sequence, status=status, paused_at=paused_at, version=sequence.version + 1)
        self.store.save_sequence(updated, expected_version=sequence.version)
        return updated

    def activate(self, sequence_id: str, *, enroll_existing: bool | None = None) -> Sequence:
        """Start a draft (or resume a paused) sequence.

        With ``enroll_existing`` (default: the sequence's own setting) the
        trigger list's current members are enrolled at once.

        Retry-safe: the members are enrolled first, while the sequence is still
        a draft (nothing is sent to them before it is active), and the status
        changes last. If that fails part-way, the sequence is still a draft, and
        calling ``activate`` again enrolls the rest (enrollment is idempotent)
        and activates it. A member whose contact can't be looked up keeps it a
        draft too (:class:`~dripcore.errors.ContactNotFound` naming it).
        """
        if enroll_existing is not None:
            check_flag(enroll_existing, "enroll_existing")
        sequence = self._sequence(sequence_id)
        if sequence.status is SequenceStatus.PAUSED:
            return self.resume(sequence_id)
        if sequence.status is not SequenceStatus.DRAFT:
            raise SequenceStateError(sequence_id=sequence_id, status=sequence.status.value, action="activate")
        if not sequence.active_steps():
            raise SequenceStateError(
                sequence_id=sequence_id, status=sequence.status.value, action="activate",
                hint="it has no active step to send",
            )  # fmt: skip
        active = attrs.evolve(sequence, status=SequenceStatus.ACTIVE, paused_at=None, version=sequence.version + 1)
        if sequence.enroll_existing if enroll_existing is None else enroll_existing:
            self._enroll_members(active)
        self.store.save_sequence(active, expected_version=sequence.version)
        self._wake.set()
        return active

    def _enroll_members(self, sequence: Sequence) -> None:
        """Enroll the trigger list's members into ``sequence`` (as it will be once active).

        Members whose contact can't be looked up are logged, the others enrolled, and then
        :class:`~dripcore.errors.ContactNotFound` is raised naming the first: the sequence
        stays a draft, and :meth:`activate` can be called again once the directory is fixed.
        """
        members = list(dict.fromkeys(self.contacts.members(sequence.trigger)))
        unreadable: dict[str, str] = {}
        for start in range(0, len(members), _PAGE):
            page = members[start : start + _PAGE]
            contacts, failed = self._look_up_contacts(set(page))
            for contact_id, why in failed.items():
                log.warning("member %s of %s's trigger list can't be looked up: %s", contact_id, sequence.id, why)
            unreadable.update(failed)
            for contact_id in page:
                contact = contacts.get(contact_id)
                if contact is not None and contact.suppressed is None:
                    self._enroll(sequence, contact)
        if unreadable:
            raise ContactNotFound(next(iter(unreadable)))

    def pause(self, sequence_id: str) -> Sequence:
        """Stop all sending of a sequence; new triggers do not enroll meanwhile."""
        sequence = self._sequence(sequence_id)
        if sequence.status is not SequenceStatus.ACTIVE:
            raise SequenceStateError(sequence_id=sequence_id, status=sequence.status.value, action="pause")
        return self._set_status(sequence, SequenceStatus.PAUSED, self._now())

    def resume(self, sequence_id: str, *, policy: PausePolicy | None = None) -> Sequence:
        """Resume a paused sequence.

        BUMP (the default policy of a sequence): an overdue step goes once per
        contact, now, and later steps keep their delays: stale sends are
        bumped, never flooded. EXTEND: every due time moves later by the
        length of the pause.

        All or nothing: the new status and (under EXTEND) every shifted due
        time are written in one transaction
        (:meth:`Store.resume_sequence <dripcore.ports.Store.resume_sequence>`),
        so a resume that fails changed nothing and can simply be called again.
        (On a store without that method, EXTEND shifts page by page and a
        failure part-way leaves it half done.)
        """
        policy = check_opt_enum(policy, PausePolicy, "policy")
        sequence = self._sequence(sequence_id)
        if sequence.status is not SequenceStatus.PAUSED:
            raise SequenceStateError(sequence_id=sequence_id, status=sequence.status.value, action="resume")
        assert sequence.paused_at is not None
        now = self._now()
        resumed = attrs.evolve(sequence, status=SequenceStatus.ACTIVE, paused_at=None, version=sequence.version + 1)
        if (policy or sequence.pause_policy) is PausePolicy.EXTEND:
            shift = max(now - sequence.paused_at, timedelta(0))
            try:
                self.store.resume_sequence(resumed, expected_version=sequence.version, shift=shift)
                self._wake.set()
                return resumed
            except NotImplementedError:
                log.warning("%s has no resume_sequence: EXTEND shifts page by page", type(self.store).__name__)

            def extend(e: Enrollment) -> scheduler.Advance:
                if e.status is not EnrollmentStatus.ACTIVE or e.next_step_due_at is None:
                    return scheduler.Advance(e)
                return scheduler.Advance(attrs.evolve(e, next_step_due_at=e.next_step_due_at + shift))

            # Shift before reactivating, so no tick sees the old due times.
            self._commit_all(extend, self._live(sequence_id=sequence_id))
        self.store.save_sequence(resumed, expected_version=sequence.version)
        self._wake.set()
        return resumed

    def archive(self, sequence_id: str) -> Sequence:
        """End a sequence for good: every active or paused enrollment exits (reason ARCHIVED).

        Retry-safe: the sequence is archived first (nothing more is sent), then
        its enrollments exit page by page. If that fails part-way, calling
        ``archive`` again on the archived sequence exits the rest.
        """
        sequence = self._sequence(sequence_id)
        if sequence.status is not SequenceStatus.ARCHIVED:
            sequence = self._set_status(sequence, SequenceStatus.ARCHIVED, None)
        now = self._now()
        self._commit_all(lambda e: scheduler.exit(e, ExitReason.ARCHIVED, now), self._live(sequence_id=sequence_id))
        return sequence

    def delete_sequence(self, sequence_id: str) -> None:
        """Delete a sequence; refused while it has active or paused enrollments."""
        self.store.delete_sequence(check_id(sequence_id, "sequence_id"))

    # ------------------------------------------------------------------ enrollment

    def _enroll(
        self,
        sequence: Sequence,
        contact: Contact,
        *,
        started_at: datetime | None = None,
        variables: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> tuple[Enrollment, bool]:
        result = scheduler.enroll(
            sequence, contact, self._now(), enrollment_id=self._new_id(),
            started_at=started_at, variables=variables, key=key,
        )  # fmt: skip
        stored, created = self.store.add_enrollment(
            result.enrollment,
            allow_reentry=sequence.reentry is ReentryPolicy.AFTER_EXIT,
            counters=_status_counters(sequence.id, None, result.enrollment),
        )
        if created:
            self._publish(result.events)
            self._wake.set()
        return stored, created

    def enroll(
        self,
        sequence_id: str,
        contact_id: str,
        *,
        started_at: datetime | None = None,
        variables: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> tuple[Enrollment, bool]:
        """Enroll a contact directly (an API or manual trigger); returns ``(enrollment, created)``.

        Idempotent: an existing ACTIVE or PAUSED enrollment is returned with
        ``created=False``. A finished one raises
        :class:`~dripcore.errors.EnrollmentConflict` unless the sequence's
        re-entry policy allows a new one. Draft, paused and archived sequences
        raise :class:`~dripcore.errors.SequenceStateError`; a suppressed
        contact raises :class:`~dripcore.errors.ContactSuppressed`.
        """
        sequence = self._sequence(sequence_id)
        contact = self._contact(contact_id)
        enrollment, created = self._enroll(sequence, contact, started_at=started_at, variables=variables, key=key)
        if not created and enrollment.is_terminal:
            raise EnrollmentConflict(
                sequence_id=sequence_id, contact_id=contact_id,
                enrollment_id=enrollment.id, status=enrollment.status.value,
            )  # fmt: skip
        return enrollment, created

    def notify(self, event: TriggerEvent) -> list[Enrollment]:
        """A trigger event happened: exit enrollments whose goal it meets, and enroll
        the contact into every ACTIVE sequence it fires (both the "any" and the
        value-scoped variants). Returns the enrollments created.

        Re-firing a trigger for a contact already enrolled is a no-op; a keyed
        event (an order id) enrolls once per key.
        """
        if not isinstance(event, TriggerEvent):
            raise InvalidTriggerEvent("event", event, "notify() takes a TriggerEvent")
        contact = self._contact(event.contact_id)
        now = self._now()
        goal_sequences: dict[str, Sequence | None] = {}
        for page in self._live(contact_id=contact.id):
            for enrollment in page:
                if enrollment.sequence_id not in goal_sequences:
                    try:
                        goal_sequences[enrollment.sequence_id] = self.store.get_sequence(enrollment.sequence_id)
                    except UnreadableRecord as exc:  # its goals can't be checked; the other sequences can
                        log.error("goal check of %s skipped: %s", enrollment.sequence_id, _describe(exc))
                        goal_sequences[enrollment.sequence_id] = None
                sequence = goal_sequences[enrollment.sequence_id]
                if sequence is not None and scheduler.exits_on(sequence, event):
                    self._apply_one(enrollment.id, lambda e: scheduler.exit(e, ExitReason.GOAL_MET, now))
        created: list[Enrollment] = []
        if contact.suppressed is not None:
            return created
        for sequence in self.store.list_sequences(SequenceStatus.ACTIVE):
            if scheduler.matches(sequence.trigger, event):
                enrollment, was_created = self._enroll(sequence, contact, variables=event.variables, key=event.key)
                if was_created:
                    created.append(enrollment)
        return created

    def pause_enrollment(self, enrollment_id: str) -> Enrollment:
        """Hold one contact's enrollment; nothing is sent until it is resumed."""
        now = self._now()
        return self._apply_one(enrollment_id, lambda e: scheduler.pause(e, now))

    def resume_enrollment(self, enrollment_id: str, *, policy: PausePolicy | None = None) -> Enrollment:
        """Resume one paused enrollment (policy: the sequence's, unless given)."""
        policy = check_opt_enum(policy, PausePolicy, "policy")
        now = self._now()
        enrollment = self._enrollment(enrollment_id)
        sequence = self._sequence(enrollment.sequence_id)
        return self._apply_one(enrollment_id, lambda e: scheduler.resume(e, now, sequence=sequence, policy=policy))

    def release(self, enrollment_id: str) -> Enrollment:
        """Let an enrollment held by a failed email go on to its next step, without that email.

        An enrollment whose step's email failed for good (retries exhausted, refused by
        the provider, a template that can't be rendered) is held (PAUSED) rather than
        moved on silently; this is the operator's "skip it". The next step keeps its
        delay from the failed one. See also :meth:`resend`.
        """
        now = self._now()
        enrollment = self._enrollment(enrollment_id)
        sequence = self._sequence(enrollment.sequence_id)
        return self._apply_one(
            enrollment_id, lambda e: scheduler.resume(e, now, sequence=sequence, policy=PausePolicy.BUMP)
        )

    def resend(self, enrollment_id: str) -> Enrollment:
        """Send again the step whose email failed, then let the held enrollment go on.

        The step is rendered afresh (so a fixed template or contact takes effect) and its
        message put back in the outbox with the same idempotency key; the enrollment resumes
        and goes on to its next step once that email is delivered. Calling it again after a
        failure half-way finishes it. Raises :class:`~dripcore.errors.InvalidTransition` when
        the enrollment's last step did not fail, and the :class:`~dripcore.render.RenderError`
        if the step still can't be rendered. Needs a store with
        :meth:`~dripcore.ports.Store.requeue_message`. See also :meth:`release`.
        """
        now = self._now()
        enrollment = self._enrollment(enrollment_id)
        position = enrollment.last_step_sent
        message = self.store.get_message(idempotency_key(enrollment.id, position)) if position else None
        if message is None or message.status is OutboxStatus.DELIVERED or enrollment.is_terminal:
            raise InvalidTransition(enrollment_id=enrollment.id, status=enrollment.status.value, action="resend")
        if message.status is OutboxStatus.FAILED:
            sequence = self._sequence(enrollment.sequence_id)
            step = sequence.step(position)
            if step is None:
                raise InvalidTransition(
                    enrollment_id=enrollment.id, status=enrollment.status.value,
                    action=f"resend step {position} (no longer in the sequence) of",
                )  # fmt: skip
            contact = self._contact(enrollment.contact_id)
            self.store.requeue_message(self._message(enrollment.id, step, sequence, contact, enrollment, now))
        if enrollment.status is EnrollmentStatus.PAUSED:
            sequence = self._sequence(enrollment.sequence_id)
            enrollment = self._apply_one(
                enrollment_id, lambda e: scheduler.resume(e, now, sequence=sequence, policy=PausePolicy.BUMP)
            )
        self._wake.set()
        return enrollment

    def cancel_enrollment(self, enrollment_id: str) -> Enrollment:
        """Take one contact out of a sequence (reason MANUAL)."""
        now = self._now()
        return self._apply_one(enrollment_id, lambda e: scheduler.exit(e, ExitReason.MANUAL, now))

    def _contact_exits(self, contact_id: str, reason: ExitReason) -> int:
        self.contacts.suppress(check_id(contact_id, "contact_id"), reason)
        now = self._now()
        return self._commit_all(lambda e: scheduler.exit(e, reason, now), self._live(contact_id=contact_id))

    def contact_unsubscribed(self, contact_id: str) -> int:
        """The contact unsubscribed: suppress them and exit all their enrollments. Returns how many exited."""
        return self._contact_exits(contact_id, ExitReason.UNSUBSCRIBED)

    def contact_bounced(self, contact_id: str) -> int:
        """The contact's address bounced permanently: suppress and exit everything."""
        return self._contact_exits(contact_id, ExitReason.BOUNCED)

    def contact_complained(self, contact_id: str) -> int:
        """The contact marked an email as spam: suppress and exit everything."""
        return self._contact_exits(contact_id, ExitReason.COMPLAINED)

    # ------------------------------------------------------------------ engagement

    def _engaged(self, enrollment_id: str, position: int, what: str) -> Enrollment:
        """The enrollment, after checking that the step's email was actually sent."""
        enrollment = self._enrollment(enrollment_id)
        if position.__class__ is not int or not 1 <= position <= MAX_COUNT:
            raise InvalidEngagement(f"{what}.position", position, "must be a step position (>= 1)")
        message = self.store.get_message(idempotency_key(enrollment_id, position))
        if message is None or message.email is None or message.status is not OutboxStatus.DELIVERED:
            state = "was sent" if message is None or message.email is None else f"went out ({message.status.value})"
            raise InvalidEngagement(
                f"{what}.position", position, f"no email of step {position} {state} for enrollment {enrollment_id!r}"
            )
        return enrollment

    def record_open(self, enrollment_id: str, position: int) -> bool:
        """Record that the contact opened a step's email. Idempotent; returns True the first time.

        Raises :class:`~dripcore.errors.InvalidEngagement` for a step whose email was never sent.
        """
        enrollment = self._engaged(enrollment_id, position, "open")
        if position in enrollment.opened:
            return False
        counters = [(enrollment.sequence_id, position, "opened", 1)]
        return self._engage(enrollment_id, lambda e: attrs.evolve(e, opened=e.opened | {position}), counters)

    def record_click(self, enrollment_id: str, position: int, link: str | None = None) -> bool:
        """Record a click on a step's email (optionally which link). Idempotent per link.

        The first click in a step also counts as an open, and fires the
        AFTER_FIRST_CLICK trigger with the mailing id ``"{sequence_id}:{position}"``.
        Raises :class:`~dripcore.errors.InvalidEngagement` for a step whose
        email was never sent (a click for an unknown mailing).
        """
        enrollment = self._engaged(enrollment_id, position, "click")
        if link is not None:
            check_text(link, "click.link", InvalidEngagement, max_len=2048)
        item = (position, link or "")
        if item in enrollment.clicked:
            return False
        first_in_step = not any(p == position for p, _ in enrollment.clicked)
        counters: list[Counter] = []
        if first_in_step:
            counters.append((enrollment.sequence_id, position, "clicked", 1))
            if position not in enrollment.opened:
                counters.append((enrollment.sequence_id, position, "opened", 1))

        def update(e: Enrollment) -> Enrollment:
            return attrs.evolve(e, clicked=e.clicked | {item}, opened=e.opened | {position})

        recorded = self._engage(enrollment_id, update, counters)
        if recorded and first_in_step:
            self.notify(TriggerEvent.first_click(enrollment.contact_id, f"{enrollment.sequence_id}:{position}"))
        return recorded

    def _engage(self, enrollment_id: str, update: Callable[[Enrollment], Enrollment], counters: list[Counter]) -> bool:
        for _ in range(5):
            before = self._enrollment(enrollment_id)
            after = update(before)
            if after == before:
                return False
            change = Change(enrollment=after, counters=tuple(counters))
            if not self.store.commit([change]):
                return True
        raise ConcurrencyConflict(kind="enrollment", id=enrollment_id, expected=-1, actual=None)

    # ------------------------------------------------------------------ anniversaries

    def sweep_anniversaries(self, day: date) -> list[Enrollment]:
        """Enroll every contact whose birthday (or sign-up date) falls on ``day``
        into the ACTIVE anniversary sequences, once per contact per year.

        Feb 29 anniversaries are swept on Feb 28 in common years. The first step
        counts its delay from 00:00 of ``day`` in the contact's zone (fallback:
        the sequence's, then UTC), so a birthday email arrives on the birthday
        where the contact lives: sweep early (at 00:00 UTC, as the reference
        products do, or a little before the first zone's midnight) and the
        enrollments wait for their local midnight.
        """
        day = check_day(day, "day")
        created: list[Enrollment] = []
        leap_day_today = day.month == 2 and day.day == 28 and not _is_leap(day.year)
        for sequence in self.store.list_sequences(SequenceStatus.ACTIVE):
            if sequence.trigger.type is not TriggerType.ANNIVERSARY:
                continue
            field = sequence.trigger.value or "birthday"
            candidates = list(self.contacts.anniversaries(field, day.month, day.day))
            if leap_day_today:
                candidates.extend(self.contacts.anniversaries(field, 2, 29))
            for contact in candidates:
                origin = contact.birthday if field == "birthday" else (
                    contact.created_at.date() if contact.created_at else None
                )  # fmt: skip
                if origin is None or contact.suppressed is not None or not scheduler.is_anniversary(origin, day):
                    continue
                zone = scheduler.resolve_zone(sequence, contact) or UTC
                start = datetime.combine(day, dtime(0), tzinfo=zone)
                enrollment, was_created = self._enroll(sequence, contact, started_at=start, key=str(day.year))
                if was_created:
                    created.append(enrollment)
        return created

    # ------------------------------------------------------------------ dispatch

    def tick(self) -> TickReport:
        """One round of work: advance due enrollments, commit, deliver, retry.

        Safe to run from several workers at once: claims are leased. Whatever
        goes wrong for one enrollment, contact, message or sequence (its
        decoding, contact look-up, rendering, encoding for the store, send or
        settle) is reported in :attr:`TickReport.errors` and set aside for
        ``set_aside_for``; the rest of the batch goes on in this same tick.
        Only a fault of the whole (the store or the contact directory failing
        for everyone) raises, leaving the batch to be picked up again.
        """
        now = self._now()
        tally = _Tally()
        if self._breaker.is_open(now):  # the sender is failing for everyone: claim nothing until it may work
            tally.circuit_open = True
            return tally.freeze()
        # Retries first: an enrollment with a pending message is not claimable, so
        # settling retries first lets their next steps go in this same tick.
        retries = self.store.claim_messages(now, limit=self.batch_size, lease=self.lease, owner=self.worker_id)
        if retries:
            tally.messages += len(retries)
            tally.busy = len(retries) == self.batch_size
            try:
                self._deliver_retries(retries, now, tally)
            except Exception as exc:  # they come back when their lease ends; due enrollments still go
                log.warning("delivering %d retries failed (%s)", len(retries), _describe(exc))
                tally.errors.append(TickError(kind="messages", id=retries[0].key, error=_describe(exc)))
        limit = self.batch_size
        budget = self.rate_limiter.available(now) if self.rate_limiter else None
        if budget is not None:
            limit = min(limit, max(budget, 0))
        if limit == 0:
            tally.deferred = self.store.count_due(now)
        else:
            claimed = self.store.claim_due(now, limit=limit, lease=self.lease, owner=self.worker_id)
            tally.claimed = len(claimed)
            tally.busy = tally.busy or (len(claimed) == limit and limit == self.batch_size)
            outgoing, contacts, committed = self._advance_batch(claimed, now, tally)
            if limit < self.batch_size and len(claimed) == limit:
                # The rate limiter held the claim short: whatever is still due waits.
                tally.deferred = max(tally.deferred, self.store.count_due(now))
            self._deliver(outgoing, contacts, {}, now, tally, committed)
        return tally.freeze()

    def _look_up_contacts(self, contact_ids: set[str]) -> tuple[dict[str, Contact], dict[str, str]]:
        """The contacts of a batch, and why each one that could not be looked up failed.

        A batch look-up that raises is retried one contact at a time, so one
        messy row in the host's table costs only its own contact. When every
        contact fails, the directory itself is down: that raises, for the
        tick to be tried again.
        """
        if not contact_ids:
            return {}, {}
        try:
            return self._checked_contacts(self.contacts.get_many(contact_ids), contact_ids)
        except Exception as exc:
            log.warning("looking up %d contacts failed (%s); one by one now", len(contact_ids), _describe(exc))
        contacts: dict[str, Contact] = {}
        failed: dict[str, str] = {}
        first: Exception | None = None
        answered = False
        for contact_id in contact_ids:
            try:
                found, bad = self._checked_contacts({contact_id: self.contacts.get(contact_id)}, {contact_id})
            except Exception as exc:
                first = first or exc
                failed[contact_id] = _describe(exc)
                if not answered and len(failed) >= _DOWN_AFTER:
                    raise  # the first few all failed, none answered: the directory is down, not a record
                continue
            answered = True
            contacts.update(found)
            failed.update(bad)
        # A lone contact that fails can't tell a broken row from a directory that is down: it is
        # set aside like a record (a directory that is down fails the batch look-up of the next
        # tick again, with more contacts, and is then told apart).
        return contacts, failed

    @staticmethod
    def _checked_contacts(
        found: Mapping[str, Contact | None], contact_ids: set[str]
    ) -> tuple[dict[str, Contact], dict[str, str]]:
        contacts: dict[str, Contact] = {}
        failed: dict[str, str] = {}
        for contact_id in contact_ids:
            contact = found.get(contact_id)
            if contact is None:
                continue
            if contact.__class__ is not Contact and not isinstance(contact, Contact):
                failed[contact_id] = f"the contact directory returned a {type(contact).__name__}, not a Contact"
            elif contact.id != contact_id:
                failed[contact_id] = f"the contact directory returned contact {contact.id!r} for {contact_id!r}"
            else:
                contacts[contact_id] = contact
        return contacts, failed

    def _advance_batch(
        self, claimed: Seq[Enrollment | BrokenRecord], now: datetime, tally: _Tally
    ) -> tuple[list[OutboxMessage], Mapping[str, Contact], dict[str, tuple[Enrollment, Sequence]]]:
        """Advance and commit a claimed batch; return the messages to deliver, the contacts
        they go to, and the enrollments committed with a message, as stored, with their
        sequence (for completing them in this tick once their last email went)."""
        set_aside: list[str] = []

        def put_aside(kind: str, enrollment_id: str, error: str) -> None:
            tally.errors.append(TickError(kind=kind, id=enrollment_id, error=error))
            set_aside.append(enrollment_id)

        enrollments: list[Enrollment] = []
        for item in claimed:
            if isinstance(item, BrokenRecord):
                put_aside("enrollment", item.id, _safe_text(item.error))
            else:
                enrollments.append(item)
        sequences: dict[str, Sequence | None] = {}
        unreadable: dict[str, str] = {}  # sequence id -> why it can't be read
        for e in enrollments:
            if e.sequence_id not in sequences and e.sequence_id not in unreadable:
                try:
                    sequences[e.sequence_id] = self.store.get_sequence(e.sequence_id)
                except StoreError as exc:
                    if not isinstance(exc, _RECORD_ERRORS):
                        self._release_claims([e.id for e in enrollments], set_aside, now)
                        raise
                    unreadable[e.sequence_id] = _describe(exc)  # a corrupt sequence row: its enrollments wait
                except Exception as exc:
                    unreadable[e.sequence_id] = _describe(exc)
        try:
            contacts, lookup_failed = self._look_up_contacts({e.contact_id for e in enrollments})
        except Exception:
            self._release_claims([e.id for e in enrollments], set_aside, now)
            raise

        changes: list[Change] = []
        idle: list[str] = []
        by_id = {e.id: e for e in enrollments}
        for before in enrollments:
            if before.sequence_id in unreadable:
                put_aside("sequence", before.id, unreadable[before.sequence_id])
                continue
            if before.contact_id in lookup_failed:
                put_aside("contact", before.id, lookup_failed[before.contact_id])
                continue
            try:
                sequence = sequences[before.sequence_id]
                if sequence is None:
                    raise SequenceNotFound(before.sequence_id)
                contact = contacts.get(before.contact_id)
                if contact is None:
                    raise ContactNotFound(before.contact_id)
                result = scheduler.advance(before, now, sequence=sequence, contact=contact)
                if result.enrollment is before:
                    idle.append(before.id)
                    continue
                changes.append(self._dispatch_change(before, result, sequence, contact, now))
            except Exception as exc:
                log.exception("enrollment %s set aside", before.id)
                put_aside("enrollment", before.id, _describe(exc))

        try:  # the batch as a whole: a failure here (a store error, your rate limiter) gives it back
            if self.frequency_cap is not None and changes:
                changes = self._apply_frequency_cap(changes, by_id, sequences, contacts, now, tally)
            if self.rate_limiter is not None:
                sending = [c for c in changes if any(m.status is OutboxStatus.PENDING for m in c.outbox)]
                granted = self.rate_limiter.consume(len(sending), now) if sending else 0
                if granted < len(sending):
                    held = {c.enrollment.id for c in sending[granted:]}
                    changes = [c for c in changes if c.enrollment.id not in held]
                    tally.deferred += len(held)
                    reopen = self.rate_limiter.next_opening(now)
                    self.store.release(held, owner=self.worker_id, until=reopen)
        except Exception:
            self._release_claims([e.id for e in enrollments], set_aside, now)
            raise
        if idle:
            self.store.release(idle, owner=self.worker_id)

        try:
            refused, rejected = self._commit_isolated(changes) if changes else (set(), {})
        except Exception:
            self._release_claims([e.id for e in enrollments], set_aside, now)
            raise
        for enrollment_id, why in rejected.items():
            put_aside("enrollment", enrollment_id, why)
        tally.conflicts += len(refused)
        try:  # best effort: the commit stands, and a lease still held only ends later
            if set_aside:
                self.store.release(set_aside, owner=self.worker_id, until=now + self.set_aside_for)
            if refused:
                self.store.release(refused, owner=self.worker_id)
        except Exception as exc:
            log.warning("releasing %d claims failed (%s); they end with their lease", len(set_aside) + len(refused),
                        _describe(exc))  # fmt: skip
        outgoing: list[OutboxMessage] = []
        events: list[Event] = []
        committed: dict[str, tuple[Enrollment, Sequence]] = {}
        for change in changes:
            if change.enrollment.id in refused or change.enrollment.id in rejected:
                continue
            events.extend(change.events)
            status = change.enrollment.status
            tally.completed += status is EnrollmentStatus.COMPLETED
            tally.exited += status is EnrollmentStatus.EXITED
            for event in change.events:
                if isinstance(event, StepSkipped):
                    tally.skipped += 1
                elif isinstance(event, StepFailed):
                    tally.failed += 1
                    if event.reason == "render":  # a template or its data is broken: worth telling
                        key = idempotency_key(event.enrollment_id, event.position)
                        tally.errors.append(TickError(kind="message", id=key, error=_safe_text(event.error)))
            for message in change.outbox:
                if message.status is OutboxStatus.PENDING:
                    outgoing.append(message)
                    tally.queued += 1
                    sequence = sequences[change.enrollment.sequence_id]
                    assert sequence is not None
                    stored = attrs.evolve(change.enrollment, version=change.enrollment.version + 1)
                    committed[change.enrollment.id] = (stored, sequence)
                elif status is EnrollmentStatus.PAUSED and message.status is OutboxStatus.FAILED:
                    tally.held += 1  # its step could not be rendered
        self._publish(events, tally.errors)
        return outgoing, contacts, committed

    def _release_claims(self, enrollment_ids: list[str], set_aside: list[str], now: datetime) -> None:
        """Give a batch that can't go on back, before raising: the records set aside wait,
        the others may be claimed again at once. Best effort: the store may be what failed."""
        try:
            aside = set(set_aside)
            self.store.release([i for i in enrollment_ids if i not in aside], owner=self.worker_id)
            if aside:
                self.store.release(aside, owner=self.worker_id, until=now + self.set_aside_for)
        except Exception:
            log.warning("could not release the batch's claims; they end with their lease", exc_info=True)

    def _commit_isolated(self, changes: list[Change]) -> tuple[set[str], dict[str, str]]:
        """Commit ``changes``; return the ids refused for a stale version and the ids the
        store could not take, with why.

        Records the store rejects (:class:`~dripcore.errors.RecordRejected`) are
        taken out and the rest committed again. Any other exception that is not a
        :class:`~dripcore.errors.StoreError` (a store meeting data it can't encode)
        is narrowed down by halves to the changes that cause it. A ``StoreError``
        is the store failing for everyone, and raises.
        """
        rejected: dict[str, str] = {}
        committed = False
        failures: list[Exception] = []

        def attempt(batch: list[Change]) -> set[str]:
            nonlocal committed
            while batch:
                try:
                    refused = set(self.store.commit(batch, owner=self.worker_id))
                    committed = True
                    return refused
                except RecordRejected as exc:
                    named = {i: why for i, why in exc.reasons.items() if i not in rejected}
                    ids = {c.enrollment.id for c in batch}
                    if not named.keys() & ids:
                        return split(batch, exc)
                    rejected.update((i, _safe_text(why)) for i, why in named.items() if i in ids)
                    batch = [c for c in batch if c.enrollment.id not in rejected]
                except StoreError:
                    raise
                except Exception as exc:
                    return split(batch, exc)
            return set()

        def split(batch: list[Change], exc: Exception) -> set[str]:
            if len(batch) == 1:
                rejected[batch[0].enrollment.id] = _describe(exc)
                failures.append(exc)
                if not committed and len(failures) >= _DOWN_AFTER:
                    raise exc  # one record after another fails and nothing goes in: the store is down
                return set()
            middle = len(batch) // 2
            return attempt(batch[:middle]) | attempt(batch[middle:])

        refused = attempt(changes)
        if rejected:
            log.warning("the store could not take %d enrollment(s); set aside: %s", len(rejected), rejected)
        return refused, rejected

    def _dispatch_change(
        self, before: Enrollment, result: scheduler.Advance, sequence: Sequence, contact: Contact, now: datetime
    ) -> Change:
        step = result.send
        if step is None:
            return self._change(before, result)
        key = idempotency_key(before.id, step.position)
        try:
            message = self._message(before.id, step, sequence, contact, result.enrollment, now)
        except DripcoreError as exc:
            # This one message is FAILED, with the error, and its enrollment held at that
            # step until an operator resends it (once the template is fixed) or releases it.
            message = OutboxMessage(
                key=key, enrollment_id=before.id, sequence_id=sequence.id, contact_id=contact.id,
                position=step.position, email=None, created_at=now, status=OutboxStatus.FAILED,
                last_error=_safe_text(str(exc)), settled_at=now,
            )  # fmt: skip
            failed = StepFailed(
                enrollment_id=before.id, sequence_id=sequence.id, contact_id=contact.id, at=now,
                position=step.position, error=_safe_text(str(exc)), reason="render",
            )  # fmt: skip
            held = scheduler.pause(result.enrollment, now).enrollment
            result = attrs.evolve(result, enrollment=held, events=(*result.events, failed))
            return self._change(before, result, (message,), ((sequence.id, step.position, "failed", 1),))
        return self._change(before, result, (message,), ((sequence.id, step.position, "sent", 1),))

    def _message(
        self, enrollment_id: str, step: Step, sequence: Sequence, contact: Contact, enrollment: Enrollment,
        now: datetime,
    ) -> OutboxMessage:  # fmt: skip
        """The PENDING outbox message of ``step`` for ``contact``, rendered now; a
        :class:`~dripcore.errors.DripcoreError` (a :class:`~dripcore.render.RenderError`) if it can't be."""
        key = idempotency_key(enrollment_id, step.position)
        rendered = self.renderer.render(step, sequence=sequence, contact=contact, enrollment=enrollment)
        email = Email(
            idempotency_key=key,
            enrollment_id=enrollment_id,
            sequence_id=sequence.id,
            contact_id=contact.id,
            position=step.position,
            to=contact.email,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            sender=step.sender or sequence.sender,
            headers=rendered.headers,
        )
        return OutboxMessage(
            key=key, enrollment_id=enrollment_id, sequence_id=sequence.id, contact_id=contact.id,
            position=step.position, email=email, created_at=now, next_attempt_at=now,
        )  # fmt: skip

    def _apply_frequency_cap(
        self,
        changes: list[Change],
        befores: Mapping[str, Enrollment],
        sequences: Mapping[str, Sequence | None],
        contacts: Mapping[str, Contact],
        now: datetime,
        tally: _Tally,
    ) -> list[Change]:
        """Hold back (or skip) sends that would take a contact over the cap.

        Counts what the store already queued for the contact plus what this
        batch queues, in the contact's local day and/or rolling window.
        """
        cap = self.frequency_cap
        assert cap is not None
        queued: dict[tuple[str, object], int] = {}

        def verdict(contact: Contact, sequence: Sequence) -> tuple[bool, datetime, list[tuple[str, object]]]:
            zone: tzinfo = scheduler.resolve_zone(sequence, contact) or UTC
            keys: list[tuple[str, object]] = []
            reopen = now
            over = False
            if cap.per_day is not None:
                today = now.astimezone(zone).date()
                start = datetime.combine(today, dtime(0), tzinfo=zone).astimezone(UTC)
                end = datetime.combine(today + timedelta(days=1), dtime(0), tzinfo=zone).astimezone(UTC)
                key: tuple[str, object] = (contact.id, today)
                if key not in queued:
                    queued[key] = self.store.count_messages(contact.id, start, end)
                keys.append(key)
                if queued[key] >= cap.per_day:
                    over, reopen = True, max(reopen, end)
            if cap.per_window is not None and cap.window is not None:
                key = (contact.id, "rolling")
                if key not in queued:
                    queued[key] = self.store.count_messages(contact.id, now - cap.window, now + timedelta(seconds=1))
                keys.append(key)
                if queued[key] >= cap.per_window:
                    over, reopen = True, max(reopen, now + cap.window / cap.per_window)
            return over, reopen, keys

        result: list[Change] = []
        for change in changes:
            if not any(m.status is OutboxStatus.PENDING for m in change.outbox):
                result.append(change)
                continue
            before = befores[change.enrollment.id]
            sequence = sequences[before.sequence_id]
            contact = contacts[before.contact_id]
            assert sequence is not None
            over, reopen, keys = verdict(contact, sequence)
            if not over:
                for key in keys:
                    queued[key] += 1
                result.append(change)
                continue
            if cap.over is CapAction.WAIT:
                tally.deferred += 1
                result.append(self._change(before, scheduler.defer(before, reopen, sequence=sequence, contact=contact)))
                continue
            # SKIP: pass over every step that would go now, until one may go or none is due.
            current, capped = before, []
            while True:
                advanced = scheduler.advance(current, now, sequence=sequence, contact=contact)
                if advanced.send is None:
                    break
                over, _, keys = verdict(contact, sequence)
                if not over:
                    for key in keys:
                        queued[key] += 1
                    break
                position = advanced.send.position
                capped.append(
                    StepSkipped(enrollment_id=before.id, sequence_id=sequence.id, contact_id=contact.id, at=now,
                                position=position, reason=SkipReason.FREQUENCY_CAP)
                )  # fmt: skip
                current = attrs.evolve(current, skipped=current.skipped | {position})
            final = attrs.evolve(advanced, events=(*capped, *advanced.events))
            result.append(self._dispatch_change(before, final, sequence, contact, now))
        return result

    def _backoff(self, attempts: int) -> timedelta:
        # The doubling stops once it passes the cap (a huge exponent would overflow a timedelta).
        doublings = min(max(attempts - 1, 0), 40)
        if self.retry_base * 2**doublings >= self.retry_cap:
            return self.retry_cap
        delay: timedelta = self.retry_base * 2**doublings
        return delay

    def _deliver_retries(self, messages: Seq[OutboxMessage], now: datetime, tally: _Tally) -> None:
        """Deliver messages from an earlier tick (retries, or a crashed worker's): a message
        whose enrollment has exited since is dropped unsent, and one whose enrollment or
        contact can't be read is set aside."""
        exited: dict[str, str] = {}
        aside: dict[str, tuple[str, str]] = {}  # enrollment id -> (kind, why)
        for enrollment_id in {m.enrollment_id for m in messages}:
            try:
                enrollment = self.store.get_enrollment(enrollment_id)
            except StoreError as exc:
                if not isinstance(exc, _RECORD_ERRORS):
                    raise  # the store is down: the messages' leases run out and they come back
                aside[enrollment_id] = ("enrollment", _describe(exc))
                continue
            except Exception as exc:
                aside[enrollment_id] = ("enrollment", _describe(exc))
                continue
            if enrollment is None or enrollment.status is EnrollmentStatus.EXITED:
                reason = enrollment.exit_reason.value if enrollment and enrollment.exit_reason else "deleted"
                exited[enrollment_id] = reason
        contacts, lookup_failed = self._look_up_contacts({m.contact_id for m in messages})
        for message in messages:
            if message.enrollment_id not in aside and message.contact_id in lookup_failed:
                aside[message.enrollment_id] = ("contact", lookup_failed[message.contact_id])
        held: list[Delivery] = []
        for message in messages:
            if message.enrollment_id in aside:
                kind, why = aside[message.enrollment_id]
                tally.errors.append(TickError(kind=kind, id=message.enrollment_id, error=why))
                held.append(
                    Delivery(key=message.key, status=OutboxStatus.PENDING, at=now, error=why,
                             next_attempt_at=now + self.set_aside_for)
                )  # fmt: skip
        if held:
            self._settle(held, tally)
        self._deliver([m for m in messages if m.enrollment_id not in aside], contacts, exited, now, tally)


    def _deliver(
        self,
        messages: Seq[OutboxMessage],
        contacts: Mapping[str, Contact],
        exited: Mapping[str, str],
        now: datetime,
        tally: _Tally,
        committed: Mapping[str, tuple[Enrollment, Sequence]] | None = None,
    ) -> None:
        """Hand messages to the sender, up to ``max_in_flight`` at once, and record each
        outcome as soon as it is known.

        ``contacts`` are the recipients as looked up for this tick; ``exited`` maps the
        enrollments that ended since their message was queued to why (those messages are
        dropped unsent). ``committed`` holds the enrollments this tick committed with their
        messages (as stored, with their sequence): one whose last email is delivered is
        completed in this same tick, and one whose email fails is held.

        Outcomes are settled in small groups: unless the sender honours idempotency keys,
        never more than ``max_in_flight`` sends are outstanding (in flight, or returned and
        not yet recorded), so a worker killed at any instant offers again at most that many.
        When the sender fails for everyone (:class:`~dripcore.errors.SenderUnavailable`, or
        several failures in a row), the circuit breaker opens: no more sends this tick, the
        rest keep their lease and come back later, charged nothing.
        """
        if not messages:
            return
        run = _Delivery(self, contacts, exited, now, tally, committed or {})
        sendable: list[OutboxMessage] = []
        for message in messages:
            if message.email is not None and not run.screen(message):
                sendable.append(message)
        run.settle()
        limit = self._in_flight()
        outstanding = limit if not self.sender.honours_idempotency_keys else max(limit, len(sendable))
        queue = iter(sendable)
        if limit == 1:
            for message in queue:
                if self._breaker.is_open(now):
                    break
                run.record(message, self._attempt(message))
                if len(run.deliveries) >= outstanding:
                    run.settle()
        else:
            pool = self._pool(limit)
            in_flight: dict[Future[object], OutboxMessage] = {}
            exhausted = False
            while True:
                while not exhausted and len(in_flight) < limit and len(in_flight) + len(run.deliveries) < outstanding:
                    if self._breaker.is_open(now):
                        exhausted = True
                        break
                    upcoming = next(queue, None)
                    if upcoming is None:
                        exhausted = True
                        break
                    in_flight[pool.submit(self._attempt, upcoming)] = upcoming
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    run.record(in_flight.pop(future), future.result())
                if exhausted or len(in_flight) + len(run.deliveries) >= outstanding:
                    run.settle()
        run.settle()
        run.finish()

    def _in_flight(self) -> int:
        """How many sends may be in flight: the sender's ``max_in_flight``, capped by ``concurrency``."""
        limit = getattr(self.sender, "max_in_flight", 1)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            limit = 1
        return limit if self.concurrency is None else min(limit, self.concurrency)

    def _pool(self, size: int) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._executor is None or self._executor_size != size:
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="dripcore-send")
                self._executor_size = size
            return self._executor

    def _attempt(self, message: OutboxMessage) -> object:
        """One send: the provider id, or the exception it raised (never raises itself)."""
        assert message.email is not None
        try:
            return self.sender.send(message.email)
        except Exception as exc:
            return _Raised(exc)

    def _provider_id(self, value: object) -> str:
        """A sender's provider message id as text any store can keep (a sender that
        returns a dict or a number still delivered the email: it must be recorded so)."""
        if value.__class__ is not str and type(value) not in _WARNED_PROVIDER_TYPES:
            _WARNED_PROVIDER_TYPES.add(type(value))
            log.warning(
                "%s.send() returned a %s, not a str provider id; it is kept as text",
                type(self.sender).__name__, type(value).__name__,
            )  # fmt: skip
        text = value if isinstance(value, str) else repr(value)
        return _safe_text(" ".join(text.split()), 255)

    def _settle(self, deliveries: list[Delivery], tally: _Tally) -> None:
        """Record outcomes. Deliveries the store can't take are narrowed down (by
        :class:`~dripcore.errors.RecordRejected`, or by halves) and recorded again
        without their free text (error and provider id), so an email that went out
        is not left unsettled, and sent again, for the sake of a foreign string."""
        if not deliveries:
            return
        try:
            self.store.settle(deliveries, owner=self.worker_id)
            return
        except RecordRejected as exc:
            rejected = {d.key for d in deliveries} & exc.reasons.keys()
            failure: Exception = exc
        except StoreError:
            raise
        except Exception as exc:
            rejected, failure = set(), exc
        if not rejected:
            if len(deliveries) > 1:
                middle = len(deliveries) // 2
                self._settle(deliveries[:middle], tally)
                self._settle(deliveries[middle:], tally)
                return
            rejected = {deliveries[0].key}
        self._settle([d for d in deliveries if d.key not in rejected], tally)
        why = _describe(failure)
        for delivery in deliveries:
            if delivery.key not in rejected:
                continue
            tally.errors.append(TickError(kind="message", id=delivery.key, error=why))
            bare = attrs.evolve(delivery, provider_id=None, error=None if delivery.error is None else "(unrecordable)")
            try:
                self.store.settle([bare], owner=self.worker_id)
            except StoreError as exc:
                if not isinstance(exc, _RECORD_ERRORS):
                    raise
                log.error("message %s can't be settled (%s); offered again when its lease ends", delivery.key, why)
            except Exception:
                log.exception("message %s can't be settled; offered again when its lease ends", delivery.key)

    def next_wake_at(self) -> datetime | None:
        """When there will next be work: the earliest due enrollment or retry."""
        times = [t for t in (self.store.next_due_at(), self.store.next_message_at()) if t is not None]
        reopen = self._breaker.open_until
        if self.rate_limiter is not None:
            limiter = self.rate_limiter.next_opening(self._now())
            if limiter is not None and (reopen is None or limiter > reopen):
                reopen = limiter
        if reopen is not None:
            times = [max(t, reopen) for t in times]
        return min(times) if times else None

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        idle: float = 30.0,
        on_tick: Callable[[TickReport], None] | None = None,
        max_ticks: int | None = None,
    ) -> None:
        """Tick until stopped, sleeping until the next due time rather than polling.

        A new enrollment in this process wakes it early, and so does one in
        another process when the store can hear it (PostgreSQL's ``LISTEN``,
        SQLite's ``data_version``, within about 0.1 s); otherwise ``idle``
        bounds the sleep, so work written by other processes is picked up
        within that time. A ``stop`` event is looked at twice a second while
        idle, without ticking.

        The loop does not die of a fault in the data or the ports. One bad
        record is set aside by the tick itself (see :meth:`tick`); a tick
        that fails as a whole (the store down, the contact directory down, a
        bug meeting odd data) is logged with its traceback and tried again
        after a pause that doubles from 0.5 s up to ``idle``, for as long as
        it takes; leases and idempotency keys make the next tick pick up
        cleanly. What ends the loop: :meth:`stop` or setting ``stop`` (after
        the current batch), ``max_ticks`` ticks that ran (a failed one is not counted), a
        ``KeyboardInterrupt``/``SystemExit``, and an exception raised by your
        own ``on_tick`` callback, which is yours to handle.
        """
        if not isinstance(idle, (int, float)) or isinstance(idle, bool) or not 0 < idle <= _MAX_IDLE:
            raise InvalidArgument("idle", idle, f"must be a number of seconds, more than 0 and at most {_MAX_IDLE}")
        if max_ticks is not None:
            check_count(max_ticks, "max_ticks", minimum=1)
        if stop is not None and not isinstance(stop, threading.Event):
            raise InvalidArgument("stop", stop, "must be a threading.Event")
        if on_tick is not None and not callable(on_tick):
            raise InvalidArgument("on_tick", on_tick, "must be a callable taking a TickReport")
        self._stop.clear()
        ticks = 0
        backoff = 0.0
        while not self._stop.is_set() and not (stop is not None and stop.is_set()):
            self._wake.clear()
            try:
                report = self.tick()
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.5), idle)
                if isinstance(exc, StoreError):  # the store already retried what was safe to retry
                    log.warning("tick failed (%s); trying again in %.1f s", _describe(exc), backoff)
                else:
                    log.exception("tick failed; trying again in %.1f s", backoff)
                self._sleep(backoff, stop)
                continue
            backoff = 0.0
            ticks += 1
            if on_tick is not None:
                on_tick(report)
            if max_ticks is not None and ticks >= max_ticks:
                return
            if report.busy:
                continue
            self._sleep(self._idle_for(idle), stop)

    def _idle_for(self, idle: float) -> float:
        """Seconds until the next work is due, at most ``idle`` (``idle`` if that can't be told)."""
        try:
            wake_at = self.next_wake_at()
            if wake_at is None:
                return idle
            return min(idle, max((wake_at - self._now()).total_seconds(), 0.0))
        except Exception:
            log.exception("could not tell when work is next due; waking in %.1f s", idle)
            return idle

    def _sleep(self, seconds: float, stop: threading.Event | None) -> None:
        """Wait for work, a wake-up, or ``seconds``.

        With the real clock the store may hear other processes' writes
        (:meth:`Store.wait_for_work <dripcore.ports.Store.wait_for_work>`);
        a fake clock just moves forward.
        """
        if seconds <= 0:
            return
        # An outside stop event can't wake us: it is looked at every half second, in a loop of
        # short waits that does not tick in between.
        remaining = seconds
        while remaining > 0 and not self._wake.is_set() and not (stop is not None and stop.is_set()):
            part = remaining if stop is None else min(remaining, 0.5)
            try:
                if isinstance(self.clock, SystemClock):
                    if self.store.wait_for_work(part, self._wake):
                        return  # the store heard work coming
                else:
                    self.clock.wait(part, self._wake)
            except Exception:
                log.exception("waiting for work failed; waiting %.1f s without listening", part)
                self._wake.wait(part)
            remaining -= part

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch."""
        self._stop.set()
        self._wake.set()

    # ------------------------------------------------------------------ queries

    def enrollments(
        self,
        sequence_id: str,
        *,
        status: EnrollmentStatus | None = None,
        contact_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Enrollment]:
        """Who is in a sequence: which step they are on and when the next is due.

        ``contact_id`` narrows it to one contact's enrollments (oldest first).
        """
        status = check_opt_enum(status, EnrollmentStatus, "status")
        contact_id = check_opt_id(contact_id, "contact_id")
        limit, offset = check_count(limit, "limit"), check_count(offset, "offset")
        self._sequence(sequence_id)
        statuses = None if status is None else (status,)
        return self.store.find_enrollments(
            sequence_id=sequence_id, contact_id=contact_id, statuses=statuses, limit=limit, offset=offset
        )

    def get_enrollment(self, enrollment_id: str) -> Enrollment:
        """One enrollment, or :class:`~dripcore.errors.EnrollmentNotFound`."""
        return self._enrollment(enrollment_id)

    def overview(self) -> list[SequenceSummary]:
        """Every sequence with its trigger, step counts and enrollment counts (for a list page)."""
        summaries = []
        for sequence in self.store.list_sequences():
            stats = SequenceStats.from_counters(sequence.id, self.store.counters(sequence.id))
            summaries.append(
                SequenceSummary(
                    id=sequence.id,
                    name=sequence.name,
                    status=sequence.status,
                    trigger=sequence.trigger,
                    steps=len(sequence.steps),
                    active_steps=len(sequence.active_steps()),
                    active_enrollments=stats.active,
                    paused_enrollments=stats.paused,
                    recipients=stats.recipients,
                )
            )
        return summaries

    def stats(self, sequence_id: str) -> SequenceStats:
        """Recipients, active, paused, completed, exited by reason, completion rate, per-step counts."""
        self._sequence(sequence_id)
        return SequenceStats.from_counters(sequence_id, self.store.counters(sequence_id))


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
