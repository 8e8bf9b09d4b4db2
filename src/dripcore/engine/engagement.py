"""Engagement: opens and clicks on emails that were delivered, counted once, a first click firing its trigger."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .._checks import MAX_COUNT
from ..errors import (
    ConcurrencyConflict,
    InvalidEngagement,
)
from ..model import (
    Enrollment,
    TriggerEvent,
    check_text,
)
from ..ports import (
    Change,
    Counter,
    CounterName,
    OutboxStatus,
    idempotency_key,
)
from .context import Context
from .enrolling import notify

__all__ = ["record_click", "record_open"]


def engaged(ctx: Context, enrollment_id: str, position: int, what: str) -> Enrollment:
    """The enrollment, after checking that the step's email was actually sent."""
    enrollment = ctx.enrollment(enrollment_id)
    if position.__class__ is not int or not 1 <= position <= MAX_COUNT:
        raise InvalidEngagement(f"{what}.position", position, "must be a step position (>= 1)")
    message = ctx.store.get_message(idempotency_key(enrollment_id, position))
    if message is None or message.email is None or message.status is not OutboxStatus.DELIVERED:
        state = "was sent" if message is None or message.email is None else f"went out ({message.status.value})"
        raise InvalidEngagement(
            f"{what}.position", position, f"no email of step {position} {state} for enrollment {enrollment_id!r}"
        )
    return enrollment


def record_open(ctx: Context, enrollment_id: str, position: int) -> bool:
    """Record that the contact opened a step's email. Idempotent; returns True the first time."""
    enrollment = engaged(ctx, enrollment_id, position, "open")
    if position in enrollment.opened:
        return False
    counters = [(enrollment.sequence_id, position, CounterName.OPENED.value, 1)]
    return engage(ctx, enrollment_id, lambda e: attrs.evolve(e, opened=e.opened | {position}), counters)


def record_click(ctx: Context, enrollment_id: str, position: int, link: str | None = None) -> bool:
    """Record a click on a step's email (optionally which link). Idempotent per link."""
    enrollment = engaged(ctx, enrollment_id, position, "click")
    if link is not None:
        check_text(link, "click.link", InvalidEngagement, max_len=2048)
    item = (position, link or "")
    if item in enrollment.clicked:
        return False
    first_in_step = not any(p == position for p, _ in enrollment.clicked)
    counters: list[Counter] = []
    if first_in_step:
        counters.append((enrollment.sequence_id, position, CounterName.CLICKED.value, 1))
        if position not in enrollment.opened:
            counters.append((enrollment.sequence_id, position, CounterName.OPENED.value, 1))

    def update(e: Enrollment) -> Enrollment:
        return attrs.evolve(e, clicked=e.clicked | {item}, opened=e.opened | {position})

    recorded = engage(ctx, enrollment_id, update, counters)
    if recorded and first_in_step:
        notify(ctx, TriggerEvent.first_click(enrollment.contact_id, f"{enrollment.sequence_id}:{position}"))
    return recorded


def engage(
    ctx: Context, enrollment_id: str, update: Callable[[Enrollment], Enrollment], counters: list[Counter]
) -> bool:
    """Commit an engagement update with its counters; True if it changed the enrollment."""
    for _ in range(5):
        before = ctx.enrollment(enrollment_id)
        after = update(before)
        if after == before:
            return False
        change = Change(enrollment=after, counters=tuple(counters))
        if not ctx.store.commit([change]):
            return True
    raise ConcurrencyConflict(kind="enrollment", id=enrollment_id, expected=-1, actual=None)
