"""Sample values for store tests: sequences, enrollments and outbox messages at a fixed instant.

Used by the storage contract kit (:mod:`dripcore.testing.contract`) and by
its worker processes; importing this module needs neither pytest nor Hypothesis.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs

from ..model import (
    UTC,
    Condition,
    ConditionType,
    Delay,
    Enrollment,
    EnrollmentStatus,
    ExitReason,
    PausePolicy,
    ReentryPolicy,
    SenderIdentity,
    SendWindow,
    Sequence,
    SequenceStatus,
    Step,
    Trigger,
    TriggerType,
    UnknownVariables,
    WaitUntil,
    WindowAction,
)
from ..ports import Email, OutboxMessage, OutboxStatus

__all__ = [
    "HOUR",
    "MINUTE",
    "T0",
    "finished",
    "message",
    "paused",
    "rich_sequence",
    "sample_enrollment",
    "sample_sequence",
    "sent",
]

#: The instant every sample is built around.
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def sample_sequence(
    id: str = "seq", *, status: SequenceStatus = SequenceStatus.ACTIVE, version: int = 1, steps: int = 3
) -> Sequence:
    """A plain sequence of ``steps`` text steps (a day apart), ready to save."""
    return Sequence(
        id=id,
        name=f"Sequence {id}",
        status=status,
        version=version,
        paused_at=T0 if status is SequenceStatus.PAUSED else None,
        steps=tuple(
            Step(position=p, delay=Delay.days(1) if p > 1 else Delay.immediately(), subject=f"Step {p}", text="Hi")
            for p in range(1, steps + 1)
        ),
    )


def rich_sequence(id: str = "rich") -> Sequence:
    """A sequence using every field, to prove a store keeps all of it."""
    return Sequence(
        id=id,
        name="Everything — ünïcode too",
        description="A sequence with every field set",
        status=SequenceStatus.PAUSED,
        paused_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        trigger=Trigger(type=TriggerType.TAG_ADDED, value="VIP"),
        sender=SenderIdentity(from_email="team@example.com", from_name="The Team", reply_to="help@example.com"),
        enroll_existing=True,
        reentry=ReentryPolicy.AFTER_EXIT,
        exit_on=(Trigger(type=TriggerType.AFTER_PURCHASE, value=None),),
        timezone="Europe/Paris",
        pause_policy=PausePolicy.EXTEND,
        unknown_variables=UnknownVariables.ERROR,
        version=7,
        window=SendWindow.parse("22:00-06:00 overnight"),
        created_at=datetime(2025, 12, 30, 8, 0, 0, 123456, tzinfo=UTC),
        updated_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        steps=(
            Step(position=1, subject="Welcome {{ firstName }}", html="<p>Hello</p>", text="Hello", name="hello"),
            Step(position=2, delay=Delay.hours(36), template_id="tpl-2", active=False),
            Step(
                position=3,
                delay=WaitUntil.parse("next tuesday 09:30"),
                subject="Tuesday news",
                text="News",
                window=SendWindow.parse("tue-thu 09:00-17:30", outside=WindowAction.SKIP),
                expires_after=Delay.days(2),
            ),
            Step(
                position=5,
                delay=Delay.weeks(1),
                subject="Did you see?",
                text="Reminder",
                condition=Condition(type=ConditionType.NOT_CLICKED, step=1, link="https://example.com/a"),
                sender=SenderIdentity(from_email="ceo@example.com"),
            ),
        ),
    )


def sample_enrollment(
    id: str,
    *,
    sequence_id: str = "seq",
    contact_id: str | None = None,
    due: datetime = T0,
    key: str | None = None,
    version: int = 0,
    **fields: Any,
) -> Enrollment:
    """An ACTIVE enrollment due at ``due`` (other fields may be given)."""
    return Enrollment(
        id=id,
        sequence_id=sequence_id,
        contact_id=contact_id or f"contact-{id}",
        status=EnrollmentStatus.ACTIVE,
        enrolled_at=T0 - 2 * HOUR,
        next_step_due_at=due,
        key=key,
        version=version,
        **fields,
    )


def finished(e: Enrollment, status: EnrollmentStatus = EnrollmentStatus.COMPLETED, at: datetime = T0) -> Enrollment:
    """``e`` completed (or exited, with reason MANUAL) at ``at``."""
    reason = ExitReason.MANUAL if status is EnrollmentStatus.EXITED else None
    return attrs.evolve(e, status=status, exit_reason=reason, next_step_due_at=None, paused_at=None, ended_at=at)


def paused(e: Enrollment, at: datetime = T0) -> Enrollment:
    """``e`` paused at ``at``."""
    return attrs.evolve(e, status=EnrollmentStatus.PAUSED, paused_at=at)


def sent(e: Enrollment, position: int, at: datetime, next_due: datetime | None) -> Enrollment:
    """``e`` after sending step ``position`` at ``at`` (completed when ``next_due`` is None)."""
    if next_due is None:
        return attrs.evolve(
            e, last_step_sent=position, last_step_sent_at=at, status=EnrollmentStatus.COMPLETED,
            next_step_due_at=None, ended_at=at,
        )  # fmt: skip
    return attrs.evolve(e, last_step_sent=position, last_step_sent_at=at, next_step_due_at=next_due)


def message(
    e: Enrollment,
    position: int,
    *,
    at: datetime = T0,
    status: OutboxStatus = OutboxStatus.PENDING,
    key: str | None = None,
) -> OutboxMessage:
    """The outbox message for step ``position`` of ``e``, created (and first due) at ``at``."""
    key = key or f"{e.id}:{position}"
    email = None
    if status is OutboxStatus.PENDING:
        email = Email(
            idempotency_key=key, enrollment_id=e.id, sequence_id=e.sequence_id, contact_id=e.contact_id,
            position=position, to=f"{e.contact_id}@example.com", subject=f"Step {position}", text="Hi",
        )  # fmt: skip
    return OutboxMessage(
        key=key,
        enrollment_id=e.id,
        sequence_id=e.sequence_id,
        contact_id=e.contact_id,
        position=position,
        email=email,
        status=status,
        created_at=at,
        next_attempt_at=at if status is OutboxStatus.PENDING else None,
        last_error=None if status is OutboxStatus.PENDING else "render failed",
        settled_at=None if status is OutboxStatus.PENDING else at,
    )
