"""Bringing contacts in and taking them out: enroll, trigger events and goals, suppression exits, anniversaries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from datetime import time as dtime
from typing import Any

from .. import scheduler
from .._checks import check_day, check_id
from ..errors import (
    EnrollmentConflict,
    InvalidArgument,
    InvalidTriggerEvent,
    UnreadableRecord,
)
from ..model import (
    SUPPRESSION_REASONS,
    UTC,
    Contact,
    Enrollment,
    ExitReason,
    ReentryPolicy,
    Sequence,
    SequenceStatus,
    TriggerEvent,
    TriggerType,
)
from .commits import apply_one, commit_all, live, status_counters
from .context import Context, log
from .text import describe

__all__ = ["check_suppression_reason", "contact_exits", "enroll", "enroll_one", "notify", "sweep_anniversaries"]


def enroll_one(
    ctx: Context,
    sequence: Sequence,
    contact: Contact,
    *,
    started_at: datetime | None = None,
    variables: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> tuple[Enrollment, bool]:
    """Enroll ``contact`` into ``sequence`` (idempotent); returns ``(enrollment, created)``."""
    result = scheduler.enroll(
        sequence, contact, ctx.now(), enrollment_id=ctx.new_id(),
        started_at=started_at, variables=variables, key=key,
    )  # fmt: skip
    stored, created = ctx.store.add_enrollment(
        result.enrollment,
        allow_reentry=sequence.reentry is ReentryPolicy.AFTER_EXIT,
        counters=status_counters(sequence.id, None, result.enrollment),
    )
    if created:
        ctx.publish(result.events)
        ctx.wake.set()
    return stored, created


def enroll(
    ctx: Context,
    sequence_id: str,
    contact_id: str,
    *,
    started_at: datetime | None = None,
    variables: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> tuple[Enrollment, bool]:
    """Enroll a contact directly (an API or manual trigger); returns ``(enrollment, created)``."""
    sequence = ctx.sequence(sequence_id)
    contact = ctx.contact(contact_id)
    enrollment, created = enroll_one(ctx, sequence, contact, started_at=started_at, variables=variables, key=key)
    if not created and enrollment.is_terminal:
        raise EnrollmentConflict(
            sequence_id=sequence_id, contact_id=contact_id,
            enrollment_id=enrollment.id, status=enrollment.status.value,
        )  # fmt: skip
    return enrollment, created


def notify(ctx: Context, event: TriggerEvent) -> list[Enrollment]:
    """A trigger event happened: exit enrollments whose goal it meets, enroll the contact where it fires."""
    if not isinstance(event, TriggerEvent):
        raise InvalidTriggerEvent("event", event, "notify() takes a TriggerEvent")
    contact = ctx.contact(event.contact_id)
    now = ctx.now()
    goal_sequences: dict[str, Sequence | None] = {}
    for page in live(ctx, contact_id=contact.id):
        for enrollment in page:
            if enrollment.sequence_id not in goal_sequences:
                try:
                    goal_sequences[enrollment.sequence_id] = ctx.store.get_sequence(enrollment.sequence_id)
                except UnreadableRecord as exc:  # its goals can't be checked; the other sequences can
                    log.error("goal check of %s skipped: %s", enrollment.sequence_id, describe(exc))
                    goal_sequences[enrollment.sequence_id] = None
            sequence = goal_sequences[enrollment.sequence_id]
            if sequence is not None and scheduler.exits_on(sequence, event):
                apply_one(ctx, enrollment.id, lambda e: scheduler.exit(e, ExitReason.GOAL_MET, now))
    created: list[Enrollment] = []
    if contact.suppressed is not None:
        return created
    for sequence in ctx.store.list_sequences(SequenceStatus.ACTIVE):
        if scheduler.matches(sequence.trigger, event):
            enrollment, was_created = enroll_one(ctx, sequence, contact, variables=event.variables, key=event.key)
            if was_created:
                created.append(enrollment)
    return created


def contact_exits(ctx: Context, contact_id: str, reason: ExitReason | str) -> int:
    """Suppress a contact and exit all their live enrollments with ``reason``; returns how many exited.

    ``reason`` is one of :data:`~dripcore.model.SUPPRESSION_REASONS` (or its value); anything
    else raises :class:`~dripcore.errors.InvalidArgument` naming it.
    """
    contact_id = check_id(contact_id, "contact_id")
    exit_reason = check_suppression_reason(reason)
    ctx.contacts.suppress(contact_id, exit_reason)
    now = ctx.now()
    return commit_all(ctx, lambda e: scheduler.exit(e, exit_reason, now), live(ctx, contact_id=contact_id))


def check_suppression_reason(reason: object) -> ExitReason:
    """``reason`` as a suppression :class:`ExitReason` (a member or its value), else InvalidArgument."""
    if isinstance(reason, ExitReason):
        found: ExitReason | None = reason
    else:
        found = _REASON_BY_VALUE.get(reason) if isinstance(reason, str) else None
    if found is None or found not in SUPPRESSION_REASONS:
        allowed = ", ".join(sorted(r.value for r in SUPPRESSION_REASONS))
        shown = reason.value if isinstance(reason, ExitReason) else reason
        raise InvalidArgument("reason", shown, f"must be a suppression reason: one of {allowed}")
    return found


_REASON_BY_VALUE: Mapping[str, ExitReason] = {r.value: r for r in ExitReason}


def sweep_anniversaries(ctx: Context, day: date) -> list[Enrollment]:
    """Enroll every contact whose anniversary falls on ``day``, once per contact per year."""
    day = check_day(day, "day")
    created: list[Enrollment] = []
    leap_day_today = day.month == 2 and day.day == 28 and not is_leap(day.year)
    for sequence in ctx.store.list_sequences(SequenceStatus.ACTIVE):
        if sequence.trigger.type is not TriggerType.ANNIVERSARY:
            continue
        field = sequence.trigger.value or "birthday"
        candidates = list(ctx.contacts.anniversaries(field, day.month, day.day))
        if leap_day_today:
            candidates.extend(ctx.contacts.anniversaries(field, 2, 29))
        for contact in candidates:
            origin = contact.birthday if field == "birthday" else (
                contact.created_at.date() if contact.created_at else None
            )  # fmt: skip
            if origin is None or contact.suppressed is not None or not scheduler.is_anniversary(origin, day):
                continue
            zone = scheduler.resolve_zone(sequence, contact) or UTC
            start = datetime.combine(day, dtime(0), tzinfo=zone)
            enrollment, was_created = enroll_one(ctx, sequence, contact, started_at=start, key=str(day.year))
            if was_created:
                created.append(enrollment)
    return created


def is_leap(year: int) -> bool:
    """Whether ``year`` has a Feb 29."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
