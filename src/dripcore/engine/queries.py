"""Read-only questions: sequences, who is enrolled where, and the figures of each sequence.

A paused sequence holds its enrollments without rewriting them: the answers here show every
ACTIVE enrollment of a PAUSED sequence as PAUSED (since the sequence's pause), in lists, in
:func:`get_enrollment` and in the figures. See docs/how-to/pause-resume.md for why at read time.
"""

from __future__ import annotations

from typing import Any

import attrs

from .. import scheduler
from .._checks import check_count, check_enum, check_opt_enum, check_opt_id, check_opt_position
from ..model import (
    Enrollment,
    EnrollmentStatus,
    Sequence,
    SequenceStatus,
)
from ..ports import (
    EnrollmentOrder,
    SequenceStats,
    SequenceSummary,
)
from .context import Context

__all__ = ["as_held", "enrollments", "get_enrollment", "get_sequence", "overview", "sequences", "stats"]


def as_held(enrollment: Enrollment, sequence: Sequence | None) -> Enrollment:
    """``enrollment`` as its sequence shows it: PAUSED (at the sequence's pause) if it is ACTIVE in a
    PAUSED sequence, otherwise as stored."""
    if (
        sequence is None
        or sequence.status is not SequenceStatus.PAUSED
        or enrollment.status is not EnrollmentStatus.ACTIVE
    ):
        return enrollment
    assert sequence.paused_at is not None  # guaranteed for a PAUSED sequence
    return scheduler.pause(enrollment, sequence.paused_at).enrollment


def _held_stats(sequence: Sequence, stats: SequenceStats) -> SequenceStats:
    """The figures of ``sequence`` with its pause applied: its active enrollments count as paused."""
    if sequence.status is not SequenceStatus.PAUSED:
        return stats
    return attrs.evolve(stats, active=0, paused=stats.paused + stats.active)


def get_sequence(ctx: Context, sequence_id: str) -> Sequence:
    """The sequence, or :class:`~dripcore.errors.SequenceNotFound`."""
    return ctx.sequence(sequence_id)


def sequences(ctx: Context, status: SequenceStatus | None = None) -> list[Sequence]:
    """Every sequence (of one status), ordered by id."""
    return ctx.store.list_sequences(check_opt_enum(status, SequenceStatus, "status"))


def enrollments(
    ctx: Context,
    sequence_id: str,
    *,
    status: EnrollmentStatus | None = None,
    contact_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
    last_step_sent: int | None = None,
    order: EnrollmentOrder = EnrollmentOrder.ID,
) -> list[Enrollment]:
    """Who is in a sequence: which step they are on and when the next is due."""
    status = check_opt_enum(status, EnrollmentStatus, "status")
    contact_id = check_opt_id(contact_id, "contact_id")
    limit, offset = check_count(limit, "limit"), check_count(offset, "offset")
    last_step_sent = check_opt_position(last_step_sent, "last_step_sent")
    order = check_enum(order, EnrollmentOrder, "order")
    sequence = ctx.sequence(sequence_id)
    statuses: tuple[EnrollmentStatus, ...] | None = None if status is None else (status,)
    if sequence.status is SequenceStatus.PAUSED and status is EnrollmentStatus.ACTIVE:
        return []  # a paused sequence holds every enrollment: none is active
    if sequence.status is SequenceStatus.PAUSED and status is EnrollmentStatus.PAUSED:
        # Held by the sequence (stored ACTIVE) or paused one by one (stored PAUSED): one query,
        # so limit and offset page through both together.
        statuses = (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)
    # Passed only when asked for, so a store written before these arguments still lists by id.
    extra: dict[str, Any] = {}
    if last_step_sent is not None:
        extra["last_step_sent"] = last_step_sent
    if order is not EnrollmentOrder.ID:
        extra["order"] = order
    found = ctx.store.find_enrollments(
        sequence_id=sequence_id, contact_id=contact_id, statuses=statuses, limit=limit, offset=offset, **extra
    )
    return [as_held(e, sequence) for e in found]


def get_enrollment(ctx: Context, enrollment_id: str) -> Enrollment:
    """One enrollment, or :class:`~dripcore.errors.EnrollmentNotFound`."""
    enrollment = ctx.enrollment(enrollment_id)
    return as_held(enrollment, ctx.store.get_sequence(enrollment.sequence_id))


def overview(ctx: Context) -> list[SequenceSummary]:
    """Every sequence with its trigger, step counts and enrollment counts (for a list page)."""
    summaries = []
    for sequence in ctx.store.list_sequences():
        stats = _held_stats(sequence, SequenceStats.from_counters(sequence.id, ctx.store.counters(sequence.id)))
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
                created_at=sequence.created_at,
                updated_at=sequence.updated_at,
            )
        )
    return summaries


def stats(ctx: Context, sequence_id: str) -> SequenceStats:
    """Recipients, active, paused, completed, exited by reason, completion rate, per-step counts."""
    sequence = ctx.sequence(sequence_id)
    return _held_stats(sequence, SequenceStats.from_counters(sequence_id, ctx.store.counters(sequence_id)))
