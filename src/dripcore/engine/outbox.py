"""A step rendered for one contact into its PENDING outbox message."""

from __future__ import annotations

from datetime import datetime

from ..model import Contact, Enrollment, Sequence, Step
from ..ports import Email, OutboxMessage, idempotency_key
from .context import Context

__all__ = ["render_message"]


def render_message(
    ctx: Context, enrollment_id: str, step: Step, sequence: Sequence, contact: Contact, enrollment: Enrollment,
    now: datetime,
) -> OutboxMessage:  # fmt: skip
    """The PENDING outbox message of ``step`` for ``contact``, rendered now; a
    :class:`~dripcore.errors.DripcoreError` (a :class:`~dripcore.render.RenderError`) if it can't be."""
    key = idempotency_key(enrollment_id, step.position)
    rendered = ctx.renderer.render(step, sequence=sequence, contact=contact, enrollment=enrollment)
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
