"""Domain warm-up: a day-by-day plan of send limits, and the rate limiter that follows it per sending domain.

Theory of operation
-------------------

Mailbox providers distrust a new sending domain that suddenly sends a lot, so
they publish ramps: 50 emails on the first day, 100 on the second, 500 on the
third, and so on. A :class:`WarmupPlan` is such a ramp: ``limits[0]`` is the
limit on ``start``, ``limits[1]`` the day after, and the last limit holds on
every later day (days before ``start`` count as the first day). Limits never
go down from one day to the next.

A :class:`WarmupLimiter` is a :class:`~dripcore.ports.RateLimiter` with one
budget per sending domain (it is ``keyed``): the tick groups a batch's sends by
the domain of their sender address and asks the limiter, per domain, how many
of them may go today. The sends over the day's limit are not sent: their
enrollments are put off to the next day's opening (midnight in the limiter's
``timezone``, UTC by default) and keep their due time, so they go first then,
in the order they were due. The tick counts them in ``TickReport.deferred``
and in each step's ``deferred`` figure (:class:`~dripcore.ports.StepStats`).

Where the counts live: by default in the limiter's process, as the test
:class:`~dripcore.testing.DailyCap` keeps them, which is right for one worker.
Pass ``store=`` and they live in the store's counters instead, so every worker
(and a restarted one) draws on one budget per domain and day. A worker reserves
by adding what it asks for and reading the total back, then gives back what it
did not get: two workers racing may both come up short for a moment, but they
never send more than the day's limit between them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any

import attrs

from ._checks import MAX_COUNT, check_count, check_day, check_instant
from .errors import InvalidArgument
from .model import UTC, zone
from .ports import RateLimiter, Store

__all__ = ["WarmupLimiter", "WarmupPlan"]

#: The prefix of the store counters a store-backed :class:`WarmupLimiter` keeps (no sequence id may use it).
COUNTER_PREFIX = "warmup:"


def _limits(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidArgument("warmup.limits", value, "expected a list of daily limits such as [50, 100, 500]")
    limits = tuple(value)
    if not limits:
        raise InvalidArgument("warmup.limits", value, "must hold at least one daily limit")
    for i, limit in enumerate(limits):
        check_count(limit, f"warmup.limits[{i}]")
        if i and limit < limits[i - 1]:
            raise InvalidArgument(
                f"warmup.limits[{i}]", limit, f"must not be below the day before's limit ({limits[i - 1]})"
            )
    return tuple(int(limit) for limit in limits)


def _start(_instance: Any, _attribute: Any, value: Any) -> None:
    check_day(value, "warmup.start")


@attrs.frozen(kw_only=True)
class WarmupPlan:
    """A ramp of daily send limits for a new sending domain: ``limits[0]`` on ``start``,
    ``limits[1]`` the next day, ..., the last limit on every day after.

    Raises :class:`~dripcore.errors.InvalidArgument` naming ``warmup.limits[i]`` for a
    negative limit or one below the day before's, and ``warmup.start`` for a start that
    is not a date.

    >>> plan = WarmupPlan(limits=[50, 100, 500], start=date(2026, 12, 1))
    >>> [plan.limit_on(date(2026, 12, d)) for d in (1, 2, 3, 30)]
    [50, 100, 500, 500]
    """

    limits: tuple[int, ...] = attrs.field(converter=_limits)
    """Sends allowed per day from ``start`` on (0 or more, never decreasing); the last holds after."""
    start: date = attrs.field(validator=_start)
    """The calendar day of ``limits[0]``; days before it get that limit too."""

    def limit_on(self, day: date) -> int:
        """The limit on calendar ``day`` (the first day's before ``start``, the last one's after the ramp)."""
        offset = (check_day(day, "day") - self.start).days
        return self.limits[min(max(offset, 0), len(self.limits) - 1)]


def _domain(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip() or "@" in value:
        raise InvalidArgument(field, value, "expected a domain name such as 'news.example.com'")
    if len(value) > 200 or not value.isprintable():
        raise InvalidArgument(field, value, "expected a domain name of at most 200 printable characters")
    return value.lower()


class _Counts:
    """Sends granted per (domain, day), in this process."""

    def __init__(self) -> None:
        self._used: dict[tuple[str, date], int] = {}
        self._lock = threading.Lock()

    def used(self, domain: str, day: date) -> int:
        with self._lock:
            return self._used.get((domain, day), 0)

    def take(self, domain: str, day: date, count: int, limit: int) -> int:
        with self._lock:
            for old in [k for k in self._used if k[1] < day]:  # past days are never asked again
                del self._used[old]
            used = self._used.get((domain, day), 0)
            granted = max(0, min(count, limit - used))
            self._used[(domain, day)] = used + granted
            return granted


class _StoreCounts(_Counts):
    """Sends granted per (domain, day), in the store's counters: one budget for every worker."""

    _NAME = "sent"

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store

    @staticmethod
    def _id(domain: str, day: date) -> str:
        return f"{COUNTER_PREFIX}{domain}:{day.isoformat()}"

    def used(self, domain: str, day: date) -> int:
        return self._store.counters(self._id(domain, day)).get((0, self._NAME), 0)

    def take(self, domain: str, day: date, count: int, limit: int) -> int:
        counter_id = self._id(domain, day)
        self._store.bump([(counter_id, 0, self._NAME, count)])
        total = self._store.counters(counter_id).get((0, self._NAME), 0)
        # ``total`` holds this request and every request added before it (granted or
        # not yet given back), so what is left for this one is never over-granted.
        granted = max(0, min(count, limit - (total - count)))
        if granted < count:
            self._store.bump([(counter_id, 0, self._NAME, granted - count)])
        return granted


class WarmupLimiter(RateLimiter):
    """A rate limiter following a :class:`WarmupPlan` per sending domain.

    ``plans`` maps a domain (``"news.example.com"``, any case) to its plan;
    ``default`` is the plan of every other domain (None: they are not limited).
    ``fallback_domain`` is the domain of the mail sender's own From address,
    used for emails that carry no sender identity (None: those follow
    ``default``). Days run from midnight to midnight in ``timezone`` (an IANA
    name; UTC by default). With ``store``, the counts live in that store's
    counters (under ids starting ``"warmup:"``) and every worker sharing the
    store shares the budget; without it, they live in this object.

    >>> from dripcore.testing import FakeClock
    >>> limiter = WarmupLimiter({"news.example.com": WarmupPlan(limits=[2, 5], start=date(2026, 12, 1))})
    >>> now = datetime(2026, 12, 1, 9, tzinfo=UTC)
    >>> limiter.consume_for("news.example.com", 3, now), limiter.consume_for("other.example.com", 3, now)
    (2, 3)
    >>> limiter.next_opening_for("news.example.com", now)
    datetime.datetime(2026, 12, 2, 0, 0, tzinfo=datetime.timezone.utc)
    """

    keyed = True

    def __init__(
        self,
        plans: Mapping[str, WarmupPlan],
        *,
        default: WarmupPlan | None = None,
        fallback_domain: str | None = None,
        timezone: str = "UTC",
        store: Store | None = None,
    ) -> None:
        if not isinstance(plans, Mapping):
            raise InvalidArgument("plans", plans, "expected a mapping of domain to WarmupPlan")
        checked: dict[str, WarmupPlan] = {}
        for domain, plan in plans.items():
            key = _domain(domain, "plans")
            if not isinstance(plan, WarmupPlan):
                raise InvalidArgument(f"plans[{domain!r}]", plan, "expected a WarmupPlan")
            checked[key] = plan
        if default is not None and not isinstance(default, WarmupPlan):
            raise InvalidArgument("default", default, "expected a WarmupPlan or None")
        if store is not None and not isinstance(store, Store):
            raise InvalidArgument("store", store, "expected a dripcore Store or None")
        self.plans: Mapping[str, WarmupPlan] = checked
        self.default = default
        self.fallback_domain = None if fallback_domain is None else _domain(fallback_domain, "fallback_domain")
        self.timezone = timezone
        self._zone = zone(timezone, "timezone")
        self._counts = _Counts() if store is None else _StoreCounts(store)

    def _day(self, now: datetime) -> date:
        utc = check_instant(now, "now")
        return utc.date() if self._zone is None else utc.astimezone(self._zone).date()

    def _domain_of(self, key: str) -> str:
        key = key.lower()
        return self.fallback_domain if not key and self.fallback_domain is not None else key

    def plan_for(self, domain: str) -> WarmupPlan | None:
        """The plan that limits ``domain`` (``""``: the mail sender's own address), or None."""
        return self.plans.get(self._domain_of(domain), self.default)

    def limit_for(self, domain: str, now: datetime) -> int | None:
        """``domain``'s limit on the day of ``now``; None when no plan limits it."""
        plan = self.plan_for(domain)
        return None if plan is None else plan.limit_on(self._day(now))

    def available_for(self, domain: str, now: datetime) -> int | None:
        """Sends left for ``domain`` on the day of ``now``; None when no plan limits it."""
        limit = self.limit_for(domain, now)
        if limit is None:
            return None
        return max(0, limit - self._counts.used(self._domain_of(domain), self._day(now)))

    def available(self, now: datetime) -> int | None:
        """None: the budget is per domain, and a batch's domains are known only once it is planned."""
        return None

    def consume(self, count: int, now: datetime) -> int:
        """Reserve from the budget of emails with no sender identity (:meth:`consume_for` with ``""``)."""
        return self.consume_for("", count, now)

    def consume_for(self, key: str, count: int, now: datetime) -> int:
        """Grant up to ``count`` of the sends left today for domain ``key``."""
        count = check_count(count, "count", maximum=MAX_COUNT)
        limit = self.limit_for(key, now)
        if limit is None or count == 0:
            return count
        return self._counts.take(self._domain_of(key), self._day(now), count, limit)

    def next_opening_for(self, key: str, now: datetime) -> datetime | None:
        """The next midnight (in ``timezone``) when domain ``key`` has nothing left today; else None."""
        if self.available_for(key, now) != 0:
            return None
        tomorrow = self._day(now) + timedelta(days=1)
        return datetime.combine(tomorrow, time(0), tzinfo=self._zone or UTC).astimezone(UTC)

    def next_opening(self, now: datetime) -> datetime | None:
        """None: one domain's budget running out never stops the others (the sends it
        holds back wait, each until :meth:`next_opening_for` their domain)."""
        return None
