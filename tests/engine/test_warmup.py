"""Domain warm-up: a ramp of daily limits per sending domain, deferrals counted in stats and reports."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from dripcore import (
    Contact,
    Drip,
    Email,
    InvalidArgument,
    InvalidTimezone,
    Limits,
    SenderIdentity,
    Trigger,
    WarmupLimiter,
    WarmupPlan,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.testing import DailyCap, FakeClock, MemoryContacts, RecordingSender
from tests.builders import T0, UTC, World, step, welcome

DAY1 = T0.date()  # Monday 2 March 2026; T0 is 09:00 UTC
NEWS_A = SenderIdentity(from_email="news@a.example.com")
HELLO_B = SenderIdentity(from_email="hello@B.Example.com")  # the domain counts in any case


def ramp(*limits: int, start: date = DAY1) -> WarmupPlan:
    return WarmupPlan(limits=limits, start=start)


class TimedSender(RecordingSender):
    """A recording sender that also notes when (by the fake clock) each email went."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[tuple[datetime, Email]] = []

    def send(self, email: Email) -> str | None:
        self.times.append((self.clock.now(), email))
        return super().send(email)

    def per_day(self) -> Counter[tuple[str, date]]:
        """Emails sent per (sender domain, UTC day)."""
        return Counter(
            (e.sender.from_email.rpartition("@")[2].lower() if e.sender else "", at.date()) for at, e in self.times
        )


def contacts(n: int) -> list[Contact]:
    return [Contact(id=f"c{i:02d}", email=f"c{i:02d}@example.com", first_name=f"C{i}") for i in range(n)]


def newsletter_world(
    limiter: WarmupLimiter, *, store: MemoryStore | None = None, clock: FakeClock | None = None, **drip_kw: object
) -> tuple[World, TimedSender]:
    """A world with two one-step sequences, one per sending domain, and twelve contacts."""
    clock = clock or FakeClock(T0)
    sender = TimedSender(clock)
    world = World(sender=sender, rate_limiter=limiter)
    world.clock = clock
    if store is not None:
        world.store = store
    world.contacts = MemoryContacts(contacts(12))
    world.drip = Drip(
        store=world.store, sender=sender, clock=clock, contacts=world.contacts, rate_limiter=limiter,
        **drip_kw,  # type: ignore[arg-type]
    )  # fmt: skip
    for sequence_id, identity in (("news-a", NEWS_A), ("news-b", HELLO_B)):
        world.drip.save_sequence(
            welcome(id=sequence_id, name=sequence_id, trigger=Trigger(type="manual"), sender=identity, steps=(step(1),))
        )
    return world, sender


def enroll_in_order(world: World, sequence_id: str, contact_ids: list[str]) -> list[str]:
    """Enroll each contact a second after the previous one, so their steps are due in that order."""
    ids = []
    for contact_id in contact_ids:
        world.drip.enroll(sequence_id, contact_id)
        ids.append(contact_id)
        world.clock.advance(timedelta(seconds=1))
    return ids


def tick_for(world: World, days: int) -> int:
    """Tick hourly for ``days`` days; return the sum of the reports' ``deferred``."""
    deferred = 0
    end = world.clock.now() + timedelta(days=days)
    while world.clock.now() < end:
        deferred += world.drip.tick().deferred
        world.clock.advance(timedelta(hours=1))
    return deferred


class TestWarmupPlan:
    def test_the_ramp_goes_day_by_day_and_its_last_limit_holds(self) -> None:
        plan = ramp(50, 100, 500, 1000)
        days = [DAY1 + timedelta(days=n) for n in (-3, 0, 1, 2, 3, 40)]
        assert [plan.limit_on(d) for d in days] == [50, 50, 100, 500, 1000, 1000]

    @pytest.mark.parametrize(
        ("limits", "field"),
        [
            ([50, -1, 100], "warmup.limits[1]"),  # negative
            ([50, 100, 80], "warmup.limits[2]"),  # shrinking
            ([50, 1.5], "warmup.limits[1]"),  # not an integer
            ([50, True], "warmup.limits[1]"),
            ([], "warmup.limits"),
            ("50", "warmup.limits"),
            (None, "warmup.limits"),
        ],
    )
    def test_a_negative_shrinking_or_empty_ramp_is_refused_naming_the_limit(self, limits: object, field: str) -> None:
        with pytest.raises(InvalidArgument) as caught:
            WarmupPlan(limits=limits, start=DAY1)  # type: ignore[arg-type]
        assert caught.value.field == field

    @pytest.mark.parametrize("start", ["2026-03-02", T0, None, 20260302])
    def test_a_start_that_is_not_a_date_is_refused(self, start: object) -> None:
        with pytest.raises(InvalidArgument) as caught:
            WarmupPlan(limits=[50], start=start)  # type: ignore[arg-type]
        assert caught.value.field == "warmup.start"

    def test_a_flat_ramp_is_a_daily_cap(self) -> None:
        assert ramp(100, 100).limit_on(DAY1 + timedelta(days=9)) == 100


class TestWarmupLimiterArguments:
    def test_a_domain_that_is_an_address_is_refused(self) -> None:
        with pytest.raises(InvalidArgument) as caught:
            WarmupLimiter({"news@a.example.com": ramp(5)})
        assert caught.value.field == "plans"

    def test_a_plan_that_is_not_a_warmup_plan_is_refused(self) -> None:
        with pytest.raises(InvalidArgument) as caught:
            WarmupLimiter({"a.example.com": [50, 100]})  # type: ignore[dict-item]
        assert caught.value.field == "plans['a.example.com']"

    def test_an_unknown_timezone_is_refused(self) -> None:
        with pytest.raises(InvalidTimezone) as caught:
            WarmupLimiter({"a.example.com": ramp(5)}, timezone="Mars/Olympus")
        assert caught.value.field == "timezone"

    def test_a_negative_count_is_refused(self) -> None:
        with pytest.raises(InvalidArgument) as caught:
            WarmupLimiter({"a.example.com": ramp(5)}).consume_for("a.example.com", -1, T0)
        assert caught.value.field == "count"


class TestWarmupLimiter:
    def test_each_domain_has_its_own_budget_and_unplanned_domains_are_free(self) -> None:
        limiter = WarmupLimiter({"a.example.com": ramp(2), "B.example.com": ramp(1)})
        assert limiter.consume_for("a.example.com", 3, T0) == 2
        assert limiter.consume_for("b.example.com", 3, T0) == 1
        assert limiter.consume_for("c.example.com", 3, T0) == 3
        assert limiter.available_for("a.example.com", T0) == 0
        assert limiter.available_for("c.example.com", T0) is None

    def test_the_default_plan_limits_every_other_domain_and_the_fallback_names_unsigned_mail(self) -> None:
        limiter = WarmupLimiter({"a.example.com": ramp(2)}, default=ramp(1), fallback_domain="a.example.com")
        assert limiter.consume_for("", 5, T0) == 2  # no sender identity: the mail sender's own domain
        assert limiter.consume_for("a.example.com", 5, T0) == 0
        assert limiter.consume_for("c.example.com", 5, T0) == 1

    def test_the_day_turns_at_midnight_in_the_limiters_zone(self) -> None:
        limiter = WarmupLimiter({"a.example.com": ramp(1, 2)}, timezone="America/New_York")
        late = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)  # still 2 March in New York
        assert limiter.consume_for("a.example.com", 5, late) == 1
        assert limiter.next_opening_for("a.example.com", late) == datetime(2026, 3, 3, 5, 0, tzinfo=UTC)
        assert limiter.consume_for("a.example.com", 5, datetime(2026, 3, 3, 5, 0, tzinfo=UTC)) == 2

    def test_one_domain_running_out_never_puts_the_worker_to_sleep(self) -> None:
        limiter = WarmupLimiter({"a.example.com": ramp(1)}, default=ramp(1))
        limiter.consume_for("a.example.com", 1, T0)
        limiter.consume(1, T0)  # an email with no sender identity
        assert limiter.next_opening(T0) is None
        assert limiter.available(T0) is None

    def test_limiters_on_one_store_share_the_budget_across_restarts(self, tmp_path: Path) -> None:
        plans = {"a.example.com": ramp(3)}
        store = SQLiteStore(tmp_path / "drip.db")
        one, two = WarmupLimiter(plans, store=store), WarmupLimiter(plans, store=store)
        assert one.consume_for("a.example.com", 2, T0) == 2
        assert two.consume_for("a.example.com", 2, T0) == 1
        restarted = WarmupLimiter(plans, store=SQLiteStore(tmp_path / "drip.db"))
        assert restarted.available_for("a.example.com", T0) == 0
        assert restarted.consume_for("a.example.com", 1, T0 + timedelta(days=1)) == 1  # a new day

    def test_racing_workers_on_one_store_never_grant_more_than_the_limit(self) -> None:
        store = MemoryStore()
        limiters = [WarmupLimiter({"a.example.com": ramp(100)}, store=store) for _ in range(8)]
        granted: list[int] = []

        def worker(limiter: WarmupLimiter) -> None:
            for _ in range(40):
                granted.append(limiter.consume_for("a.example.com", 1, T0))

        threads = [threading.Thread(target=worker, args=(limiter,)) for limiter in limiters]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert 0 < sum(granted) <= 100


class TestWarmupInTheEngine:
    def test_each_day_sends_at_most_its_limit_per_domain_and_the_rest_go_on_later_days_in_order(self) -> None:
        limiter = WarmupLimiter({"a.example.com": ramp(2, 3, 10), "b.example.com": ramp(1, 2)})
        world, sender = newsletter_world(limiter)
        order_a = enroll_in_order(world, "news-a", [f"c{i:02d}" for i in range(8)])
        order_b = enroll_in_order(world, "news-b", [f"c{i:02d}" for i in range(5)])
        deferred = tick_for(world, 4)
        day2, day3 = DAY1 + timedelta(days=1), DAY1 + timedelta(days=2)
        assert sender.per_day() == {
            ("a.example.com", DAY1): 2, ("a.example.com", day2): 3, ("a.example.com", day3): 3,
            ("b.example.com", DAY1): 1, ("b.example.com", day2): 2, ("b.example.com", day3): 2,
        }  # fmt: skip
        went = [e for _, e in sender.times]
        assert [e.contact_id for e in went if e.sequence_id == "news-a"] == order_a
        assert [e.contact_id for e in went if e.sequence_id == "news-b"] == order_b
        # a: 6 held on day 1, 3 on day 2; b: 4 on day 1, 2 on day 2
        assert deferred == 15
        assert world.drip.stats("news-a").steps[0].deferred == 9
        assert world.drip.stats("news-b").steps[0].deferred == 6
        assert world.drip.stats("news-a").steps[0].sent == 8

    def test_a_held_send_waits_until_its_domains_next_day(self) -> None:
        limiter = WarmupLimiter({"a.example.com": ramp(1, 5)})
        world, sender = newsletter_world(limiter)
        enroll_in_order(world, "news-a", ["c00", "c01"])
        enroll_in_order(world, "news-b", ["c00", "c01", "c02"])  # b is not warming up: all go
        report = world.drip.tick()
        assert (report.sent, report.deferred) == (4, 1)
        assert world.drip.next_wake_at() == datetime.combine(DAY1 + timedelta(days=1), datetime.min.time(), UTC)
        world.clock.set(datetime.combine(DAY1 + timedelta(days=1), datetime.min.time(), UTC))
        assert world.drip.tick().sent == 1
        assert [e.contact_id for _, e in sender.times if e.sequence_id == "news-a"] == ["c00", "c01"]

    def test_two_workers_on_one_store_share_each_domains_budget(self) -> None:
        store = MemoryStore()
        plans = {"a.example.com": ramp(3, 6)}
        clock = FakeClock(T0)
        small = Limits(batch_size=2)  # so that both workers claim some of the batch
        world_one, sender_one = newsletter_world(
            WarmupLimiter(plans, store=store), store=store, clock=clock, limits=small, worker_id="one"
        )
        world_two, sender_two = newsletter_world(
            WarmupLimiter(plans, store=store), store=store, clock=clock, limits=small, worker_id="two"
        )
        enroll_in_order(world_one, "news-a", [f"c{i:02d}" for i in range(10)])
        while world_one.clock.now() < T0 + timedelta(days=2):
            world_one.drip.tick()
            world_two.drip.tick()
            world_one.clock.advance(timedelta(minutes=30))
        together = sender_one.per_day() + sender_two.per_day()
        assert together == {
            ("a.example.com", DAY1): 3,  # not 3 per worker
            ("a.example.com", DAY1 + timedelta(days=1)): 6,
            ("a.example.com", DAY1 + timedelta(days=2)): 1,  # the last of the ten
        }

    def test_an_unkeyed_limiter_keeps_one_budget_and_its_deferrals_count_in_step_stats(self) -> None:
        world = World(rate_limiter=CapSharedElsewhere(1))
        world.drip.save_sequence(welcome())
        world.drip.enroll("welcome", "ana")
        world.drip.enroll("welcome", "bo")
        assert world.drip.tick().deferred == 1
        assert world.drip.stats("welcome").steps[0].deferred == 1
        world.clock.set(datetime.combine(DAY1 + timedelta(days=1), datetime.min.time(), UTC))
        assert world.drip.tick().sent == 1
        assert world.drip.stats("welcome").steps[0].deferred == 1


class CapSharedElsewhere(DailyCap):
    """A daily cap that can't tell in advance how much is left (another service draws on it too),
    so the tick claims the whole batch and the cap holds sends back after planning."""

    def available(self, now: datetime) -> int | None:
        return None
