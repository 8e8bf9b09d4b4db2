"""One tick: gather a claimed batch -> plan it (advance, frequency cap, rate limit) -> commit -> deliver and settle.

The planning part (``advance_batch``, ``apply_frequency_cap``, ``dispatch_change``,
:class:`FrequencyCap`, :class:`CapAction`) is kept together here, as it was in the
engine, to be replaced by one pure planning call."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta, tzinfo
from datetime import time as dtime

import attrs

from .. import scheduler
from ..errors import (
    ContactNotFound,
    DripcoreError,
    SequenceNotFound,
    StoreError,
    ValidationError,
)
from ..model import (
    UTC,
    Contact,
    Enrollment,
    EnrollmentStatus,
    Event,
    Sequence,
    SkipReason,
    StepFailed,
    StepSkipped,
)
from ..ports import (
    BrokenRecord,
    Change,
    CounterName,
    OutboxMessage,
    OutboxStatus,
    idempotency_key,
)
from .commits import RECORD_ERRORS, change_of, commit_isolated, release_claims
from .context import Context, log
from .delivery import deliver, deliver_retries
from .lookups import look_up_contacts
from .outbox import render_message
from .report import Tally, TickError, TickReport
from .text import describe, safe_text

__all__ = ["CapAction", "FrequencyCap", "tick"]


def tick(ctx: Context) -> TickReport:
    """One round of work: advance due enrollments, commit, deliver, retry."""
    now = ctx.now()
    tally = Tally()
    if ctx.breaker.is_open(now):  # the sender is failing for everyone: claim nothing until it may work
        tally.circuit_open = True
        return tally.freeze()
    # Retries first: an enrollment with a pending message is not claimable, so
    # settling retries first lets their next steps go in this same tick.
    retries = ctx.store.claim_messages(now, limit=ctx.limits.batch_size, lease=ctx.limits.lease, owner=ctx.worker_id)
    if retries:
        tally.messages += len(retries)
        tally.busy = len(retries) == ctx.limits.batch_size
        try:
            deliver_retries(ctx, retries, now, tally)
        except Exception as exc:  # they come back when their lease ends; due enrollments still go
            log.warning("delivering %d retries failed (%s)", len(retries), describe(exc))
            tally.errors.append(TickError(kind="messages", id=retries[0].key, error=describe(exc)))
    limit = ctx.limits.batch_size
    budget = ctx.rate_limiter.available(now) if ctx.rate_limiter else None
    if budget is not None:
        limit = min(limit, max(budget, 0))
    if limit == 0:
        tally.deferred = ctx.store.count_due(now)
    else:
        claimed = ctx.store.claim_due(now, limit=limit, lease=ctx.limits.lease, owner=ctx.worker_id)
        tally.claimed = len(claimed)
        tally.busy = tally.busy or (len(claimed) == limit and limit == ctx.limits.batch_size)
        outgoing, contacts, committed = advance_batch(ctx, claimed, now, tally)
        if limit < ctx.limits.batch_size and len(claimed) == limit:
            # The rate limiter held the claim short: whatever is still due waits.
            tally.deferred = max(tally.deferred, ctx.store.count_due(now))
        deliver(ctx, outgoing, contacts, {}, now, tally, committed)
    return tally.freeze()


def advance_batch(
    ctx: Context, claimed: Seq[Enrollment | BrokenRecord], now: datetime, tally: Tally
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
            put_aside("enrollment", item.id, safe_text(item.error))
        else:
            enrollments.append(item)
    sequences: dict[str, Sequence | None] = {}
    unreadable: dict[str, str] = {}  # sequence id -> why it can't be read
    for e in enrollments:
        if e.sequence_id not in sequences and e.sequence_id not in unreadable:
            try:
                sequences[e.sequence_id] = ctx.store.get_sequence(e.sequence_id)
            except StoreError as exc:
                if not isinstance(exc, RECORD_ERRORS):
                    release_claims(ctx, [e.id for e in enrollments], set_aside, now)
                    raise
                unreadable[e.sequence_id] = describe(exc)  # a corrupt sequence row: its enrollments wait
            except Exception as exc:
                unreadable[e.sequence_id] = describe(exc)
    try:
        contacts, lookup_failed = look_up_contacts(ctx, {e.contact_id for e in enrollments})
    except Exception:
        release_claims(ctx, [e.id for e in enrollments], set_aside, now)
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
            changes.append(dispatch_change(ctx, before, result, sequence, contact, now))
        except Exception as exc:
            log.exception("enrollment %s set aside", before.id)
            put_aside("enrollment", before.id, describe(exc))

    try:  # the batch as a whole: a failure here (a store error, your rate limiter) gives it back
        if ctx.frequency_cap is not None and changes:
            changes = apply_frequency_cap(ctx, changes, by_id, sequences, contacts, now, tally)
        if ctx.rate_limiter is not None:
            sending = [c for c in changes if any(m.status is OutboxStatus.PENDING for m in c.outbox)]
            granted = ctx.rate_limiter.consume(len(sending), now) if sending else 0
            if granted < len(sending):
                held = {c.enrollment.id for c in sending[granted:]}
                changes = [c for c in changes if c.enrollment.id not in held]
                tally.deferred += len(held)
                reopen = ctx.rate_limiter.next_opening(now)
                ctx.store.release(held, owner=ctx.worker_id, until=reopen)
    except Exception:
        release_claims(ctx, [e.id for e in enrollments], set_aside, now)
        raise
    if idle:
        ctx.store.release(idle, owner=ctx.worker_id)

    try:
        refused, rejected = commit_isolated(ctx, changes) if changes else (set(), {})
    except Exception:
        release_claims(ctx, [e.id for e in enrollments], set_aside, now)
        raise
    for enrollment_id, why in rejected.items():
        put_aside("enrollment", enrollment_id, why)
    tally.conflicts += len(refused)
    try:  # best effort: the commit stands, and a lease still held only ends later
        if set_aside:
            ctx.store.release(set_aside, owner=ctx.worker_id, until=now + ctx.limits.set_aside_for)
        if refused:
            ctx.store.release(refused, owner=ctx.worker_id)
    except Exception as exc:
        log.warning("releasing %d claims failed (%s); they end with their lease", len(set_aside) + len(refused),
                    describe(exc))  # fmt: skip
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
                    tally.errors.append(TickError(kind="message", id=key, error=safe_text(event.error)))
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
    ctx.publish(events, tally.errors)
    return outgoing, contacts, committed


def dispatch_change(
    ctx: Context, before: Enrollment, result: scheduler.Advance, sequence: Sequence, contact: Contact, now: datetime
) -> Change:
    """The change of one advanced enrollment: its message rendered (or FAILED and the enrollment held)."""
    step = result.send
    if step is None:
        return change_of(before, result)
    key = idempotency_key(before.id, step.position)
    try:
        message = render_message(ctx, before.id, step, sequence, contact, result.enrollment, now)
    except DripcoreError as exc:
        # This one message is FAILED, with the error, and its enrollment held at that
        # step until an operator resends it (once the template is fixed) or releases it.
        message = OutboxMessage(
            key=key, enrollment_id=before.id, sequence_id=sequence.id, contact_id=contact.id,
            position=step.position, email=None, created_at=now, status=OutboxStatus.FAILED,
            last_error=safe_text(str(exc)), settled_at=now,
        )  # fmt: skip
        failed = StepFailed(
            enrollment_id=before.id, sequence_id=sequence.id, contact_id=contact.id, at=now,
            position=step.position, error=safe_text(str(exc)), reason="render",
        )  # fmt: skip
        held = scheduler.pause(result.enrollment, now).enrollment
        result = attrs.evolve(result, enrollment=held, events=(*result.events, failed))
        return change_of(before, result, (message,), ((sequence.id, step.position, CounterName.FAILED.value, 1),))
    return change_of(before, result, (message,), ((sequence.id, step.position, CounterName.SENT.value, 1),))


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


def apply_frequency_cap(
    ctx: Context,
    changes: list[Change],
    befores: Mapping[str, Enrollment],
    sequences: Mapping[str, Sequence | None],
    contacts: Mapping[str, Contact],
    now: datetime,
    tally: Tally,
) -> list[Change]:
    """Hold back (or skip) sends that would take a contact over the cap.

    Counts what the store already queued for the contact plus what this
    batch queues, in the contact's local day and/or rolling window.
    """
    cap = ctx.frequency_cap
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
                queued[key] = ctx.store.count_messages(contact.id, start, end)
            keys.append(key)
            if queued[key] >= cap.per_day:
                over, reopen = True, max(reopen, end)
        if cap.per_window is not None and cap.window is not None:
            key = (contact.id, "rolling")
            if key not in queued:
                queued[key] = ctx.store.count_messages(contact.id, now - cap.window, now + timedelta(seconds=1))
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
            result.append(change_of(before, scheduler.defer(before, reopen, sequence=sequence, contact=contact)))
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
        result.append(dispatch_change(ctx, before, final, sequence, contact, now))
    return result
