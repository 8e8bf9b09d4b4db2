"""Hypothesis strategies for dripcore's model, shared by every property test."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import attrs
from hypothesis import strategies as st

from dripcore import (
    Condition,
    ConditionType,
    Contact,
    Delay,
    DelayUnit,
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
    TriggerEvent,
    TriggerType,
    WaitUntil,
    WindowAction,
)

UTC = timezone.utc
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

#: Every IANA zone this machine knows, so DST transitions of all kinds show up.
zones = st.timezone_keys(allow_prefix=False)
optional_zones = st.none() | zones

#: Instants around a few years, at second precision plus some microseconds.
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC))

_MAX_AMOUNT = {
    DelayUnit.SECONDS: 7 * 86400,
    DelayUnit.MINUTES: 3 * 24 * 60,
    DelayUnit.HOURS: 10 * 24,
    DelayUnit.DAYS: 30,
    DelayUnit.WEEKS: 6,
}


@st.composite
def delays(draw: st.DrawFn) -> Delay:
    unit = draw(st.sampled_from(list(DelayUnit)))
    amount = draw(st.integers(0, _MAX_AMOUNT[unit]) | st.just(0))
    return Delay(amount=amount, unit=unit)


ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)

clock_times = st.times().map(lambda t: t.replace(microsecond=0))


@st.composite
def waits(draw: st.DrawFn) -> WaitUntil:
    days = draw(st.integers(0, 3))
    weekday = draw(st.none() | st.integers(0, 6))
    at = draw(st.none() | clock_times)
    if (days, weekday, at) == (0, None, None):
        days = 1
    return WaitUntil(days=days, weekday=weekday, at=at)


@st.composite
def windows(draw: st.DrawFn) -> SendWindow:
    days = draw(st.frozensets(st.integers(0, 6), min_size=1))
    if draw(st.booleans()):
        return SendWindow(days=days, outside=draw(st.sampled_from(list(WindowAction))))
    start, end = draw(st.tuples(clock_times, clock_times).filter(lambda pair: pair[0] != pair[1]))
    return SendWindow(
        days=days, start=start, end=end, overnight=start > end, outside=draw(st.sampled_from(list(WindowAction)))
    )


@st.composite
def steps_lists(draw: st.DrawFn, min_size: int = 1, max_size: int = 10, conditions: bool = True) -> tuple[Step, ...]:
    positions = sorted(draw(st.sets(st.integers(1, 30), min_size=min_size, max_size=max_size)))
    steps = []
    for i, position in enumerate(positions):
        condition = None
        if conditions and i > 0 and draw(st.integers(0, 3)) == 0:
            target = draw(st.sampled_from(positions[:i]))
            kind = draw(st.sampled_from(list(ConditionType)))
            link = None
            if kind in (ConditionType.CLICKED, ConditionType.NOT_CLICKED) and draw(st.booleans()):
                link = draw(st.sampled_from(["https://a.example/x", "https://b.example/y"]))
            condition = Condition(type=kind, step=target, link=link)
        steps.append(
            Step(
                position=position,
                delay=draw(delays()),
                subject=f"Step {position}",
                text=f"Body of step {position}",
                active=draw(st.booleans() | st.just(True)),
                condition=condition,
            )
        )
    return tuple(steps)


triggers = st.one_of(
    st.builds(Trigger, type=st.just(TriggerType.TAG_ADDED), value=st.none() | st.sampled_from(["vip", "VIP", "new"])),
    st.builds(Trigger, type=st.just(TriggerType.LIST_ADDED), value=st.none() | st.just("newsletter")),
    st.builds(Trigger, type=st.just(TriggerType.ANNIVERSARY), value=st.sampled_from(["birthday", "created"])),
    st.builds(Trigger, type=st.just(TriggerType.AFTER_PURCHASE), value=st.none() | st.just("p1")),
    st.builds(Trigger, type=st.just(TriggerType.MANUAL)),
)


@st.composite
def sequences(
    draw: st.DrawFn, status: SequenceStatus | None = SequenceStatus.ACTIVE, conditions: bool = True
) -> Sequence:
    status = status if status is not None else draw(st.sampled_from(list(SequenceStatus)))
    return Sequence(
        id="seq",
        name=draw(st.sampled_from(["Welcome", "Onboarding", "Re-engagement"])),
        trigger=draw(triggers),
        steps=draw(steps_lists(conditions=conditions)),
        status=status,
        paused_at=draw(instants) if status is SequenceStatus.PAUSED else None,
        sender=draw(st.none() | st.just(SenderIdentity(from_email="team@example.com", from_name="Team"))),
        reentry=draw(st.sampled_from(list(ReentryPolicy))),
        timezone=draw(optional_zones),
        pause_policy=draw(st.sampled_from(list(PausePolicy))),
        exit_on=draw(st.lists(triggers, max_size=2).map(tuple)),
        version=draw(st.integers(1, 50)),
    )


@st.composite
def contacts(draw: st.DrawFn, suppressed: bool = False) -> Contact:
    return Contact(
        id="contact",
        email="ana@example.com",
        first_name=draw(st.sampled_from(["Ana", "Bo", ""])),
        last_name=draw(st.sampled_from(["Silva", ""])),
        birthday=draw(st.none() | st.dates(min_value=date(1940, 1, 1), max_value=date(2010, 12, 31))),
        created_at=draw(st.none() | instants),
        timezone=draw(optional_zones),
        metadata=draw(st.dictionaries(ids, st.integers() | st.text(max_size=5), max_size=3)),
        suppressed=draw(
            st.sampled_from([ExitReason.UNSUBSCRIBED, ExitReason.BOUNCED, ExitReason.COMPLAINED, ExitReason.SUPPRESSED])
        )
        if suppressed
        else None,
    )


@st.composite
def enrollments(draw: st.DrawFn) -> Enrollment:
    """Any valid enrollment, in any status."""
    status = draw(st.sampled_from(list(EnrollmentStatus)))
    enrolled_at = draw(instants)
    last = draw(st.integers(0, 30))
    last_at = None if last == 0 else enrolled_at + draw(st.timedeltas(timedelta(0), timedelta(days=60)))
    fields: dict[str, Any] = {
        "id": draw(ids),
        "sequence_id": "seq",
        "contact_id": "contact",
        "status": status,
        "enrolled_at": enrolled_at,
        "last_step_sent": last,
        "last_step_sent_at": last_at,
        "variables": draw(st.dictionaries(ids, st.integers() | st.text(max_size=5) | st.booleans(), max_size=3)),
        "opened": draw(st.frozensets(st.integers(1, 30), max_size=3)),
        "clicked": draw(st.frozensets(st.tuples(st.integers(1, 30), st.just("https://a.example/x")), max_size=2)),
        "skipped": draw(st.frozensets(st.integers(1, 30), max_size=2)),
        "key": draw(st.none() | ids),
        "version": draw(st.integers(0, 100)),
    }
    if status in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED):
        fields["next_step_due_at"] = draw(instants)
        if status is EnrollmentStatus.PAUSED:
            fields["paused_at"] = draw(instants)
    else:
        fields["ended_at"] = draw(instants)
        if status is EnrollmentStatus.EXITED:
            fields["exit_reason"] = draw(st.sampled_from(list(ExitReason)))
    return Enrollment(**fields)


trigger_events = st.one_of(
    st.builds(TriggerEvent.tag_added, st.just("contact"), st.sampled_from(["vip", "VIP", "Vip", "new"])),
    st.builds(TriggerEvent.list_added, st.just("contact"), st.just("newsletter")),
    st.builds(
        TriggerEvent.purchase, st.just("contact"), product_id=st.none() | st.just("p1"), order_id=st.none() | ids
    ),
    st.builds(TriggerEvent.manual, st.just("contact")),
)


def evolve_steps(sequence: Sequence, steps: tuple[Step, ...]) -> Sequence:
    """The sequence after an edit of its steps (a new version)."""
    return attrs.evolve(sequence, steps=steps, version=sequence.version + 1)
