"""An operator's actions on one enrollment: pause, resume, release or resend a held step, cancel."""

from __future__ import annotations

from .. import scheduler
from .._checks import check_opt_enum
from ..errors import InvalidTransition, SequenceStateError
from ..model import (
    Enrollment,
    EnrollmentStatus,
    ExitReason,
    PausePolicy,
    SequenceStatus,
)
from ..ports import (
    OutboxStatus,
    idempotency_key,
)
from .commits import apply_one
from .context import Context
from .outbox import render_message

__all__ = ["cancel_enrollment", "pause_enrollment", "release", "resend", "resume_enrollment"]


def pause_enrollment(ctx: Context, enrollment_id: str) -> Enrollment:
    """Hold one contact's enrollment; nothing is sent until it is resumed.

    Paused while its sequence is paused, it has been held since the sequence's
    pause: that is its ``paused_at`` (what an EXTEND resume measures from).
    """
    now = ctx.now()
    sequence = ctx.sequence(ctx.enrollment(enrollment_id).sequence_id)
    if sequence.status is SequenceStatus.PAUSED and sequence.paused_at is not None:
        now = min(now, sequence.paused_at)
    return apply_one(ctx, enrollment_id, lambda e: scheduler.pause(e, now))


def resume_enrollment(ctx: Context, enrollment_id: str, *, policy: PausePolicy | None = None) -> Enrollment:
    """Resume one paused enrollment (policy: the sequence's, unless given)."""
    policy = check_opt_enum(policy, PausePolicy, "policy")
    now = ctx.now()
    enrollment = ctx.enrollment(enrollment_id)
    sequence = ctx.sequence(enrollment.sequence_id)
    if enrollment.status is EnrollmentStatus.ACTIVE and sequence.status is SequenceStatus.PAUSED:
        raise SequenceStateError(
            sequence_id=sequence.id, status=sequence.status.value, action=f"resume enrollment {enrollment_id!r} of",
            hint="the sequence's pause holds it: resume the sequence",
        )  # fmt: skip
    return apply_one(ctx, enrollment_id, lambda e: scheduler.resume(e, now, sequence=sequence, policy=policy))


def release(ctx: Context, enrollment_id: str) -> Enrollment:
    """Let an enrollment held by a failed email go on to its next step, without that email."""
    now = ctx.now()
    enrollment = ctx.enrollment(enrollment_id)
    sequence = ctx.sequence(enrollment.sequence_id)
    return apply_one(ctx, enrollment_id, lambda e: scheduler.resume(e, now, sequence=sequence, policy=PausePolicy.BUMP))


def resend(ctx: Context, enrollment_id: str) -> Enrollment:
    """Send again the step whose email failed, then let the held enrollment go on."""
    now = ctx.now()
    enrollment = ctx.enrollment(enrollment_id)
    position = enrollment.last_step_sent
    message = ctx.store.get_message(idempotency_key(enrollment.id, position)) if position else None
    if message is None or message.status is OutboxStatus.DELIVERED or enrollment.is_terminal:
        raise InvalidTransition(enrollment_id=enrollment.id, status=enrollment.status.value, action="resend")
    if message.status is OutboxStatus.FAILED:
        sequence = ctx.sequence(enrollment.sequence_id)
        step = sequence.step(position)
        if step is None:
            raise InvalidTransition(
                enrollment_id=enrollment.id, status=enrollment.status.value,
                action=f"resend step {position} (no longer in the sequence) of",
            )  # fmt: skip
        contact = ctx.contact(enrollment.contact_id)
        ctx.store.requeue_message(render_message(ctx, enrollment.id, step, sequence, contact, enrollment, now))
    if enrollment.status is EnrollmentStatus.PAUSED:
        sequence = ctx.sequence(enrollment.sequence_id)
        enrollment = apply_one(
            ctx, enrollment_id, lambda e: scheduler.resume(e, now, sequence=sequence, policy=PausePolicy.BUMP)
        )
    ctx.wake.set()
    return enrollment


def cancel_enrollment(ctx: Context, enrollment_id: str) -> Enrollment:
    """Take one contact out of a sequence (reason MANUAL)."""
    now = ctx.now()
    return apply_one(ctx, enrollment_id, lambda e: scheduler.exit(e, ExitReason.MANUAL, now))
