"""Hypothesis strategies for dripcore's model, shared by every property test."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
    DelayUnit.MONTHS: 2,
}


@st.composite
def delays(draw: st.DrawFn) -> Delay:
    unit = draw(st.sampled_from(list(DelayUnit)))
    amount = draw(st.integers(0, _MAX_AMOUNT[unit]) | st.just(0))
    return Delay(amount=amount, unit=unit)


ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)

#: Short free text a store can hold (no NUL; Hypothesis draws no lone surrogates by default):
#: metadata and variable values.
storable_texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=5)

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
        created_at=draw(st.none() | instants),
        updated_at=draw(st.none() | instants),
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
        metadata=draw(st.dictionaries(ids, st.integers() | storable_texts, max_size=3)),
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
        "variables": draw(st.dictionaries(ids, st.integers() | storable_texts | st.booleans(), max_size=3)),
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


# --------------------------------------------------------------------------- hostile input
# For the strict-edge tests: what a web request, a stored row or a careless caller may hand
# the model. Nothing above uses these.

#: Characters that break a line, a header, a store or an address list.
hostile_characters = st.sampled_from(
    [
        "\x00", "\t", "\n", "\r", "\x0b", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u2029",
        "\u200b", "\u202e", "\ufeff", "\ud800", "\udc80", "\udfff",
        " ", ",", ";", ":", "<", ">", "(", ")", "[", "]", "\\", '"', "'", "@", ".", "%", "=",
    ]
)  # fmt: skip

#: Any text, often with hostile characters and lone surrogates in it, or a troublesome classic.
hostile_texts = st.one_of(
    st.text(st.one_of(st.characters(), hostile_characters, st.characters(categories=["Cs"])), max_size=12),
    st.sampled_from(
        [
            "", " ", "false", "true", "0", "1", "1.9", "-1", "null", "None", "active", "days", "tag_added",
            "2026-03-01T09:00:00Z", "2026-03-01T09:00:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
            "1990-02-30", "25:00", "a@b.example", "Ana <ana@example.com>", "x>,<v@evil.example", "a;b@c",
            "x" * 256, "y" * 999,
        ]
    ),
)  # fmt: skip

#: Integers of every size: small, around 32 and 64 bits, and too many digits for JSON.
any_integers = st.one_of(
    st.integers(-3, 40),
    st.integers(),
    st.sampled_from([2**31 - 1, 2**31, 2**63, -(2**63) - 1, 10**30, 2**13_001]),
)

#: Any JSON document (as json.loads returns it), with hostile keys and strings and odd numbers.
json_values = st.recursive(
    st.none() | st.booleans() | any_integers | st.floats() | hostile_texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_texts, children, max_size=4),
    max_leaves=12,
)

#: Aware instants anywhere in datetime's range, in any zone or at any offset, often near the
#: ends of the calendar and of the range dripcore accepts (1900 to 5000).
edge_instants = st.one_of(
    st.datetimes(timezones=st.timezones()),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 3), timezones=st.timezones()),
    st.datetimes(min_value=datetime(9999, 12, 30), timezones=st.timezones()),
    st.datetimes(min_value=datetime(1899, 12, 30), max_value=datetime(1900, 1, 2), timezones=st.timezones()),
    st.datetimes(min_value=datetime(4999, 12, 30), max_value=datetime(5000, 1, 2), timezones=st.timezones()),
    st.builds(
        lambda naive, minutes: naive.replace(tzinfo=timezone(timedelta(minutes=minutes))),
        st.datetimes(),
        st.integers(-(24 * 60 - 1), 24 * 60 - 1),
    ),
)


class _Opaque:
    """An object of no type dripcore knows."""


class _Exploding(Mapping[str, Any]):
    """A mapping (so an iterable too) of the caller's that fails as soon as it is read."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")


#: Python values of the wrong kind for any field: JSON, plus objects no JSON holds.
python_garbage = st.one_of(
    json_values,
    edge_instants,
    st.datetimes(),  # naive
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.binary(max_size=4),
    st.tuples(any_integers, hostile_texts),
    st.frozensets(any_integers, max_size=3),
    st.sets(hostile_texts, max_size=3),
    st.lists(st.lists(any_integers, max_size=2), max_size=2),
    st.sampled_from([float("nan"), float("inf"), 1.9, 2.7, -0.0, object(), _Opaque(), int, str, ...]),
    st.builds(_Exploding),
    st.builds(lambda: iter([1, "2", None])),
    st.sampled_from(list(DelayUnit) + list(TriggerType) + list(ExitReason) + list(EnrollmentStatus)),
    st.builds(Delay.hours, st.integers(0, 5)),
)


#: Instants just inside the range dripcore accepts, at both ends (UTC).
MIN_ACCEPTED = datetime(1900, 1, 1, tzinfo=UTC)
LAST_ACCEPTED = datetime(5000, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)
range_edge_instants = st.one_of(
    st.just(MIN_ACCEPTED),
    st.just(LAST_ACCEPTED),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(1900, 3, 1), timezones=st.just(UTC)),
    st.datetimes(min_value=datetime(4989, 1, 1), max_value=LAST_ACCEPTED.replace(tzinfo=None), timezones=st.just(UTC)),
)


@st.composite
def long_delays(draw: st.DrawFn) -> Delay:
    """Any delay dripcore accepts, up to its 3660-day maximum, often the longest."""
    unit = draw(st.sampled_from(list(DelayUnit)))
    longest = 3660 * 86400 // {
        DelayUnit.SECONDS: 1, DelayUnit.MINUTES: 60, DelayUnit.HOURS: 3600, DelayUnit.DAYS: 86400,
        DelayUnit.WEEKS: 604800,
    }[unit] if unit is not DelayUnit.MONTHS else 120  # fmt: skip
    return Delay(amount=draw(st.integers(0, longest) | st.just(longest)), unit=unit)


@st.composite
def edge_sequences(draw: st.DrawFn) -> Sequence:
    """An active sequence whose steps wait as long as dripcore allows, in windows, with expiries."""
    sequence = draw(sequences(status=SequenceStatus.ACTIVE))
    steps = tuple(
        attrs.evolve(
            step,
            delay=draw(long_delays() | waits()),
            window=draw(st.none() | windows()),
            expires_after=draw(st.none() | long_delays()),
        )
        for step in sequence.steps
    )
    return attrs.evolve(sequence, steps=steps, window=draw(st.none() | windows()))
