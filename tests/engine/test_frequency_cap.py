"""A frequency cap across sequences: at most N emails per contact per local day (or rolling window)."""

from __future__ import annotations

import zoneinfo
from collections import Counter
from datetime import datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dripcore import (
    CapAction,
    Contact,
    Delay,
    Drip,
    DripcoreError,
    FrequencyCap,
    OutboxStatus,
    Sequence,
    SequenceStatus,
    Step,
    Trigger,
    ValidationError,
    advance,
    planning,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.ports import Store
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def sequence(sequence_id: str, *hours: int) -> Sequence:
    steps = tuple(
        Step(position=i + 1, delay=Delay.hours(h), subject=f"{sequence_id} {i + 1}", text="x")
        for i, h in enumerate(hours)
    )
    return Sequence(id=sequence_id, name=sequence_id, status=SequenceStatus.ACTIVE, steps=steps,
                    trigger=Trigger(type="manual"))  # fmt: skip


def world(
    cap: FrequencyCap, contacts: list[Contact], store: Store | None = None
) -> tuple[Drip, FakeClock, RecordingSender]:
    clock = FakeClock(T0)
    sender = RecordingSender()
    drip = Drip(store=store or MemoryStore(), sender=sender, clock=clock, contacts=MemoryContacts(contacts),
                frequency_cap=cap)  # fmt: skip
    return drip, clock, sender


def drain(drip: Drip, clock: FakeClock, until: datetime) -> None:
    while clock.now() < until:
        drip.tick()
        wake = drip.next_wake_at()
        if wake is None or wake >= until:
            break
        clock.set(max(wake, clock.now()))
    drip.tick()


ANA = Contact(id="ana", email="ana@example.com", timezone="Asia/Tokyo")


def test_third_email_of_the_day_waits_for_local_midnight() -> None:
    drip, clock, sender = world(FrequencyCap(per_day=2), [ANA])
    for sequence_id in ("a", "b", "c"):
        drip.save_sequence(sequence(sequence_id, 0))
        drip.enroll(sequence_id, "ana")
    report = drip.tick()
    assert (report.sent, report.deferred) == (2, 1)
    tokyo_midnight = datetime(2026, 6, 2, 0, 0, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo"))
    assert drip.next_wake_at() == tokyo_midnight.astimezone(UTC)
    clock.set(tokyo_midnight)
    assert drip.tick().sent == 1
    assert len(sender.sent) == 3


def test_skip_records_frequency_cap() -> None:
    drip, _clock, sender = world(FrequencyCap(per_day=1, over=CapAction.SKIP), [ANA])
    drip.save_sequence(sequence("a", 0))
    drip.save_sequence(sequence("b", 0, 1))
    drip.enroll("a", "ana")
    drip.enroll("b", "ana")
    drip.tick()
    assert len(sender.sent) == 1
    stats = drip.stats("b") if sender.sent[0].sequence_id == "a" else drip.stats("a")
    assert stats.steps[0].skipped == {"frequency cap": 1}


def test_rolling_window_cap() -> None:
    cap = FrequencyCap(per_window=2, window=timedelta(hours=24))
    drip, clock, _sender = world(cap, [Contact(id="bo", email="bo@example.com")])
    drip.save_sequence(sequence("a", 0, 1, 1, 1))
    drip.enroll("a", "bo")
    drain(drip, clock, T0 + timedelta(days=3))
    times = [m.created_at for m in drip.store.find_messages(status=OutboxStatus.DELIVERED, limit=10)]
    assert len(times) == 4
    for t in times:
        assert sum(t - timedelta(hours=24) < u <= t for u in times) <= 2


def test_bad_caps_and_stores_without_the_capability() -> None:
    with pytest.raises(ValidationError, match="per_day"):
        FrequencyCap(per_day=0)
    with pytest.raises(ValidationError, match="go together"):
        FrequencyCap(per_window=3)
    with pytest.raises(ValidationError, match="give per_day"):
        FrequencyCap()

    class Bare(MemoryStore):
        capabilities = frozenset()

    with pytest.raises(DripcoreError, match="frequency_cap"):
        world(FrequencyCap(per_day=1), [ANA], store=Bare())


zones = st.sampled_from(["UTC", "Asia/Tokyo", "America/New_York", "Europe/Paris", "Pacific/Chatham", "Asia/Kathmandu"])


@settings(max_examples=40, deadline=None)
@given(
    per_day=st.integers(1, 3),
    over=st.sampled_from(CapAction),
    plans=st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=4), min_size=1, max_size=4),
    people=st.lists(st.tuples(zones, st.integers(0, 47)), min_size=1, max_size=3),
)
def test_no_contact_ever_exceeds_the_cap(
    per_day: int, over: CapAction, plans: list[list[int]], people: list[tuple[str, int]]
) -> None:
    contacts = [Contact(id=f"c{i}", email=f"c{i}@example.com", timezone=z) for i, (z, _) in enumerate(people)]
    drip, clock, sender = world(FrequencyCap(per_day=per_day, over=over), contacts)
    for i, hours in enumerate(plans):
        drip.save_sequence(sequence(f"s{i}", *hours))
    pending = sorted((T0 + timedelta(hours=h), c.id) for c, (_, h) in zip(contacts, people, strict=True))
    per_contact = sum(len(p) for p in plans)
    longest = max(h for _, h in people) + max(sum(p) for p in plans)
    # long enough for every step to get its slot
    end = T0 + timedelta(hours=longest) + timedelta(days=per_contact // per_day + 3)
    while clock.now() < end:
        while pending and pending[0][0] <= clock.now():
            _, contact_id = pending.pop(0)
            for i in range(len(plans)):
                drip.enroll(f"s{i}", contact_id)
        drip.tick()
        candidates = [end] + [t for t, _ in pending[:1]]
        wake = drip.next_wake_at()
        if wake is not None:
            candidates.append(max(wake, clock.now() + timedelta(seconds=1)))
        clock.set(min(candidates))
    per_local_day: Counter[tuple[str, object]] = Counter()
    by_id = {c.id: c for c in contacts}
    for message in drip.store.find_messages(status=OutboxStatus.DELIVERED, limit=10_000):
        zone = zoneinfo.ZoneInfo(by_id[message.contact_id].timezone or "UTC")
        per_local_day[(message.contact_id, message.created_at.astimezone(zone).date())] += 1
    assert all(n <= per_day for n in per_local_day.values()), per_local_day
    if over is CapAction.WAIT:
        # nothing is lost: every step of every plan went, just later
        assert len(sender.sent) == per_contact * len(contacts)


# --------------------------------------------------------------------------- the pure planner agrees with the engine


@settings(max_examples=25, deadline=None)
@given(
    per_day=st.none() | st.integers(1, 2),
    per_window=st.none() | st.integers(1, 2),
    over=st.sampled_from(CapAction),
    plans=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=3), min_size=1, max_size=3),
    people=st.lists(zones, min_size=1, max_size=2),
    gaps=st.lists(st.integers(1, 300), min_size=5, max_size=30),
)
def test_the_planner_decides_as_the_engine_does(
    per_day: int | None,
    per_window: int | None,
    over: CapAction,
    plans: list[list[int]],
    people: list[str],
    gaps: list[int],
) -> None:
    """Drip (one enrollment per tick) and planning.plan_batch, given the store's counts, leave the same enrollment."""
    if per_day is None and per_window is None:
        per_day = 1
    window = None if per_window is None else timedelta(hours=6)
    contacts = [Contact(id=f"c{i}", email=f"c{i}@example.com", timezone=z) for i, z in enumerate(people)]
    clock = FakeClock(T0)
    drip = Drip(store=MemoryStore(), sender=RecordingSender(), clock=clock, contacts=MemoryContacts(contacts),
                frequency_cap=FrequencyCap(per_day=per_day, per_window=per_window, window=window, over=over),
                batch_size=1)  # fmt: skip
    pure_cap = planning.FrequencyCap(
        per_day=per_day, per_window=per_window, window=window, over=planning.CapAction(over.value)
    )
    sequences = {}
    for i, hours in enumerate(plans):
        sequences[f"s{i}"] = drip.save_sequence(sequence(f"s{i}", *hours))
        for contact in contacts:
            drip.enroll(f"s{i}", contact.id)
    by_id = {c.id: c for c in contacts}
    for gap in gaps:
        now = clock.now()
        before = {e.id: e for e in drip.store.find_enrollments(limit=1000)}
        drip.tick()
        for after in drip.store.find_enrollments(limit=1000):
            was = before[after.id]
            if after.version == was.version:
                continue
            item = planning.BatchItem(
                enrollment=was, sequence=sequences[was.sequence_id], contact=by_id[was.contact_id]
            )
            counts = {q: drip.store.count_messages(q.contact_id, q.start, q.end) - _sent_now(drip, q, after.id, now)
                      for q in planning.cap_queries([item], now, pure_cap)}  # fmt: skip
            decision = planning.plan_batch([item], now, cap=pure_cap, counts=counts).decisions[0]
            assert decision.result is not None
            planned = decision.result.enrollment
            if after.status.is_terminal and not planned.status.is_terminal:
                # the tick completed it once its last email went: that is the next advance
                planned = advance(planned, now, sequence=item.sequence, contact=item.contact).enrollment
            assert attrs.evolve(after, version=0) == attrs.evolve(planned, version=0)
        wake = drip.next_wake_at()  # mostly straight to the next work, sometimes a while later
        if wake is not None and gap % 3:
            clock.set(max(wake, now + timedelta(seconds=1)))
        else:
            clock.advance(timedelta(minutes=gap))


def _sent_now(drip: Drip, query: planning.CapQuery, enrollment_id: str, now: datetime) -> int:
    """The message the tick itself queued for ``enrollment_id`` (the planner counts what was there before)."""
    return sum(
        m.enrollment_id == enrollment_id and m.created_at == now and query.start <= m.created_at < query.end
        for m in drip.store.find_messages(limit=1000)
        if m.contact_id == query.contact_id
    )
