"""Delivery: messages to the sender (pooled, behind the breaker), each outcome recorded, and what it leads to.

What an outcome leads to: an enrollment whose last email went is completed, one whose
email failed is held, a contact who bounced or complained exits everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from concurrent.futures import FIRST_COMPLETED, Future, wait
from datetime import datetime
from types import MappingProxyType

import attrs

from .. import scheduler
from ..errors import (
    PermanentSendError,
    RecordRejected,
    SenderUnavailable,
    StoreError,
    TransientSendError,
)
from ..model import (
    Contact,
    Enrollment,
    EnrollmentStatus,
    Event,
    ExitReason,
    Sequence,
    SkipReason,
    StepFailed,
    StepSent,
)
from ..ports import (
    Change,
    Counter,
    CounterName,
    Delivery,
    OutboxMessage,
    OutboxStatus,
)
from .commits import RECORD_ERRORS, apply_one, change_of
from .context import Context, log
from .enrolling import contact_exits
from .lookups import look_up_contacts
from .report import Tally, TickError
from .text import describe, safe_text

__all__ = ["SUPPRESSING_FAILURES", "DeliveryRun", "deliver", "deliver_retries", "settle"]

#: The ``PermanentSendError.reason`` values that suppress the contact, and the exit reason of each.
SUPPRESSING_FAILURES: Mapping[str, ExitReason] = MappingProxyType(
    {
        "bounced": ExitReason.BOUNCED,
        "complained": ExitReason.COMPLAINED,
        "invalid_address": ExitReason.INVALID_ADDRESS,
    }
)

# Sender classes already warned about for returning a provider id that is not a str.
WARNED_PROVIDER_TYPES: set[type] = set()
_DELIVERED, _FAILED = CounterName.DELIVERED.value, CounterName.FAILED.value
_SKIPPED_CANCELLED = CounterName.SKIPPED.of(SkipReason.CANCELLED)
_SKIPPED_SUPPRESSED = CounterName.SKIPPED.of(SkipReason.SUPPRESSED)


@attrs.frozen
class Raised:
    """What a send raised, carried back from the thread that sent it."""

    exc: Exception


class DeliveryRun:
    """One delivery run of a tick: the outcomes not yet recorded, and what they lead to."""

    def __init__(
        self,
        ctx: Context,
        contacts: Mapping[str, Contact],
        exited: Mapping[str, str],
        now: datetime,
        tally: Tally,
        committed: Mapping[str, tuple[Enrollment, Sequence]],
    ) -> None:
        self.ctx = ctx
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
                         counters=((*where, _SKIPPED_CANCELLED, 1),))
            )  # fmt: skip
            self.tally.skipped += 1
            return True
        contact = self.contacts.get(message.contact_id)
        if contact is None or contact.suppressed is not None:
            why = "contact not found" if contact is None else f"contact suppressed ({contact.suppressed})"
            self.deliveries.append(
                Delivery(key=message.key, status=OutboxStatus.FAILED, at=now, error=why,
                         counters=((*where, _SKIPPED_SUPPRESSED, 1),))
            )  # fmt: skip
            self.tally.skipped += 1
            return True
        return False

    def record(self, message: OutboxMessage, outcome: object) -> None:
        """Turn a send's outcome into a delivery to record (and events, a hold, a bounce)."""
        ctx, now, tally = self.ctx, self.now, self.tally
        if not isinstance(outcome, Raised):
            ctx.breaker.succeeded()
            provider_id: str | None = None
            if outcome is not None:
                if outcome.__class__ is str and outcome.isprintable():
                    provider_id = outcome
                else:
                    provider_id = provider_id_text(ctx, outcome)
            self.deliveries.append(
                Delivery(key=message.key, status=OutboxStatus.DELIVERED, at=now, provider_id=provider_id,
                         counters=((message.sequence_id, message.position, _DELIVERED, 1),))
            )  # fmt: skip
            if ctx.events is not None:
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
            ctx.breaker.succeeded()  # the provider answered: the sender works
            self.fail(message, exc, exc.reason)
            suppression = SUPPRESSING_FAILURES.get(exc.reason or "")
            if suppression is not None:
                self.suppressed_after.append((message.contact_id, suppression))
            return
        whole = isinstance(exc, SenderUnavailable)
        if not isinstance(exc, TransientSendError):
            log.exception("sender raised on %s", message.key, exc_info=exc)
            tally.errors.append(TickError(kind="message", id=message.key, error=describe(exc)))
        if ctx.breaker.failed(now, whole=whole):
            log.warning("sending paused until %s: %s", ctx.breaker.open_until, describe(exc))
            tally.circuit_open = True
        if whole:
            return  # the sender's fault, not the message's: no attempt counted; it comes back after its lease
        attempts = message.attempts + 1
        if ctx.retry.gives_up(attempts, now - message.created_at):
            self.fail(message, exc, "retries exhausted")
            return
        self.deliveries.append(
            Delivery(key=message.key, status=OutboxStatus.PENDING, at=now, error=describe(exc),
                     next_attempt_at=now + ctx.retry.backoff(attempts))
        )  # fmt: skip
        tally.retried += 1

    def fail(self, message: OutboxMessage, exc: BaseException, reason: str | None) -> None:
        """The step's email is given up on: FAILED, a StepFailed, and (unless the contact
        bounced, complained or has an invalid address, which exits them) the enrollment held
        for an operator."""
        counters: list[Counter] = [(message.sequence_id, message.position, _FAILED, 1)]
        if reason in ("bounced", "complained"):
            counters.append((message.sequence_id, message.position, CounterName(reason).value, 1))
        if reason not in SUPPRESSING_FAILURES:
            self.holds[message.enrollment_id] = safe_text(str(exc) or repr(exc))
        error = safe_text(str(exc) or repr(exc))
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
            settle(self.ctx, deliveries, self.tally)
        if self.events:
            events, self.events = self.events, []
            self.ctx.publish(events, self.tally.errors)

    def finish(self) -> None:
        """Complete the enrollments whose last email went, hold those whose email failed,
        and exit the contacts who bounced or complained."""
        ctx, now, tally = self.ctx, self.now, self.tally
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
                    changes.append(change_of(known[0], result))
                    befores[enrollment_id] = known[0]
            try:
                refused = set(ctx.store.commit(changes)) if changes else set()
                again = [i for i in transitions if i not in befores or i in refused]
                events = [ev for c in changes if c.enrollment.id not in refused for ev in c.events]
                done = [c.enrollment for c in changes if c.enrollment.id not in refused]
                for enrollment_id in again:
                    done.append(apply_one(ctx, enrollment_id, transitions[enrollment_id]))
                ctx.publish(events, tally.errors)
            except Exception as exc:  # the emails are recorded: the next claim completes or holds them
                log.warning("completing or holding %d enrollments failed (%s)", len(transitions), describe(exc))
                tally.errors.append(TickError(kind="store", id=next(iter(transitions)), error=describe(exc)))
                done = []
            for enrollment in done:
                tally.completed += enrollment.status is EnrollmentStatus.COMPLETED
                tally.held += enrollment.id in self.holds and enrollment.status is EnrollmentStatus.PAUSED
        for contact_id, exit_reason in self.suppressed_after:
            try:
                contact_exits(ctx, contact_id, exit_reason)
            except StoreError as exc:
                if not isinstance(exc, RECORD_ERRORS):
                    raise
                tally.errors.append(TickError(kind="contact", id=contact_id, error=describe(exc)))
            except Exception as exc:  # the directory's suppress() failed: the bounce is retried with the next one
                log.exception("suppressing contact %s after a %s failed", contact_id, exit_reason.value)
                tally.errors.append(TickError(kind="contact", id=contact_id, error=describe(exc)))


def deliver_retries(ctx: Context, messages: Seq[OutboxMessage], now: datetime, tally: Tally) -> None:
    """Deliver messages from an earlier tick (retries, or a crashed worker's): a message
    whose enrollment has exited since is dropped unsent, and one whose enrollment or
    contact can't be read is set aside."""
    exited: dict[str, str] = {}
    aside: dict[str, tuple[str, str]] = {}  # enrollment id -> (kind, why)
    for enrollment_id in {m.enrollment_id for m in messages}:
        try:
            enrollment = ctx.store.get_enrollment(enrollment_id)
        except StoreError as exc:
            if not isinstance(exc, RECORD_ERRORS):
                raise  # the store is down: the messages' leases run out and they come back
            aside[enrollment_id] = ("enrollment", describe(exc))
            continue
        except Exception as exc:
            aside[enrollment_id] = ("enrollment", describe(exc))
            continue
        if enrollment is None or enrollment.status is EnrollmentStatus.EXITED:
            reason = enrollment.exit_reason.value if enrollment and enrollment.exit_reason else "deleted"
            exited[enrollment_id] = reason
    contacts, lookup_failed = look_up_contacts(ctx, {m.contact_id for m in messages})
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
                         next_attempt_at=now + ctx.limits.set_aside_for)
            )  # fmt: skip
    if held:
        settle(ctx, held, tally)
    deliver(ctx, [m for m in messages if m.enrollment_id not in aside], contacts, exited, now, tally)


def deliver(
    ctx: Context,
    messages: Seq[OutboxMessage],
    contacts: Mapping[str, Contact],
    exited: Mapping[str, str],
    now: datetime,
    tally: Tally,
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
    run = DeliveryRun(ctx, contacts, exited, now, tally, committed or {})
    sendable: list[OutboxMessage] = []
    for message in messages:
        if message.email is not None and not run.screen(message):
            sendable.append(message)
    run.settle()
    limit = in_flight_limit(ctx)
    outstanding = limit if not ctx.sender.honours_idempotency_keys else max(limit, len(sendable))
    queue = iter(sendable)
    if limit == 1:
        for message in queue:
            if ctx.breaker.is_open(now):
                break
            run.record(message, attempt(ctx, message))
            if len(run.deliveries) >= outstanding:
                run.settle()
    else:
        pool = ctx.pool.get(limit)
        in_flight: dict[Future[object], OutboxMessage] = {}
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < limit and len(in_flight) + len(run.deliveries) < outstanding:
                if ctx.breaker.is_open(now):
                    exhausted = True
                    break
                upcoming = next(queue, None)
                if upcoming is None:
                    exhausted = True
                    break
                in_flight[pool.submit(attempt, ctx, upcoming)] = upcoming
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                run.record(in_flight.pop(future), future.result())
            if exhausted or len(in_flight) + len(run.deliveries) >= outstanding:
                run.settle()
    run.settle()
    run.finish()


def in_flight_limit(ctx: Context) -> int:
    """How many sends may be in flight: the sender's ``max_in_flight``, capped by ``concurrency``."""
    limit = getattr(ctx.sender, "max_in_flight", 1)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        limit = 1
    return limit if ctx.limits.concurrency is None else min(limit, ctx.limits.concurrency)


def attempt(ctx: Context, message: OutboxMessage) -> object:
    """One send: the provider id, or the exception it raised (never raises itself)."""
    assert message.email is not None
    try:
        return ctx.sender.send(message.email)
    except Exception as exc:
        return Raised(exc)


def provider_id_text(ctx: Context, value: object) -> str:
    """A sender's provider message id as text any store can keep (a sender that
    returns a dict or a number still delivered the email: it must be recorded so)."""
    if value.__class__ is not str and type(value) not in WARNED_PROVIDER_TYPES:
        WARNED_PROVIDER_TYPES.add(type(value))
        log.warning(
            "%s.send() returned a %s, not a str provider id; it is kept as text",
            type(ctx.sender).__name__, type(value).__name__,
        )  # fmt: skip
    text = value if isinstance(value, str) else repr(value)
    return safe_text(" ".join(text.split()), 255)


def settle(ctx: Context, deliveries: list[Delivery], tally: Tally) -> None:
    """Record outcomes. Deliveries the store can't take are narrowed down (by
    :class:`~dripcore.errors.RecordRejected`, or by halves) and recorded again
    without their free text (error and provider id), so an email that went out
    is not left unsettled, and sent again, for the sake of a foreign string."""
    if not deliveries:
        return
    try:
        ctx.store.settle(deliveries, owner=ctx.worker_id)
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
            settle(ctx, deliveries[:middle], tally)
            settle(ctx, deliveries[middle:], tally)
            return
        rejected = {deliveries[0].key}
    settle(ctx, [d for d in deliveries if d.key not in rejected], tally)
    why = describe(failure)
    for delivery in deliveries:
        if delivery.key not in rejected:
            continue
        tally.errors.append(TickError(kind="message", id=delivery.key, error=why))
        bare = attrs.evolve(delivery, provider_id=None, error=None if delivery.error is None else "(unrecordable)")
        try:
            ctx.store.settle([bare], owner=ctx.worker_id)
        except StoreError as exc:
            if not isinstance(exc, RECORD_ERRORS):
                raise
            log.error("message %s can't be settled (%s); offered again when its lease ends", delivery.key, why)
        except Exception:
            log.exception("message %s can't be settled; offered again when its lease ends", delivery.key)
