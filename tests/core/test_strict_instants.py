"""Instants are accepted from 1900 to 5000 (UTC), and nothing dripcore computes from accepted
instants overflows: out of range is an InvalidInstant naming the field, never an OverflowError."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dripcore import (
    Contact,
    Delay,
    DripcoreError,
    Enrollment,
    EnrollmentStatus,
    ExitReason,
    InvalidInstant,
    NaiveDatetimeError,
    PausePolicy,
    Sequence,
    SequenceStatus,
    Subscribed,
    make_converter,
)
from dripcore.model import MAX_INSTANT, MIN_INSTANT, to_utc
from dripcore.scheduler import (
    add_delay,
    advance,
    defer,
    enroll,
    exit,
    next_opening,
    pause,
    preview,
    replan,
    resume,
    schedule,
)
from dripcore.serialization import parse_instant
from tests.strategies import (
    LAST_ACCEPTED,
    MIN_ACCEPTED,
    edge_instants,
    edge_sequences,
    long_delays,
    optional_zones,
    range_edge_instants,
    waits,
    windows,
)

UTC = timezone.utc


def test_the_range_is_1900_to_5000_utc() -> None:
    assert MIN_INSTANT == MIN_ACCEPTED == datetime(1900, 1, 1, tzinfo=UTC)
    assert datetime(5000, 1, 1, tzinfo=UTC) == MAX_INSTANT
    assert to_utc(MIN_ACCEPTED) == MIN_ACCEPTED
    assert to_utc(LAST_ACCEPTED) == LAST_ACCEPTED
    for outside in (MIN_INSTANT - timedelta(microseconds=1), MAX_INSTANT):
        with pytest.raises(InvalidInstant):
            to_utc(outside)


@given(edge_instants)
def test_to_utc_accepts_exactly_the_instants_in_range(value: datetime) -> None:
    """Any zone, any offset, any year: the same instant in UTC, or InvalidInstant; never an overflow."""
    inside = MIN_INSTANT <= value < MAX_INSTANT
    if not inside:
        with pytest.raises(InvalidInstant) as info:
            to_utc(value, "contact.created_at")
        assert info.value.field == "contact.created_at"
        event("refused")
        return
    utc = to_utc(value, "contact.created_at")
    event("accepted")
    assert utc.tzinfo is UTC
    assert MIN_INSTANT <= utc < MAX_INSTANT
    assert utc == value.astimezone(UTC)


@given(edge_instants)
def test_every_instant_field_takes_edge_instants_without_overflow(at: datetime) -> None:
    """The instant of a contact, an enrollment, a sequence and an event: a value or InvalidInstant."""
    builders = [
        lambda: Contact(id="c1", email="a@example.com", created_at=at),
        lambda: Enrollment(id="e1", sequence_id="s", contact_id="c", status="active", enrolled_at=at,
                           next_step_due_at=at),
        lambda: Enrollment(id="e1", sequence_id="s", contact_id="c", status="exited", enrolled_at=at, ended_at=at,
                           exit_reason=ExitReason.MANUAL),
        lambda: Sequence(id="s", name="S", status="paused", paused_at=at),
        lambda: Subscribed(enrollment_id="e", sequence_id="s", contact_id="c", at=at),
    ]  # fmt: skip
    inside = MIN_INSTANT <= at < MAX_INSTANT
    for build in builders:
        try:
            build()
        except InvalidInstant:
            assert not inside
        else:
            assert inside


@given(edge_instants | st.datetimes())
def test_parse_instant_of_any_iso_text_raises_only_instant_errors(value: datetime) -> None:
    """Written as ISO 8601, with or without an offset, at any year."""
    try:
        parsed = parse_instant(value.isoformat())
    except NaiveDatetimeError:
        assert value.tzinfo is None
        return
    except InvalidInstant:
        return
    assert parsed == value.astimezone(UTC)  # (not ==: an instant in a fold compares unequal across zones)


def test_a_timestamp_of_year_9999_in_a_contact_is_refused_not_an_overflow() -> None:
    """The OverflowError found near year 9999: now InvalidInstant naming the field."""
    late = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    with pytest.raises(InvalidInstant) as info:
        Contact(id="c1", email="a@example.com", created_at=late)
    assert info.value.field == "contact.created_at"
    conv = make_converter()
    with pytest.raises(InvalidInstant) as decoded:
        conv.structure({"id": "c1", "email": "a@example.com", "created_at": "9999-12-31T23:00:00-05:00"}, Contact)
    assert decoded.value.field == "created_at"


# --------------------------------------------------------------------------- the scheduler at the edges


def survives(build: Any) -> Any:
    """``build()``; a DripcoreError (InvalidInstant: the result would be out of range) gives None."""
    try:
        return build()
    except DripcoreError:
        event("refused")
        return None


@settings(max_examples=max(10, settings.default.max_examples // 4))
@given(
    sequence=edge_sequences(),
    zone=optional_zones,
    start=range_edge_instants,
    later=range_edge_instants,
    policy=st.sampled_from(list(PausePolicy)),
    data=st.data(),
)
def test_scheduling_from_instants_at_the_edges_never_overflows(
    sequence: Sequence, zone: str | None, start: datetime, later: datetime, policy: PausePolicy, data: st.DataObject
) -> None:
    """Enroll, advance, pause, resume (a pause from 1900 to 4999 included), replan, defer, exit and
    preview, with the longest delays, windows and waits, in any zone: no overflow, whatever the order."""
    contact = Contact(id="c1", email="a@example.com", timezone=zone)
    first, second = sorted([start, later])
    started = survives(lambda: enroll(sequence, contact, first, enrollment_id="e1"))
    survives(lambda: preview(sequence, contact, later))
    if started is None:
        return
    enrollment = started.enrollment
    for now in (first, second, LAST_ACCEPTED, MIN_ACCEPTED, second):
        moved = survives(lambda e=enrollment, now=now: advance(e, now, sequence=sequence, contact=contact))
        if moved is None or moved.enrollment.is_terminal:
            break
        enrollment = moved.enrollment
    if enrollment.status is EnrollmentStatus.ACTIVE:
        paused = pause(enrollment, first)
        resumed = survives(lambda: resume(paused.enrollment, second, sequence=sequence, policy=policy))
        edited = attrs.evolve(sequence, steps=data.draw(edge_sequences()).steps, version=sequence.version + 1)
        survives(lambda: replan(enrollment, edited, contact=contact, previous=sequence))
        survives(lambda: defer(enrollment, later, sequence=sequence, contact=contact))
        if resumed is not None:
            survives(lambda: exit(resumed.enrollment, ExitReason.MANUAL, LAST_ACCEPTED))
    event("ran")


@given(
    at=range_edge_instants,
    delay=long_delays() | waits(),
    window=windows(),
    zone=optional_zones.map(lambda name: None if name is None else Contact(id="c", email="a@b.example",
                                                                            timezone=name).zone),
)  # fmt: skip
def test_delays_and_windows_from_accepted_instants_never_overflow(
    at: datetime, delay: Any, window: Any, zone: Any
) -> None:
    """The arithmetic itself: the longest delay, then a window move, from either end of the range."""
    due = add_delay(at, delay, zone)
    opening = next_opening(due, window, zone)
    assert opening >= due >= at
    assert opening < MAX_INSTANT + timedelta(days=3700)


def test_extend_resume_over_the_widest_pause_is_refused_not_an_overflow() -> None:
    """Paused in 1900, resumed in 4999 with EXTEND: the due time would pass 5000, so InvalidInstant."""
    sequence = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=())
    enrollment = Enrollment(
        id="e1", sequence_id="s", contact_id="c", status="paused", enrolled_at=MIN_ACCEPTED,
        next_step_due_at=LAST_ACCEPTED, paused_at=MIN_ACCEPTED,
    )  # fmt: skip
    with pytest.raises(InvalidInstant) as info:
        resume(enrollment, LAST_ACCEPTED, sequence=sequence, policy=PausePolicy.EXTEND)
    assert info.value.field == "enrollment.next_step_due_at"


def test_a_step_due_after_5000_is_refused_not_an_overflow() -> None:
    """Enrolled on the last accepted day with a ten-year delay: InvalidInstant naming the due time."""
    from dripcore import Step

    sequence = Sequence(
        id="s", name="S", status=SequenceStatus.ACTIVE,
        steps=(Step(position=1, delay=Delay.days(3660), subject="Hi", text="x"),),
    )  # fmt: skip
    with pytest.raises(InvalidInstant) as info:
        enroll(sequence, None, LAST_ACCEPTED, enrollment_id="e1", contact_id="c1")
    assert info.value.field == "enrollment.next_step_due_at"
    assert schedule(LAST_ACCEPTED, sequence.steps[0], sequence, None) > MAX_INSTANT


def test_the_scheduler_refuses_a_now_out_of_range() -> None:
    """``now`` is an argument like any other instant: out of range, InvalidInstant."""
    from dripcore import Step

    sequence = Sequence(
        id="s", name="S", status=SequenceStatus.ACTIVE,
        steps=(Step(position=1, subject="Hi", text="x"), Step(position=2, delay=Delay.days(30), subject="a", text="b")),
    )  # fmt: skip
    enrollment = enroll(sequence, None, MIN_ACCEPTED, enrollment_id="e1", contact_id="c1").enrollment
    with pytest.raises(InvalidInstant):
        advance(enrollment, datetime(9999, 12, 31, tzinfo=UTC), sequence=sequence)
