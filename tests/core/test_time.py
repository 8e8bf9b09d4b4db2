"""Time done right: zones, calendar vs exact delays, DST, send windows, waits, expiry, preview."""

from __future__ import annotations

import zoneinfo
from datetime import date, datetime, time, timedelta, timezone

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dripcore import (
    Contact,
    Delay,
    Enrollment,
    EnrollmentStatus,
    InvalidDelay,
    InvalidWindow,
    PausePolicy,
    SendWindow,
    Sequence,
    SequenceStatus,
    SkipReason,
    Step,
    StepSkipped,
    WaitUntil,
    WindowAction,
    add_delay,
    advance,
    anniversary_date,
    enroll,
    is_anniversary,
    parse_wait,
    pause,
    preview,
    resume,
)
from dripcore.scheduler import next_opening
from tests.builders import step
from tests.strategies import zones

UTC = timezone.utc
NY = zoneinfo.ZoneInfo("America/New_York")
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def seq(*steps: Step, **kw: object) -> Sequence:
    return Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=steps, **kw)  # type: ignore[arg-type]


def start(sequence: Sequence, at: datetime, contact: Contact | None = None) -> Enrollment:
    return enroll(sequence, contact, at, enrollment_id="e1", contact_id=None if contact else "c1").enrollment


def local(instant: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


class TestZoneFallbackChain:
    def test_contact_zone_then_sequence_zone_then_utc(self) -> None:
        s = seq(step(1, Delay.days(1)), timezone="America/New_York")
        at = datetime(2026, 3, 7, 14, 0, tzinfo=UTC)  # 09:00 in New York, the day before DST
        paris = Contact(id="c1", email="a@example.com", timezone="Europe/Paris")
        nobody = Contact(id="c1", email="a@example.com")
        assert local(start(s, at, paris).next_step_due_at, PARIS) == datetime(2026, 3, 8, 15, 0)  # type: ignore[arg-type]
        assert local(start(s, at, nobody).next_step_due_at, NY) == datetime(2026, 3, 8, 9, 0)  # type: ignore[arg-type]
        plain = attrs.evolve(s, timezone=None)
        assert start(plain, at, nobody).next_step_due_at == at + timedelta(days=1)


class TestDaylightSaving:
    def test_exact_hours_are_elapsed_time_across_spring_forward(self) -> None:
        at = datetime(2026, 3, 7, 14, 0, tzinfo=UTC)
        assert add_delay(at, Delay.hours(24), NY) == at + timedelta(hours=24)  # 10:00 EDT local

    def test_a_calendar_day_is_23_hours_on_spring_forward(self) -> None:
        at = datetime(2026, 3, 7, 14, 0, tzinfo=UTC)  # 09:00 EST
        due = add_delay(at, Delay.days(1), NY)
        assert due - at == timedelta(hours=23)
        assert local(due, NY) == datetime(2026, 3, 8, 9, 0)

    def test_a_calendar_day_is_25_hours_on_fall_back(self) -> None:
        at = datetime(2026, 10, 31, 13, 0, tzinfo=UTC)  # 09:00 EDT
        due = add_delay(at, Delay.days(1), NY)
        assert due - at == timedelta(hours=25)
        assert local(due, NY) == datetime(2026, 11, 1, 9, 0)

    def test_a_local_time_that_does_not_exist_moves_forward_by_the_gap(self) -> None:
        at = datetime(2026, 3, 7, 7, 30, tzinfo=UTC)  # 02:30 EST on Saturday
        due = add_delay(at, Delay.days(1), NY)  # 02:30 on Sunday does not exist
        assert local(due, NY) == datetime(2026, 3, 8, 3, 30)

    def test_a_local_time_that_occurs_twice_means_its_first_occurrence(self) -> None:
        at = datetime(2026, 10, 31, 5, 30, tzinfo=UTC)  # 01:30 EDT on Saturday
        due = add_delay(at, Delay.days(1), NY)  # 01:30 happens twice on Sunday
        assert due == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT, the first
        assert due.astimezone(NY).utcoffset() == timedelta(hours=-4)

    def test_a_zero_day_delay_in_the_repeated_hour_does_not_go_back(self) -> None:
        """From the second 02:00 of Amsterdam's fall-back night, '0 days' is now, not an hour ago."""
        amsterdam = zoneinfo.ZoneInfo("Europe/Amsterdam")
        second_two_am = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)  # 02:00 CET, after 02:00 CEST
        assert second_two_am.astimezone(amsterdam).fold == 1
        assert add_delay(second_two_am, Delay.days(0), amsterdam) == second_two_am


class TestSendWindows:
    def test_a_step_due_on_saturday_moves_to_monday_morning(self) -> None:
        window = SendWindow.business_days(time(9), time(17))
        s = seq(step(1), step(2, Delay.days(5), window=window), timezone="Europe/Paris")
        monday = datetime(2026, 6, 1, 18, 0, tzinfo=UTC)  # 20:00 in Paris
        e = advance(start(s, monday), monday, sequence=s).enrollment
        assert local(e.next_step_due_at, PARIS) == datetime(2026, 6, 8, 9, 0)  # type: ignore[arg-type]

    def test_tuesday_to_thursday_nine_to_ten(self) -> None:
        window = SendWindow.parse("tue-thu 09:00-10:00")
        s = seq(step(1, window=window), timezone="America/New_York")
        friday = datetime(2026, 6, 5, 15, 0, tzinfo=UTC)
        assert local(start(s, friday).next_step_due_at, NY) == datetime(2026, 6, 9, 9, 0)  # type: ignore[arg-type]

    def test_a_window_past_midnight(self) -> None:
        window = SendWindow.parse("22:00-06:00 overnight")
        s = seq(step(1, window=window))
        assert start(s, datetime(2026, 6, 1, 12, 0, tzinfo=UTC)).next_step_due_at == datetime(
            2026, 6, 1, 22, 0, tzinfo=UTC
        )
        assert window.contains(datetime(2026, 6, 2, 5, 59))
        assert not window.contains(datetime(2026, 6, 2, 6, 0))

    def test_a_late_tick_waits_for_the_next_opening_instead_of_sending_outside(self) -> None:
        window = SendWindow.parse("every day 09:00-10:00")
        s = seq(step(1, window=window))
        e = start(s, datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
        late = datetime(2026, 6, 1, 11, 30, tzinfo=UTC)  # the worker was down during the window
        result = advance(e, late, sequence=s)
        assert result.send is None
        assert result.enrollment.next_step_due_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)

    def test_a_skipping_window_records_outside_window(self) -> None:
        window = SendWindow(days=frozenset({0}), outside=WindowAction.SKIP)  # Mondays only
        s = seq(step(1), step(2, Delay.days(1), window=window), step(3, Delay.days(2)))
        monday = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        e = advance(start(s, monday), monday, sequence=s).enrollment
        result = advance(e, monday + timedelta(days=1), sequence=s)
        assert result.send is None
        assert result.events == (
            StepSkipped(enrollment_id="e1", sequence_id="s", contact_id="c1", at=monday + timedelta(days=1),
                        position=2, reason=SkipReason.WINDOW),
        )  # fmt: skip
        assert result.events[0].reason.value == "outside window"  # type: ignore[union-attr]
        assert result.enrollment.next_step_due_at == monday + timedelta(days=2)

    def test_sequence_window_applies_to_steps_without_their_own(self) -> None:
        s = seq(step(1), timezone="Europe/Paris", window=SendWindow.BUSINESS_DAYS)
        saturday = datetime(2026, 6, 6, 10, 0, tzinfo=UTC)
        assert local(start(s, saturday).next_step_due_at, PARIS) == datetime(2026, 6, 8, 0, 0)  # type: ignore[arg-type]

    def test_window_opening_in_a_dst_gap_opens_when_the_clocks_jump(self) -> None:
        window = SendWindow(days=frozenset({6}), start=time(2, 30), end=time(4, 0))  # Sundays 02:30-04:00
        opening = next_opening(datetime(2026, 3, 8, 0, 0, tzinfo=UTC), window, NY)
        assert opening == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT, the first existing minute
        assert local(opening, NY) == datetime(2026, 3, 8, 3, 0)


class TestWaitUntil:
    def test_tomorrow_at_ten_local(self) -> None:
        s = seq(step(1), step(2, WaitUntil.parse("tomorrow 10:00")), timezone="Europe/Paris")
        at = datetime(2026, 6, 1, 21, 30, tzinfo=UTC)  # 23:30 in Paris
        e = advance(start(s, at), at, sequence=s).enrollment
        assert local(e.next_step_due_at, PARIS) == datetime(2026, 6, 2, 10, 0)  # type: ignore[arg-type]

    def test_next_tuesday_at_nine(self) -> None:
        wait = parse_wait("next Tuesday 09:00")
        assert wait == WaitUntil(weekday=1, at=time(9, 0))
        tuesday_10am = datetime(2026, 6, 2, 10, 0, tzinfo=UTC)
        assert add_delay(tuesday_10am, wait, None) == datetime(2026, 6, 9, 9, 0, tzinfo=UTC)
        tuesday_8am = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)
        assert add_delay(tuesday_8am, wait, None) == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)

    def test_parse_wait_keeps_plain_delays(self) -> None:
        assert parse_wait("2 days") == Delay.days(2)
        with pytest.raises(InvalidDelay):
            parse_wait("someday")


class TestExpiry:
    def test_a_step_more_than_its_expiry_late_is_dropped(self) -> None:
        s = seq(step(1), step(2, Delay.days(1), expires_after=Delay.hours(12)), step(3, Delay.days(2)))
        t0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        e = advance(start(s, t0), t0, sequence=s).enrollment
        e = pause(e, t0 + timedelta(hours=1)).enrollment
        back = t0 + timedelta(days=5)
        e = resume(e, back, sequence=s, policy=PausePolicy.BUMP).enrollment
        result = advance(e, back, sequence=s)
        skips = [(ev.position, ev.reason) for ev in result.events if isinstance(ev, StepSkipped)]
        assert skips == [(2, SkipReason.EXPIRED)]
        assert result.send is not None  # step 3 was due too (2 days after step 1) and goes now
        assert result.send.position == 3

    def test_a_step_within_its_expiry_still_goes(self) -> None:
        s = seq(step(1), step(2, Delay.days(1), expires_after=Delay.hours(12)))
        t0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        e = advance(start(s, t0), t0, sequence=s).enrollment
        sent = advance(e, t0 + timedelta(days=1, hours=11), sequence=s).send
        assert sent is not None

    def test_negative_expiry_is_refused(self) -> None:
        with pytest.raises(InvalidDelay):
            step(1, expires_after=Delay.hours(-1))


class TestBadWindows:
    def test_no_allowed_day(self) -> None:
        with pytest.raises(InvalidWindow) as info:
            SendWindow(days=frozenset())
        assert info.value.field == "window.days"

    def test_zero_length_range(self) -> None:
        with pytest.raises(InvalidWindow, match="zero-length") as info:
            SendWindow(start=time(9), end=time(9))
        assert info.value.field == "window.end"

    def test_inverted_range_without_overnight(self) -> None:
        with pytest.raises(InvalidWindow, match="overnight=True") as info:
            SendWindow.parse("17:00-09:00")
        assert info.value.value == time(9)

    def test_bad_day_and_half_range(self) -> None:
        with pytest.raises(InvalidWindow, match="unknown day"):
            SendWindow.parse("funday 09:00-10:00")
        with pytest.raises(InvalidWindow, match="both start and end"):
            SendWindow(start=time(9))
        with pytest.raises(InvalidWindow, match="0 \\(Monday\\) to 6"):
            SendWindow(days=frozenset({7}))

    def test_a_window_must_be_a_send_window(self) -> None:
        with pytest.raises(InvalidWindow, match=r"SendWindow\.parse"):
            step(1, window="business days")


class TestPreview:
    def test_preview_across_a_dst_change(self) -> None:
        s = seq(step(1), step(2, Delay.days(1)), step(3, Delay.hours(24)), timezone="America/New_York")
        plan = preview(s, None, datetime(2026, 3, 7, 14, 0, tzinfo=UTC))
        assert [(p.position, p.local.replace(tzinfo=None)) for p in plan] == [
            (1, datetime(2026, 3, 7, 9, 0)),
            (2, datetime(2026, 3, 8, 9, 0)),  # a calendar day: same local time
            (3, datetime(2026, 3, 9, 9, 0)),  # 24 hours: 24 elapsed hours
        ]

    def test_preview_shows_skipped_steps_and_works_on_drafts(self) -> None:
        s = attrs.evolve(seq(step(1), step(2, Delay.hours(1), active=False)), status=SequenceStatus.DRAFT)
        plan = preview(s, None, datetime(2026, 6, 1, tzinfo=UTC))
        assert [(p.position, p.skipped) for p in plan] == [(1, None), (2, SkipReason.INACTIVE)]


# --------------------------------------------------------------------------- properties

windows = st.builds(
    lambda days, start, length, outside: SendWindow(
        days=days,
        start=None if start is None else time(*divmod(start, 60)),
        end=None if start is None else time(*divmod((start + length) % 1440, 60)),
        overnight=start is not None and start + length >= 1440,
        outside=outside,
    ),
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=st.none() | st.integers(0, 1439),
    length=st.integers(1, 1439),
    outside=st.just(WindowAction.MOVE),
)
around_dst = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
) | st.sampled_from(
    [datetime(2026, m, d, h, tzinfo=UTC) for m, d in ((3, 8), (3, 29), (10, 25), (11, 1), (4, 5)) for h in range(24)]
)


@given(around_dst, windows, zones)
def test_the_next_opening_is_inside_never_earlier_and_the_earliest(
    instant: datetime, window: SendWindow, zone_name: str
) -> None:
    zone = zoneinfo.ZoneInfo(zone_name)
    opening = next_opening(instant, window, zone)
    assert opening >= instant
    assert window.contains(opening.astimezone(zone))
    # the earliest: no whole minute between the instant and the opening is inside
    probe = instant.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while probe < opening:
        assert not window.contains(probe.astimezone(zone)), probe
        probe += timedelta(minutes=1)


@given(around_dst, st.integers(1, 400), zones)
def test_a_calendar_delay_keeps_the_local_time_when_it_exists(instant: datetime, days: int, zone_name: str) -> None:
    zone = zoneinfo.ZoneInfo(zone_name)
    due = add_delay(instant, Delay.days(days), zone)
    wall = instant.astimezone(zone).replace(tzinfo=None) + timedelta(days=days)
    exists = wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
    if exists:
        assert due.astimezone(zone).replace(tzinfo=None) == wall
    else:
        assert due.astimezone(zone).replace(tzinfo=None) > wall  # moved forward out of the gap
    assert due > instant


@given(st.lists(st.tuples(st.integers(0, 72), st.booleans()), min_size=1, max_size=6), around_dst, st.integers(1, 60))
def test_shifting_a_schedule_by_whole_days_keeps_its_order_and_spacing(
    delays: list[tuple[int, bool]], begin: datetime, shift_days: int
) -> None:
    """With exact delays, moving the start by whole days in UTC moves every send by exactly that much."""
    s = seq(*(step(i + 1, Delay.hours(h), active=a) for i, (h, a) in enumerate(delays)))
    shift = timedelta(days=shift_days)
    first = preview(s, None, begin)
    later = preview(s, None, begin + shift)
    assert [(p.position, p.skipped) for p in first] == [(p.position, p.skipped) for p in later]
    assert [p.at + shift for p in first] == [p.at for p in later]


@given(
    st.lists(st.tuples(st.integers(0, 10), st.booleans()), min_size=1, max_size=6),
    windows,
    zones,
    around_dst,
)
def test_every_send_of_a_preview_falls_inside_its_window(
    days: list[tuple[int, bool]], window: SendWindow, zone_name: str, begin: datetime
) -> None:
    s = seq(*(step(i + 1, Delay.days(d) if cal else Delay.hours(d)) for i, (d, cal) in enumerate(days)),
            timezone=zone_name, window=window)  # fmt: skip
    zone = zoneinfo.ZoneInfo(zone_name)
    previous = begin
    for planned in preview(s, None, begin):
        assert planned.skipped is None
        assert window.contains(planned.at.astimezone(zone))
        assert planned.at >= previous
        previous = planned.at


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)), st.integers(2031, 2100))
def test_an_anniversary_lands_exactly_once_a_year(origin: date, year: int) -> None:
    assume(year > origin.year)
    days = [date(year, 1, 1) + timedelta(days=i) for i in range(366)]
    hits = [d for d in days if d.year == year and is_anniversary(origin, d)]
    assert hits == [anniversary_date(origin, year)]
    if (origin.month, origin.day) == (2, 29):
        assert hits[0].day in (28, 29)


@given(
    st.sampled_from(["next monday 09:00", "tomorrow 10:00", "at 9am", "next fri", "sunday 23:30"]), around_dst, zones
)
def test_a_wait_goes_strictly_later_at_the_asked_local_time(text: str, instant: datetime, zone_name: str) -> None:
    wait = WaitUntil.parse(text)
    zone = zoneinfo.ZoneInfo(zone_name)
    due = add_delay(instant, wait, zone)
    assert due > instant
    arrived = due.astimezone(zone)
    if wait.weekday is not None:
        assert arrived.weekday() == wait.weekday
    if wait.at is not None:
        wall = datetime.combine(arrived.date(), wait.at)
        exists = wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
        if exists:
            assert arrived.time().replace(tzinfo=None) == wait.at
    assert due - instant <= timedelta(days=wait.days + 8)


def test_exact_unit_steps_skip_zone_arithmetic() -> None:
    """The hot path: exact delays and no window never convert to local time."""
    s = seq(step(1), step(2, Delay.hours(5)), timezone="Europe/Paris")
    t0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    e = start(s, t0)
    assert advance(e, t0, sequence=s).enrollment.next_step_due_at == t0 + timedelta(hours=5)
    assert EnrollmentStatus.ACTIVE is e.status
