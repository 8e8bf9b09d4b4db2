"""Bringing contacts in and out: enroll (one or many), trigger events and goals, suppression exits, anniversaries."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from collections.abc import Sequence as Seq
from datetime import date, datetime
from datetime import time as dtime
from types import MappingProxyType
from typing import Any

import attrs

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
    EnrollmentStatus,
    Event,
    ExitReason,
    ReentryPolicy,
    Sequence,
    SequenceStatus,
    TriggerEvent,
    TriggerType,
)
from ..ports import Counter
from .commits import apply_one, commit_all, live, status_counters
from .context import Context, log
from .text import describe

__all__ = [
    "EnrollManyResult",
    "EnrollOutcome",
    "check_suppression_reason",
    "contact_exits",
    "enroll",
    "enroll_many",
    "enroll_one",
    "notify",
    "sweep_anniversaries",
]

#: How many enrollments :func:`enroll_many` writes per store transaction.
ENROLL_MANY_BATCH = 10_000


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


class EnrollOutcome(enum.Enum):
    """What :meth:`Drip.enroll_many <dripcore.engine.Drip.enroll_many>` did for one contact."""

    CREATED = "created"
    """A new enrollment (a ``Subscribed`` event was published)."""
    EXISTING = "existing"
    """Already in the sequence (ACTIVE or PAUSED): that enrollment, unchanged."""
    CONFLICT = "conflict"
    """Went through the sequence already and its re-entry policy says no (``enroll`` raises EnrollmentConflict)."""
    SUPPRESSED = "suppressed"
    """The contact is suppressed: not enrolled (``enroll`` raises ContactSuppressed)."""
    UNKNOWN_CONTACT = "unknown_contact"
    """The contact directory does not know the id: not enrolled (``enroll`` raises ContactNotFound)."""


def _readonly(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class EnrollManyResult:
    """What :meth:`Drip.enroll_many <dripcore.engine.Drip.enroll_many>` did, contact by contact.

    ``outcomes`` maps each contact id given (once, in the order first given) to
    its :class:`EnrollOutcome`; ``enrollments`` maps the contacts that have one in
    the sequence (CREATED, EXISTING, CONFLICT) to it: the new one, the live one,
    or the latest finished one.
    """

    sequence_id: str
    """The sequence the contacts were enrolled into."""
    outcomes: Mapping[str, EnrollOutcome] = attrs.field(converter=_readonly)
    enrollments: Mapping[str, Enrollment] = attrs.field(converter=_readonly)

    @property
    def created(self) -> list[Enrollment]:
        """The enrollments created, in the order their contacts were given."""
        return [self.enrollments[c] for c, outcome in self.outcomes.items() if outcome is EnrollOutcome.CREATED]

    def contact_ids(self, outcome: EnrollOutcome) -> list[str]:
        """The contacts whose outcome is ``outcome``, in the order given."""
        return [c for c, o in self.outcomes.items() if o is outcome]

    def counts(self) -> dict[EnrollOutcome, int]:
        """How many contacts had each outcome (every outcome listed, zeros included)."""
        counts = dict.fromkeys(EnrollOutcome, 0)
        for outcome in self.outcomes.values():
            counts[outcome] += 1
        return counts


def enroll_many(
    ctx: Context,
    sequence_id: str,
    contact_ids: Seq[str],
    *,
    started_at: datetime | None = None,
    variables: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> EnrollManyResult:
    """Enroll many contacts at once: one contact look-up, one store write per
    :data:`ENROLL_MANY_BATCH`, the ``Subscribed`` events, one wake-up."""
    sequence = ctx.sequence(sequence_id)
    if isinstance(contact_ids, (str, bytes)) or not isinstance(contact_ids, (list, tuple)):
        kind = type(contact_ids).__name__
        raise InvalidArgument("contact_ids", contact_ids, f"must be a list of contact ids, not {kind}")
    wanted = list(dict.fromkeys(check_id(c, f"contact_ids[{i}]") for i, c in enumerate(contact_ids)))
    scheduler.sequence_target(sequence, scheduler.SequenceAction.ENROLL)
    contacts = ctx.contacts.get_many(wanted) if wanted else {}
    now = ctx.now()
    outcomes: dict[str, EnrollOutcome] = {}
    planned: list[scheduler.Advance] = []
    for contact_id in wanted:
        contact = contacts.get(contact_id)
        if contact is None:
            outcomes[contact_id] = EnrollOutcome.UNKNOWN_CONTACT
        elif contact.suppressed is not None:
            outcomes[contact_id] = EnrollOutcome.SUPPRESSED
        else:
            outcomes[contact_id] = EnrollOutcome.CREATED  # until the store says otherwise
            planned.append(scheduler.enroll(
                sequence, contact, now, enrollment_id=ctx.new_id(),
                started_at=started_at, variables=variables, key=key,
            ))  # fmt: skip
    allow_reentry = sequence.reentry is ReentryPolicy.AFTER_EXIT
    enrollments: dict[str, Enrollment] = {}
    new_counters: dict[EnrollmentStatus, list[Counter]] = {}

    def counters(enrollment: Enrollment) -> list[Counter]:
        # The same list for every new enrollment of a status, so the store checks it once.
        if enrollment.status not in new_counters:
            new_counters[enrollment.status] = status_counters(sequence.id, None, enrollment)
        return new_counters[enrollment.status]

    any_created = False
    try:
        for start in range(0, len(planned), ENROLL_MANY_BATCH):
            chunk = planned[start : start + ENROLL_MANY_BATCH]
            stored = ctx.store.add_enrollment_batch(
                [advance.enrollment for advance in chunk], allow_reentry=allow_reentry, counters=counters
            )
            events: list[Event] = []
            for advance, (enrollment, created) in zip(chunk, stored, strict=True):
                contact_id = advance.enrollment.contact_id
                enrollments[contact_id] = enrollment
                if created:
                    events.extend(advance.events)
                else:
                    outcomes[contact_id] = EnrollOutcome.CONFLICT if enrollment.is_terminal else EnrollOutcome.EXISTING
            if events:
                any_created = True
                ctx.publish(events)
    finally:  # the batches written before a failure are due too
        if any_created:
            ctx.wake.set()
    return EnrollManyResult(sequence_id=sequence.id, outcomes=outcomes, enrollments=enrollments)


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
    """Enroll every contact whose anniversary falls on ``day``, once per contact per year.

    Idempotent: each enrollment is keyed by the year, and a year's enrollment that has
    already finished (completed or exited) blocks another one for that year whatever the
    sequence's reentry policy (reentry is per key, and the key is the year), so sweeping a
    day again, or from several workers at once, enrolls nobody twice.
    """
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
            enrollment, was_created = enroll_for_year(ctx, sequence, contact, started_at=start, year=day.year)
            if was_created:
                created.append(enrollment)
    return created


def enroll_for_year(
    ctx: Context, sequence: Sequence, contact: Contact, *, started_at: datetime, year: int
) -> tuple[Enrollment, bool]:
    """Enroll ``contact`` for one year's anniversary: never twice for that year, even after it finished.

    :func:`enroll_one` lets a contact in again under ``ReentryPolicy.AFTER_EXIT`` once the
    enrollment ended; for an anniversary that would send a second birthday email the same
    year whenever the day is swept again (a restart, a second worker, a catch-up).
    """
    result = scheduler.enroll(
        sequence, contact, ctx.now(), enrollment_id=ctx.new_id(), started_at=started_at, key=str(year)
    )
    stored, created = ctx.store.add_enrollment(
        result.enrollment, allow_reentry=False, counters=status_counters(sequence.id, None, result.enrollment)
    )
    if created:
        ctx.publish(result.events)
        ctx.wake.set()
    return stored, created


def is_leap(year: int) -> bool:
    """Whether ``year`` has a Feb 29."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
