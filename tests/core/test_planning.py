"""The batch planner: a tick's decisions from gathered inputs, the frequency cap's verdict and its SKIP/WAIT policy."""

from __future__ import annotations

import zoneinfo
from collections import Counter
from datetime import datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dripcore import (
    Contact,
    Delay,
    Enrollment,
    InvalidArgument,
    Sequence,
    SequenceStatus,
    SkipReason,
    Step,
    StepSkipped,
    ValidationError,
    advance,
    enroll,
)
from dripcore.planning import (
    BatchItem,
    CapAction,
    CapQuery,
    Decision,
    FrequencyCap,
    cap_queries,
    cap_verdict,
    plan_batch,
)
from dripcore.scheduler import defer, resolve_zone
from tests.strategies import contacts, instants, sequences

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)

#: Zones with DST changes at or near midnight, a 45-minute offset, and the date line.
cap_zones = st.sampled_from(
    ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Paris", "Pacific/Chatham", "Asia/Kathmandu",
     "America/Santiago", "America/Havana", "Asia/Beirut", "Pacific/Apia", "Australia/Lord_Howe"]
)  # fmt: skip


def valid_cap(**kw: object) -> FrequencyCap:
    return FrequencyCap(**kw)  # type: ignore[arg-type]


@st.composite
def cap_settings(draw: st.DrawFn) -> FrequencyCap:
    per_day = draw(st.none() | st.integers(1, 3))
    per_window = draw(st.none() | st.integers(1, 3)) if per_day is not None else draw(st.integers(1, 3))
    window = None if per_window is None else draw(st.timedeltas(timedelta(minutes=30), timedelta(days=3)))
    return FrequencyCap(per_day=per_day, per_window=per_window, window=window, over=draw(st.sampled_from(CapAction)))


@st.composite
def batches(draw: st.DrawFn, zoned_contacts: bool = False) -> tuple[list[BatchItem], datetime]:
    """Up to five enrollments of up to three contacts in their own sequences, due or not, at one ``now``."""
    start = draw(instants)
    people = draw(st.lists(contacts(), min_size=1, max_size=3))
    people = [
        attrs.evolve(c, id=f"c{i}", timezone=draw(cap_zones) if zoned_contacts else c.timezone)
        for i, c in enumerate(people)
    ]
    items = []
    for i in range(draw(st.integers(1, 5))):
        sequence = attrs.evolve(draw(sequences()), id=f"s{i}")
        contact = draw(st.sampled_from(people))
        enrollment = enroll(sequence, contact, start, enrollment_id=f"e{i}").enrollment
        items.append(BatchItem(enrollment=enrollment, sequence=sequence, contact=contact))
    now = start + draw(st.timedeltas(timedelta(0), timedelta(days=3)))
    return items, now


# Each example draws up to five whole sequences and their contacts: half the profile's count
# keeps these four properties to a few seconds (the ci profile still runs hundreds).
_BATCH_EXAMPLES = settings(max_examples=max(settings.default.max_examples // 2, 20))


def store_counts(data: st.DataObject, items: list[BatchItem], now: datetime, cap: FrequencyCap) -> dict[CapQuery, int]:
    return {query: data.draw(st.integers(0, 4)) for query in cap_queries(items, now, cap)}


# --------------------------------------------------------------------------- the plan without a cap


@_BATCH_EXAMPLES
@given(batches())
def test_an_uncapped_plan_is_advance_for_each_enrollment(batch: tuple[list[BatchItem], datetime]) -> None:
    items, now = batch
    plan = plan_batch(items, now)
    assert [d.item for d in plan.decisions] == items
    for decision in plan.decisions:
        item = decision.item
        assert decision.result == advance(item.enrollment, now, sequence=item.sequence, contact=item.contact)
        assert decision.capped is None
        assert decision.error is None
        assert decision.idle is (decision.result is not None and decision.result.enrollment is item.enrollment)
    assert plan.events == tuple(e for d in plan.decisions if d.result for e in d.result.events)
    assert set(plan.changes) | set(plan.idle) == set(plan.decisions)


def test_one_enrollment_that_cannot_be_decided_does_not_stop_the_batch() -> None:
    sequence = Sequence(
        id="s", name="S", status=SequenceStatus.ACTIVE, steps=(Step(position=1, subject="a", text="b"),)
    )
    good = enroll(sequence, None, T0, enrollment_id="good", contact_id="ana").enrollment
    stray = attrs.evolve(good, id="stray", sequence_id="other")  # belongs to another sequence
    plan = plan_batch(
        [BatchItem(enrollment=stray, sequence=sequence), BatchItem(enrollment=good, sequence=sequence)], T0
    )
    assert [d.before.id for d in plan.failed] == ["stray"]
    assert "belongs to sequence 'other'" in str(plan.failed[0].error)
    assert [d.before.id for d in plan.sends] == ["good"]


# --------------------------------------------------------------------------- the cap's verdict


@given(cap_settings(), instants, cap_zones, st.integers(0, 5), st.integers(0, 5))
def test_the_verdict_lets_an_email_go_exactly_while_the_counts_are_under_the_cap(
    cap: FrequencyCap, now: datetime, zone_name: str, today: int, window: int
) -> None:
    zone = zoneinfo.ZoneInfo(zone_name)
    reopens = cap_verdict(cap, now, zone, today=today, window=window)
    day_full = cap.per_day is not None and today >= cap.per_day
    window_full = cap.per_window is not None and window >= cap.per_window
    assert (reopens is None) is not (day_full or window_full)
    if reopens is not None:
        assert reopens > now


@given(st.integers(1, 3), instants, cap_zones)
def test_a_full_day_reopens_at_the_first_instant_of_the_next_local_day(per_day: int, now: datetime, name: str) -> None:
    zone = zoneinfo.ZoneInfo(name)
    reopens = cap_verdict(FrequencyCap(per_day=per_day), now, zone, today=per_day)
    assert reopens is not None
    today = now.astimezone(zone).date()
    assert reopens.astimezone(zone).date() == today + timedelta(days=1)
    assert (reopens - timedelta(microseconds=1)).astimezone(zone).date() == today
    # a new day, a new count: at that instant the next email may go
    assert cap_verdict(FrequencyCap(per_day=per_day), reopens, zone, today=0) is None


@given(st.integers(1, 3), st.timedeltas(timedelta(minutes=30), timedelta(days=3)), instants)
def test_a_full_rolling_window_reopens_a_share_of_the_window_later(
    per_window: int, window: timedelta, now: datetime
) -> None:
    cap = FrequencyCap(per_window=per_window, window=window)
    assert cap_verdict(cap, now, None, window=per_window) == now + window / per_window


# --------------------------------------------------------------------------- the cap over a batch


@_BATCH_EXAMPLES
@given(st.data(), cap_settings())
def test_a_batch_never_takes_a_contact_over_the_cap(data: st.DataObject, cap: FrequencyCap) -> None:
    items, now = data.draw(batches(zoned_contacts=True))
    counts = store_counts(data, items, now, cap)
    plan = plan_batch(items, now, cap=cap, counts=counts)
    sends = Counter(d.item.contact_id for d in plan.sends)
    for query, stored in counts.items():
        is_day = query.end - query.start != (cap.window or timedelta(0)) + timedelta(seconds=1)
        limit = cap.per_day if is_day else cap.per_window
        assert limit is not None
        assert sends[query.contact_id] <= max(limit - stored, 0), (query, stored, sends)


@_BATCH_EXAMPLES
@given(st.data(), cap_settings().map(lambda cap: attrs.evolve(cap, over=CapAction.WAIT)))
def test_wait_defers_to_exactly_when_the_cap_reopens(data: st.DataObject, cap: FrequencyCap) -> None:
    items, now = data.draw(batches())
    counts = store_counts(data, items, now, cap)
    plan = plan_batch(items, now, cap=cap, counts=counts)
    queued: Counter[str] = Counter()
    for decision in plan.decisions:
        item = decision.item
        uncapped = advance(item.enrollment, now, sequence=item.sequence, contact=item.contact)
        zone = resolve_zone(item.sequence, item.contact) or UTC
        reopens = None
        if uncapped.send is not None:
            day, rolling = _queries_of(cap, item, now)
            reopens = cap_verdict(
                cap, now, zone,
                today=0 if day is None else counts[day] + queued[item.contact_id],
                window=0 if rolling is None else counts[rolling] + queued[item.contact_id],
            )  # fmt: skip
        if reopens is None:
            assert decision.capped is None
            assert decision.result == uncapped
            queued[item.contact_id] += uncapped.send is not None
        else:
            assert decision.capped is CapAction.WAIT
            assert decision in plan.deferred
            assert decision.result == defer(item.enrollment, reopens, sequence=item.sequence, contact=item.contact)
            assert decision.result is not None
            due = decision.result.enrollment.next_step_due_at
            assert due is not None
            assert due >= reopens


@_BATCH_EXAMPLES
@given(st.data(), cap_settings().map(lambda cap: attrs.evolve(cap, over=CapAction.SKIP)))
def test_skip_passes_over_exactly_the_steps_that_would_go_now(data: st.DataObject, cap: FrequencyCap) -> None:
    """SKIP never skips a step that could go: only while the cap is full, and only steps due now, in order."""
    items, now = data.draw(batches())
    counts = store_counts(data, items, now, cap)
    plan = plan_batch(items, now, cap=cap, counts=counts)
    for decision in plan.decisions:
        item, result = decision.item, decision.result
        assert result is not None
        uncapped = advance(item.enrollment, now, sequence=item.sequence, contact=item.contact)
        if decision.capped is None:
            assert result == uncapped
            continue
        assert decision.capped is CapAction.SKIP
        assert uncapped.send is not None  # the cap only ever touches a send
        capped = [e for e in result.events if isinstance(e, StepSkipped) and e.reason is SkipReason.FREQUENCY_CAP]
        assert capped
        assert list(result.events[: len(capped)]) == capped
        current = item.enrollment
        for event in capped:  # each one was the step advance would send next, at this very instant
            step = advance(current, now, sequence=item.sequence, contact=item.contact).send
            assert step is not None
            assert step.position == event.position
            current = attrs.evolve(current, skipped=current.skipped | {event.position})
        rest = advance(current, now, sequence=item.sequence, contact=item.contact)
        assert rest.send is None  # none was left due now
        assert result == attrs.evolve(rest, events=(*capped, *rest.events))


def _queries_of(cap: FrequencyCap, item: BatchItem, now: datetime) -> tuple[CapQuery | None, CapQuery | None]:
    """The day and rolling queries of one item, picked out of cap_queries by their span."""
    day = rolling = None
    for query in cap_queries([item], now, cap):
        if cap.window is not None and query.end - query.start == cap.window + timedelta(seconds=1):
            rolling = query
        else:
            day = query
    return day, rolling


# --------------------------------------------------------------------------- over many ticks


def hourly(sequence_id: str, steps: int) -> Sequence:
    return Sequence(
        id=sequence_id, name=sequence_id, status=SequenceStatus.ACTIVE,
        steps=tuple(Step(position=i + 1, delay=Delay.hours(i and 1), subject="x", text="x") for i in range(steps)),
    )  # fmt: skip


@given(
    cap=cap_settings(),
    zone=cap_zones,
    plans=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    gaps=st.lists(st.timedeltas(timedelta(minutes=1), timedelta(hours=9)), min_size=1, max_size=40),
)
def test_ticks_of_plans_never_send_more_than_the_cap_in_a_day_or_window(
    cap: FrequencyCap, zone: str, plans: list[int], gaps: list[timedelta]
) -> None:
    """A tick loop on the planner (store counts from what it sent) keeps every day and window in the cap."""
    contact = Contact(id="ana", email="ana@example.com", timezone=zone)
    items = []
    for i, steps in enumerate(plans):
        sequence = hourly(f"s{i}", steps)
        items.append(BatchItem(enrollment=enroll(sequence, contact, T0, enrollment_id=f"e{i}").enrollment,
                               sequence=sequence, contact=contact))  # fmt: skip
    sent: list[datetime] = []
    now = T0
    for gap in gaps:
        counts = {q: sum(q.start <= t < q.end for t in sent) for q in cap_queries(items, now, cap)}
        plan = plan_batch(items, now, cap=cap, counts=counts)
        assert not plan.failed
        sent += [now for _ in plan.sends]
        items = [attrs.evolve(d.item, enrollment=_result_of(d)) for d in plan.decisions]
        now += gap
    local = zoneinfo.ZoneInfo(zone)
    if cap.per_day is not None:
        assert max(Counter(t.astimezone(local).date() for t in sent).values(), default=0) <= cap.per_day
    if cap.per_window is not None and cap.window is not None:
        for i, t in enumerate(sent):
            assert sum(t - cap.window <= u <= t for u in sent[: i + 1]) <= cap.per_window


def _result_of(decision: Decision) -> Enrollment:
    assert decision.result is not None
    return decision.result.enrollment


# --------------------------------------------------------------------------- inputs


def test_earlier_sends_in_the_batch_count_against_later_ones() -> None:
    ana = Contact(id="ana", email="ana@example.com", timezone="Asia/Tokyo")
    items = []
    for sequence_id in ("a", "b", "c"):
        sequence = hourly(sequence_id, 1)
        enrollment = enroll(sequence, ana, T0, enrollment_id=f"e-{sequence_id}").enrollment
        items.append(BatchItem(enrollment=enrollment, sequence=sequence, contact=ana))
    cap = FrequencyCap(per_day=2)
    counts = dict.fromkeys(cap_queries(items, T0, cap), 0)
    plan = plan_batch(items, T0, cap=cap, counts=counts)
    assert [d.before.id for d in plan.sends] == ["e-a", "e-b"]
    assert [d.before.id for d in plan.deferred] == ["e-c"]
    tokyo_midnight = datetime(2026, 6, 2, 0, 0, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo"))
    result = plan.deferred[0].result
    assert result is not None
    assert result.enrollment.next_step_due_at == tokyo_midnight
    assert result.events == ()


def test_cap_queries_name_each_count_once() -> None:
    ana = Contact(id="ana", email="ana@example.com", timezone="Asia/Tokyo")
    sequence = hourly("a", 1)
    item = BatchItem(enrollment=enroll(sequence, ana, T0, enrollment_id="e").enrollment, sequence=sequence, contact=ana)
    cap = FrequencyCap(per_day=1, per_window=2, window=timedelta(days=7))
    day_start = datetime(2026, 6, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo")).astimezone(UTC)
    assert cap_queries([item, item], T0, cap) == (
        CapQuery("ana", day_start, day_start + timedelta(days=1)),
        CapQuery("ana", T0 - timedelta(days=7), T0 + timedelta(seconds=1)),
    )


def test_a_missing_count_is_refused() -> None:
    sequence = hourly("a", 1)
    item = BatchItem(enrollment=enroll(sequence, None, T0, enrollment_id="e", contact_id="ana").enrollment,
                     sequence=sequence)  # fmt: skip
    with pytest.raises(InvalidArgument, match="counts"):
        plan_batch([item], T0, cap=FrequencyCap(per_day=1), counts={})


def test_bad_caps_are_refused() -> None:
    with pytest.raises(ValidationError, match="per_day"):
        FrequencyCap(per_day=0)
    with pytest.raises(ValidationError, match="go together"):
        FrequencyCap(per_window=3)
    with pytest.raises(ValidationError, match="give per_day"):
        FrequencyCap()
    with pytest.raises(ValidationError, match="0 to 3660 days"):
        FrequencyCap(per_window=1, window=timedelta(0))
    with pytest.raises(ValidationError, match="CapAction"):
        valid_cap(per_day=1, over="wait")
