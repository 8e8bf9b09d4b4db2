"""One tick: gather a claimed batch -> plan it in one pure call -> commit -> deliver and settle.

The tick gathers (claims, the batch's sequences and contacts, the counts a
frequency cap needs), asks :func:`dripcore.planning.plan_batch` for every
decision at once, renders the steps to send, applies the rate limiter (a
budget shared between workers, so it stays here), commits, then delivers. It
never calls back into the scheduler to decide: the one call to the pure core
after a decision is :func:`~dripcore.scheduler.pause`, to hold an enrollment
whose step could not be rendered."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seq
from datetime import datetime

import attrs

from .. import scheduler
from ..errors import (
    ContactNotFound,
    DripcoreError,
    SequenceNotFound,
    StoreError,
)
from ..model import (
    Contact,
    Enrollment,
    EnrollmentStatus,
    Event,
    Sequence,
    StepFailed,
    StepSkipped,
)
from ..planning import BatchItem, CapQuery, cap_queries, plan_batch
from ..ports import (
    BrokenRecord,
    Change,
    CounterName,
    OutboxMessage,
    OutboxStatus,
    RateLimiter,
    idempotency_key,
)
from .commits import RECORD_ERRORS, change_of, commit_isolated, release_claims
from .context import Context, log
from .delivery import deliver, deliver_retries
from .lookups import look_up_contacts
from .outbox import render_message
from .report import Tally, TickError, TickReport
from .text import describe, safe_text

__all__ = ["tick"]


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

    items: list[BatchItem] = []
    for before in enrollments:
        if before.sequence_id in unreadable:
            put_aside("sequence", before.id, unreadable[before.sequence_id])
            continue
        if before.contact_id in lookup_failed:
            put_aside("contact", before.id, lookup_failed[before.contact_id])
            continue
        sequence = sequences[before.sequence_id]
        contact = contacts.get(before.contact_id)
        if sequence is None:
            put_aside("enrollment", before.id, describe(SequenceNotFound(before.sequence_id)))
        elif contact is None:
            put_aside("enrollment", before.id, describe(ContactNotFound(before.contact_id)))
        else:
            items.append(BatchItem(enrollment=before, sequence=sequence, contact=contact))

    changes: list[Change] = []
    idle: list[str] = []
    try:  # the batch as a whole: a failure here (a store error, your rate limiter) gives it back
        cap = ctx.frequency_cap
        counts: dict[CapQuery, int] = {}
        if cap is not None:
            counts = {q: ctx.store.count_messages(q.contact_id, q.start, q.end) for q in cap_queries(items, now, cap)}
        plan = plan_batch(items, now, cap=cap, counts=counts)
        tally.deferred += len(plan.deferred)
        for decision in plan.decisions:
            before = decision.before
            if decision.error is not None:
                log.error("enrollment %s set aside", before.id, exc_info=decision.error)
                put_aside("enrollment", before.id, describe(decision.error))
            elif decision.idle:
                idle.append(before.id)
            else:
                assert decision.result is not None
                assert decision.item.contact is not None
                try:
                    changes.append(
                        dispatch_change(
                            ctx, before, decision.result, decision.item.sequence, decision.item.contact, now
                        )
                    )
                except Exception as exc:
                    log.exception("enrollment %s set aside", before.id)
                    put_aside("enrollment", before.id, describe(exc))
        if ctx.rate_limiter is not None:
            changes = limit_sends(ctx, ctx.rate_limiter, changes, now, tally)
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


def sending_domain(change: Change) -> str:
    """The key a keyed rate limiter counts ``change``'s email under: its sender address's
    domain, lower case; ``""`` when it has none (it goes from the mail sender's own address)."""
    for message in change.outbox:
        if message.status is OutboxStatus.PENDING and message.email is not None and message.email.sender is not None:
            return message.email.sender.from_email.rpartition("@")[2].lower()
    return ""


def limit_sends(ctx: Context, limiter: RateLimiter, changes: list[Change], now: datetime, tally: Tally) -> list[Change]:
    """The changes the rate limiter lets through. The sends over its budget (per sending
    domain for a keyed limiter, in batch order within a domain) are dropped from the
    commit and their enrollments released until the budget reopens, keeping their due
    time; each counts in ``tally.deferred`` and in its step's DEFERRED counter."""
    sending = [c for c in changes if any(m.status is OutboxStatus.PENDING for m in c.outbox)]
    if not sending:
        return changes
    held: list[Change] = []
    if limiter.keyed:
        by_domain: dict[str, list[Change]] = {}
        for change in sending:
            by_domain.setdefault(sending_domain(change), []).append(change)
        for domain, group in by_domain.items():
            granted = limiter.consume_for(domain, len(group), now)
            if granted < len(group):
                over = group[granted:]
                held.extend(over)
                reopen = limiter.next_opening_for(domain, now)
                ctx.store.release([c.enrollment.id for c in over], owner=ctx.worker_id, until=reopen)
    else:
        granted = limiter.consume(len(sending), now)
        if granted < len(sending):
            held = sending[granted:]
            reopen = limiter.next_opening(now)
            ctx.store.release({c.enrollment.id for c in held}, owner=ctx.worker_id, until=reopen)
    if not held:
        return changes
    tally.deferred += len(held)
    deferred = [
        (m.sequence_id, m.position, CounterName.DEFERRED.value, 1)
        for c in held
        for m in c.outbox
        if m.status is OutboxStatus.PENDING
    ]
    try:  # a figure only: failing to count it must not fail the batch, whose claims are released
        ctx.store.bump(deferred)
    except Exception as exc:
        log.warning("counting %d deferred sends failed (%s)", len(deferred), describe(exc))
    ids = {c.enrollment.id for c in held}
    return [c for c in changes if c.enrollment.id not in ids]


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
