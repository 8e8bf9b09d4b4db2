"""Calendar months, ISO 8601 durations and delays in words: what pendulum does for dripcore."""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import zoneinfo
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pendulum
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dripcore import (
    Contact,
    Delay,
    DelayUnit,
    InvalidDelay,
    PlannedStep,
    Sequence,
    SequenceStatus,
    Step,
    WaitUntil,
    add_delay,
    enroll,
    make_converter,
    parse_wait,
    preview,
)
from dripcore.adapters.sqlite import SQLiteStore

UTC = timezone.utc
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
PARIS = zoneinfo.ZoneInfo("Europe/Paris")

#: Every IANA zone this machine knows, Pacific/Apia's missing day and Lord Howe's half hour included.
zones = st.timezone_keys(allow_prefix=False).map(zoneinfo.ZoneInfo)
#: Local wall-clock starts from 1900 to far past the tz database's last rule (POSIX rules take over).
walls = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(4900, 12, 31))


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _exists(wall: datetime, tz: zoneinfo.ZoneInfo) -> bool:
    """True when the naive local ``wall`` is a time the clocks in ``tz`` actually show."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall


def _months_later(wall: datetime, months: int) -> datetime:
    """The oracle, without pendulum: the same day ``months`` later, clamped to the month's last day."""
    year, month0 = divmod(wall.month - 1 + months, 12)
    year += wall.year
    day = min(wall.day, calendar.monthrange(year, month0 + 1)[1])
    return wall.replace(year=year, month=month0 + 1, day=day)


class TestMonths:
    """Delay.months(n) is n calendar months on the contact's local calendar, clamped to the month's end."""

    def test_january_31_plus_one_month_is_the_last_day_of_february(self) -> None:
        assert add_delay(_utc(2026, 1, 31, 9), Delay.months(1), None) == _utc(2026, 2, 28, 9)
        assert add_delay(_utc(2024, 1, 31, 9), Delay.months(1), None) == _utc(2024, 2, 29, 9)
        assert add_delay(_utc(2024, 2, 29, 9), Delay.months(12), None) == _utc(2025, 2, 28, 9)
        assert add_delay(_utc(2026, 3, 31, 9), Delay.months(1), None) == _utc(2026, 4, 30, 9)

    def test_local_wall_time_is_kept_across_daylight_saving(self) -> None:
        start = datetime(2026, 3, 1, 9, tzinfo=PARIS)  # 09:00 CET, winter time
        due = add_delay(start.astimezone(UTC), Delay.months(1), PARIS)
        assert due.astimezone(PARIS).replace(tzinfo=None) == datetime(2026, 4, 1, 9)  # 09:00 CEST
        assert due - start.astimezone(UTC) == timedelta(days=31, hours=-1)

    def test_a_month_that_lands_in_a_spring_forward_gap_moves_forward_by_the_gap(self) -> None:
        start = datetime(2026, 2, 8, 2, 30, tzinfo=NEW_YORK)  # New York skips 02:00-03:00 on 8 March 2026
        due = add_delay(start.astimezone(UTC), Delay.months(1), NEW_YORK)
        assert due.astimezone(NEW_YORK).replace(tzinfo=None) == datetime(2026, 3, 8, 3, 30)

    def test_a_month_that_lands_on_a_repeated_hour_takes_its_first_occurrence(self) -> None:
        start = datetime(2026, 10, 1, 1, 30, tzinfo=NEW_YORK)  # 01:30 happens twice on 1 November 2026
        due = add_delay(start.astimezone(UTC), Delay.months(1), NEW_YORK)
        assert due == _utc(2026, 11, 1, 5, 30)  # 01:30 EDT, the first one

    def test_zero_months_is_no_delay(self) -> None:
        start = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=NEW_YORK).astimezone(UTC)  # the second 01:30
        assert add_delay(start, Delay.months(0), NEW_YORK) == start

    def test_months_are_a_calendar_unit_with_a_nominal_length_of_30_days(self) -> None:
        delay = Delay.months(2)
        assert delay.unit is DelayUnit.MONTHS
        assert delay.is_calendar
        assert delay.calendar_months == 2
        assert delay.calendar_days == 0
        assert delay.nominal == timedelta(days=60)
        assert (str(Delay.months(1)), str(delay)) == ("1 month", "2 months")
        assert Delay.days(3).calendar_months == 0

    def test_at_most_120_months(self) -> None:
        assert Delay.months(120).amount == 120
        with pytest.raises(InvalidDelay) as raised:
            Delay.months(121)
        assert (raised.value.field, raised.value.value) == ("delay.amount", 121)
        with pytest.raises(InvalidDelay):
            Delay.months(-1)

    def test_a_monthly_step_goes_on_the_last_day_of_a_shorter_month(self) -> None:
        sequence = Sequence(
            id="monthly",
            name="Monthly",
            status=SequenceStatus.ACTIVE,
            steps=(
                Step(position=1, subject="Welcome", text="."),
                Step(position=2, delay=Delay.months(1), subject="A month in", text="."),
                Step(position=3, delay=Delay.months(1), subject="Two months in", text="."),
            ),
        )
        ana = Contact(id="ana", email="ana@example.com", timezone="Europe/Paris")
        start = datetime(2026, 1, 31, 9, tzinfo=PARIS).astimezone(UTC)
        plan = preview(sequence, ana, start)
        assert [f"{p.local:%Y-%m-%d %H:%M %Z}" for p in plan] == [
            "2026-01-31 09:00 CET",
            "2026-02-28 09:00 CET",
            "2026-03-28 09:00 CET",  # a month after the 28th: delays count from the last send
        ]
        assert [p.after for p in plan] == ["immediately", "1 month", "1 month 4 weeks"]
        enrollment = enroll(sequence, ana, start, enrollment_id="e1").enrollment
        assert enrollment.next_step_due_at == start


@given(walls, st.integers(1, 120), zones)
def test_a_month_keeps_the_day_clamped_and_the_local_time(wall: datetime, months: int, tz: zoneinfo.ZoneInfo) -> None:
    """n >= 1 months later: strictly later, on min(day, days in the target month), at the same local time."""
    start = wall.replace(tzinfo=UTC)
    start_local = start.astimezone(tz).replace(tzinfo=None)
    due = add_delay(start, Delay.months(months), tz)
    local = due.astimezone(tz).replace(tzinfo=None)
    target = _months_later(start_local, months)
    assert due > start
    assert target.day == min(start_local.day, calendar.monthrange(target.year, target.month)[1])
    if _exists(target, tz):
        assert local == target
        assert local.time() == start_local.time()
    else:  # a local time the clocks skip: moved forward by the gap, never backwards
        assert target < local <= target + timedelta(days=1)


@given(walls, st.integers(1, 120))
def test_months_add_up_like_pendulum_in_utc(wall: datetime, months: int) -> None:
    """Without a zone, a month delay is exactly pendulum's UTC month arithmetic."""
    start = wall.replace(tzinfo=UTC)
    assert add_delay(start, Delay.months(months), None) == pendulum.instance(start).add(months=months)


ISO_DURATIONS = [
    ("P3D", Delay.days(3)),
    ("PT30M", Delay.minutes(30)),
    ("P1W", Delay.weeks(1)),
    ("P2W", Delay.weeks(2)),
    ("P1M", Delay.months(1)),
    ("P1Y", Delay.months(12)),
    ("P1Y2M", Delay.months(14)),
    ("PT1H30M", Delay.minutes(90)),
    ("PT1.5H", Delay.minutes(90)),
    ("PT2H", Delay.hours(2)),
    ("PT120M", Delay.hours(2)),
    ("PT24H", Delay.hours(24)),  # exact: not a calendar day
    ("P1D", Delay.days(1)),
    ("P14D", Delay.weeks(2)),
    ("P10D", Delay.days(10)),
    ("PT45S", Delay.seconds(45)),
    ("PT1M30S", Delay.seconds(90)),
    ("P0DT2H", Delay.hours(2)),
    ("P0D", Delay.immediately()),
    ("PT0S", Delay.immediately()),
    ("p3d", Delay.days(3)),
    ("  P1M ", Delay.months(1)),
]


class TestISODurations:
    """Delay.parse reads ISO 8601 durations with pendulum's parser, into one unit that says them exactly."""

    @pytest.mark.parametrize(("text", "expected"), ISO_DURATIONS)
    def test_iso_duration(self, text: str, expected: Delay) -> None:
        assert Delay.parse(text) == expected

    @pytest.mark.parametrize(
        ("text", "why"),
        [
            ("P1DT2H", "mixes calendar days or months with clock time"),
            ("P1MT1H", "mixes calendar days or months with clock time"),
            ("P1M3D", "mixes months with days"),
            ("P1.5D", "whole"),
            ("P0.5W", "whole"),
            ("PT0.5S", "whole number of seconds"),
            ("P", "not an ISO 8601 duration"),
            ("PT", "not an ISO 8601 duration"),
            ("P1DT", "not an ISO 8601 duration"),
            ("P1W3D", "not an ISO 8601 duration"),
            ("P3X", "not an ISO 8601 duration"),
            ("P2026-03-02", "not an ISO 8601 duration"),
            ("PT1H2026", "not an ISO 8601 duration"),
            ("P99999999999999999999Y", "not an ISO 8601 duration"),
            ("P 3 D", "not an ISO 8601 duration"),
            ("-P1D", "ISO 8601 duration such as 'P3D'"),
        ],
    )
    def test_refused_durations_name_the_field_and_the_text(self, text: str, why: str) -> None:
        with pytest.raises(InvalidDelay, match=why) as raised:
            Delay.parse(text)
        assert (raised.value.field, raised.value.value) == ("delay", text)

    @pytest.mark.parametrize(("text", "amount"), [("P121M", 121), ("P11Y", 132), ("PT999999999H", 999999999)])
    def test_too_long_durations_are_refused_by_the_maximum(self, text: str, amount: int) -> None:
        with pytest.raises(InvalidDelay, match="3660-day maximum") as raised:
            Delay.parse(text)
        assert raised.value.value == amount

    @pytest.mark.parametrize(("text", "expected"), [("1 month", 1), ("2 months", 2), ("after 3 mo", 3)])
    def test_months_in_words(self, text: str, expected: int) -> None:
        assert Delay.parse(text) == Delay.months(expected)

    def test_parse_wait_reads_iso_durations_and_explains_refusals(self) -> None:
        assert parse_wait("P1M") == Delay.months(1)
        assert isinstance(parse_wait("next tuesday 09:00"), WaitUntil)
        with pytest.raises(InvalidDelay, match="mixes calendar"):
            parse_wait("P1DT2H")

    def test_isoformat_writes_each_unit(self) -> None:
        delays = [Delay.seconds(5), Delay.minutes(90), Delay.hours(24), Delay.days(3), Delay.weeks(1), Delay.months(2)]
        assert [d.isoformat() for d in delays] == ["PT5S", "PT90M", "PT24H", "P3D", "P1W", "P2M"]


@given(st.text(alphabet="PTYMWDHS0123456789.,-: ", max_size=14).map(lambda s: "P" + s))
def test_any_text_that_looks_like_a_duration_is_a_delay_or_invalid_delay(text: str) -> None:
    """Whatever the text, Delay.parse gives a Delay or raises InvalidDelay: no pendulum error escapes."""
    error: InvalidDelay | None = None
    try:
        Delay.parse(text)
    except InvalidDelay as refused:
        error = refused
    assert error is None or error.field in ("delay", "delay.amount")


_longest = {DelayUnit.SECONDS: 3660 * 86400, DelayUnit.MINUTES: 3660 * 1440, DelayUnit.HOURS: 3660 * 24,
            DelayUnit.DAYS: 3660, DelayUnit.WEEKS: 3660 // 7, DelayUnit.MONTHS: 120}  # fmt: skip
any_delays = st.sampled_from(list(DelayUnit)).flatmap(
    lambda unit: st.builds(Delay, amount=st.integers(0, _longest[unit]), unit=st.just(unit))
)


@given(any_delays, walls, zones)
def test_iso_round_trip_schedules_the_same(delay: Delay, wall: datetime, tz: zoneinfo.ZoneInfo) -> None:
    """parse(d.isoformat()) is d, or d in a coarser unit that lands on the same instant from anywhere."""
    again = Delay.parse(delay.isoformat())
    assert again.is_calendar == delay.is_calendar or delay.is_zero
    assert again.nominal == delay.nominal
    assert Delay.parse(again.isoformat()) == again
    start = wall.replace(tzinfo=tz).astimezone(UTC)
    assert add_delay(start, again, tz) == add_delay(start, delay, tz)


@given(any_delays)
def test_delays_round_trip_through_json(delay: Delay) -> None:
    conv = make_converter()
    assert conv.structure(json.loads(json.dumps(conv.unstructure(delay))), Delay) == delay


def test_a_sequence_with_monthly_steps_round_trips_through_sqlite(tmp_path: Path) -> None:
    sequence = Sequence(
        id="monthly",
        name="Monthly",
        steps=(
            Step(position=1, subject="Hi", text="."),
            Step(position=2, delay=Delay.months(3), subject="A quarter in", text=".", expires_after=Delay.months(1)),
        ),
    )
    assert make_converter().unstructure(sequence)["steps"][1]["delay"] == {"amount": 3, "unit": "months"}
    with SQLiteStore(tmp_path / "drip.db") as store:
        store.save_sequence(sequence)
    with SQLiteStore(tmp_path / "drip.db") as store:
        assert store.get_sequence("monthly") == sequence


class TestDelaysInWords:
    """preview() says how long after the start each step goes, in English, whatever pendulum's locale."""

    def test_after_counts_on_the_local_calendar(self) -> None:
        sequence = Sequence(
            id="dst",
            name="DST",
            steps=(
                Step(position=1, subject="Saturday", text="."),
                Step(position=2, delay=Delay.hours(24), subject="24 hours later", text="."),
                Step(position=3, delay=Delay.days(1), subject="A calendar day later", text="."),
                Step(position=4, delay=Delay.parse("PT90M"), subject="90 minutes later", text="."),
            ),
        )
        bo = Contact(id="bo", email="bo@example.com", timezone="America/New_York")
        start = datetime(2026, 3, 7, 9, tzinfo=NEW_YORK).astimezone(UTC)
        plan = preview(sequence, bo, start)
        assert [p.after for p in plan] == ["immediately", "1 day 1 hour", "2 days 1 hour", "2 days 2 hours 30 minutes"]
        assert all(p.start == start for p in plan)

    def test_an_hour_across_the_repeated_hour_is_one_hour(self) -> None:
        """When the clocks fall back, 01:30 EDT + 1 hour is 01:30 EST: the same wall time, an hour later."""
        sequence = Sequence(
            id="fall",
            name="Fall",
            steps=(
                Step(position=1, subject="a", text="."),
                Step(position=2, delay=Delay.hours(1), subject="b", text="."),
                Step(position=3, delay=Delay.minutes(30), subject="c", text="."),
            ),
        )
        bo = Contact(id="bo", email="bo@example.com", timezone="America/New_York")
        plan = preview(sequence, bo, _utc(2026, 11, 1, 5, 30))  # 01:30 EDT, the first one
        assert [f"{p.local:%H:%M %Z}" for p in plan] == ["01:30 EDT", "01:30 EST", "02:00 EST"]
        assert [p.after for p in plan] == ["immediately", "1 hour", "1 hour 30 minutes"]

    def test_words_are_english_whatever_the_locale(self) -> None:
        sequence = Sequence(id="m", name="M", steps=(Step(position=1, delay=Delay.months(2), subject="x", text="."),))
        start = _utc(2026, 1, 31, 9)
        before = pendulum.get_locale()
        pendulum.set_locale("fr")
        try:
            assert [p.after for p in preview(sequence, None, start)] == ["2 months"]
        finally:
            pendulum.set_locale(before)

    def test_a_step_built_without_a_start_has_no_after(self) -> None:
        plan = preview(
            Sequence(id="s", name="S", steps=(Step(position=1, subject="x", text="."),)), None, _utc(2026, 1, 1)
        )
        step = plan[0]
        bare = PlannedStep(position=1, name=step.name, subject="x", at=step.at, local=step.local)
        assert bare.after is None


def test_exact_and_day_delays_do_not_import_pendulum() -> None:
    """pendulum stays off the hot path: only months, ISO text and words in previews import it."""
    code = """
import sys
from datetime import datetime, timezone
from dripcore import Contact, Delay, Sequence, SequenceStatus, Step, advance, enroll, parse_wait
from dripcore.model import zone
seq = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=(
    Step(position=1, subject="a", text="."),
    Step(position=2, delay=Delay.parse("2 days"), subject="b", text="."),
    Step(position=3, delay=parse_wait("36h"), subject="c", text="."),
))
contact = Contact(id="c", email="c@example.com", timezone="Europe/Paris")
now = datetime(2026, 3, 28, 9, tzinfo=timezone.utc)
e = enroll(seq, contact, now, enrollment_id="e").enrollment
for _ in range(4):
    e = advance(e, e.next_step_due_at or now, sequence=seq, contact=contact).enrollment
assert "pendulum" not in sys.modules, "exact and day delays imported pendulum"
Delay.parse("P1M")
assert "pendulum" in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "ok", result.stderr
