"""Drip's settings as small frozen value objects, and the one place the flat keywords map into them.

:class:`RetryPolicy` says how a message that fails transiently is retried, and
:class:`Limits` how much one worker takes on at a time and for how long. Both
validate at construction and raise :class:`~dripcore.errors.InvalidArgument`
naming the field and the value. ``Drip(...)`` takes them as ``retry=`` and
``limits=``, or the same settings as the flat keywords of earlier versions
(``retry_base=``, ``batch_size=`` ...), mapped here by :func:`settings_from`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time, timedelta
from typing import Any

import attrs

from .._checks import check_count, check_span
from ..errors import InvalidArgument

__all__ = [
    "DEFAULT_CATCH_UP_DAYS",
    "DEFAULT_SWEEP_AT",
    "FLAT_SETTINGS",
    "MAX_CATCH_UP_DAYS",
    "Limits",
    "RetryPolicy",
    "check_catch_up_days",
    "check_sweep_at",
    "settings_from",
]

_SHORTEST = timedelta(microseconds=1)
_LONGEST = timedelta(days=3660)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a message whose send fails transiently is retried.

    The first retry waits ``base``, each next one twice as long, never more
    than ``cap``. A message still failing ``give_up_after`` after it was queued
    (or after ``max_attempts`` attempts, when set) is given up on: a
    ``StepFailed`` with reason ``retries exhausted``, its enrollment held.

    >>> policy = RetryPolicy(base=timedelta(seconds=30), cap=timedelta(minutes=5))
    >>> [policy.backoff(n).total_seconds() for n in (1, 2, 3, 4, 5)]
    [30.0, 60.0, 120.0, 240.0, 300.0]
    """

    base: timedelta = timedelta(minutes=1)
    """How long the first retry waits; each next one waits twice as long as the one before."""
    cap: timedelta = timedelta(hours=1)
    """The longest wait between two attempts."""
    give_up_after: timedelta = timedelta(days=5)
    """How long after it was queued a message still failing is given up on."""
    max_attempts: int | None = None
    """Give up after this many attempts too (1 to 10,000); None: only ``give_up_after`` counts."""

    def __attrs_post_init__(self) -> None:
        for name in ("base", "cap", "give_up_after"):
            check_span(getattr(self, name), f"RetryPolicy.{name}", minimum=_SHORTEST, maximum=_LONGEST)
        if self.max_attempts is not None:
            check_count(self.max_attempts, "RetryPolicy.max_attempts", minimum=1, maximum=10_000)

    def backoff(self, attempts: int) -> timedelta:
        """How long to wait before the next attempt, after ``attempts`` attempts."""
        # The doubling stops once it passes the cap (a huge exponent would overflow a timedelta).
        doublings = min(max(attempts - 1, 0), 40)
        if self.base * 2**doublings >= self.cap:
            return self.cap
        delay: timedelta = self.base * 2**doublings
        return delay

    def gives_up(self, attempts: int, age: timedelta) -> bool:
        """Whether a message that failed ``attempts`` times, queued ``age`` ago, is given up on."""
        return age >= self.give_up_after or (self.max_attempts is not None and attempts >= self.max_attempts)


@attrs.frozen(kw_only=True)
class Limits:
    """How much one worker takes on at a time, and for how long.

    ``batch_size``: enrollments claimed (and messages retried) per tick;
    ``lease``: how long a claim is held (a tick must finish within it);
    ``set_aside_for``: how long a record that failed (a corrupt row, a missing
    contact) waits before it is tried again; ``concurrency``: at most this many
    sends in flight at once (None: the sender's ``max_in_flight``).

    >>> Limits(batch_size=100, concurrency=4).batch_size
    100
    """

    batch_size: int = 500
    lease: timedelta = timedelta(minutes=5)
    set_aside_for: timedelta = timedelta(hours=1)
    concurrency: int | None = None

    def __attrs_post_init__(self) -> None:
        check_count(self.batch_size, "Limits.batch_size", minimum=1, maximum=100_000)
        for name in ("lease", "set_aside_for"):
            check_span(getattr(self, name), f"Limits.{name}", minimum=_SHORTEST, maximum=_LONGEST)
        if self.concurrency is not None:
            check_count(self.concurrency, "Limits.concurrency", minimum=1, maximum=1_000)


#: Each flat keyword of ``Drip(...)`` and the value object field it sets.
FLAT_SETTINGS: Mapping[str, tuple[type[RetryPolicy] | type[Limits], str]] = {
    "retry_base": (RetryPolicy, "base"),
    "retry_cap": (RetryPolicy, "cap"),
    "retry_for": (RetryPolicy, "give_up_after"),
    "max_attempts": (RetryPolicy, "max_attempts"),
    "batch_size": (Limits, "batch_size"),
    "lease": (Limits, "lease"),
    "set_aside_for": (Limits, "set_aside_for"),
    "concurrency": (Limits, "concurrency"),
}


def settings_from(retry: Any, limits: Any, flat: Mapping[str, Any]) -> tuple[RetryPolicy, Limits]:
    """The value objects of ``Drip(retry=..., limits=..., **flat)``: the only place flat keywords map in.

    ``flat`` holds the flat keywords given (None counts as not given). A setting given both
    in a value object and as a flat keyword is an :class:`~dripcore.errors.InvalidArgument`;
    a bad flat value raises one naming the flat keyword.
    """
    objects: dict[type[RetryPolicy] | type[Limits], Any] = {RetryPolicy: retry, Limits: limits}
    for kind, given, name in ((RetryPolicy, retry, "retry"), (Limits, limits, "limits")):
        if given is not None and not isinstance(given, kind):
            raise InvalidArgument(name, given, f"must be a {kind.__name__}, not {type(given).__name__}")
    fields: dict[type[RetryPolicy] | type[Limits], dict[str, Any]] = {RetryPolicy: {}, Limits: {}}
    keyword_of: dict[str, str] = {}
    for keyword, value in flat.items():
        if value is None:
            continue
        kind, field = FLAT_SETTINGS[keyword]
        if objects[kind] is not None:
            raise InvalidArgument(
                keyword, value, f"is set by {'retry' if kind is RetryPolicy else 'limits'}={objects[kind]!r}: give one"
            )
        fields[kind][field] = value
        keyword_of[f"{kind.__name__}.{field}"] = keyword
    built: list[Any] = []
    for kind in (RetryPolicy, Limits):
        if objects[kind] is not None:
            built.append(objects[kind])
            continue
        try:
            built.append(kind(**fields[kind]))
        except InvalidArgument as exc:  # name the keyword the caller wrote, not the field it maps to
            if exc.field not in keyword_of:
                raise
            raise InvalidArgument(keyword_of[exc.field], exc.value, exc.reason) from None
    return built[0], built[1]


#: When the run loop sweeps anniversaries by default: 00:00 UTC, as the reference products do.
DEFAULT_SWEEP_AT = time(0)
#: How many days before the latest due sweep a starting worker sweeps again by default.
DEFAULT_CATCH_UP_DAYS = 1
#: The most days a starting worker looks back (birthday emails much later than that are not wanted).
MAX_CATCH_UP_DAYS = 31


def check_sweep_at(value: Any, field: str = "anniversary_sweep_at") -> time | None:
    """``anniversary_sweep_at``: a time of day read as UTC (naive, or with a zero UTC offset), or None (off).

    Returns it naive. Anything else is an :class:`~dripcore.errors.InvalidArgument` naming ``field``.
    """
    if value is None:
        return None
    if not isinstance(value, time):
        raise InvalidArgument(field, value, "must be a datetime.time (read as UTC), or None to turn the sweep off")
    if value.tzinfo is not None:
        offset = value.utcoffset()
        if offset is None or offset != timedelta(0):
            raise InvalidArgument(field, value, "must be a UTC time of day: naive, or with a zero UTC offset")
    return value.replace(tzinfo=None, fold=0)


def check_catch_up_days(value: Any, field: str = "anniversary_catch_up_days") -> int:
    """``anniversary_catch_up_days``: a whole number of days from 0 to :data:`MAX_CATCH_UP_DAYS`."""
    return check_count(value, field, minimum=0, maximum=MAX_CATCH_UP_DAYS)
