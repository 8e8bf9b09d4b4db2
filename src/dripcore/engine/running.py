"""The run loop: tick, then sleep until the next due work, a wake-up or a stop, and survive a failing tick.

The loop also sweeps anniversaries once a day, at ``ctx.anniversary_sweep_at`` (UTC; None: never).
A worker that starts sweeps the latest due day and the ``ctx.anniversary_catch_up_days`` before it
(the days missed while no worker ran); after that, each day once its time has come. Sweeping a day
again is harmless (each enrollment is keyed by the year and never repeated for it), so several
workers, restarts and catch-ups need no shared marker. A failing sweep is logged and retried after
a pause that doubles up to ``idle``; it never stops the loop, nor the ticks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import date, datetime, timedelta

from .._checks import check_count
from ..errors import (
    InvalidArgument,
    StoreError,
)
from ..model import UTC, SequenceStatus, TriggerType
from ..ports import (
    SystemClock,
)
from .context import Context, log
from .enrolling import sweep_anniversaries
from .report import TickReport
from .text import describe
from .tick import tick

__all__ = ["due_sweep_day", "next_sweep_at", "next_wake_at", "run", "stop", "sweep_due"]

MAX_IDLE = 366 * 86_400  # seconds: a year (longer waits overflow the platform's timers)


def next_wake_at(ctx: Context) -> datetime | None:
    """When there will next be work: the earliest due enrollment or retry, or the next
    anniversary sweep while an ACTIVE sequence has an anniversary trigger."""
    times = [t for t in (ctx.store.next_due_at(), ctx.store.next_message_at()) if t is not None]
    sweep_at = next_sweep_at(ctx, ctx.now())
    if sweep_at is not None and any(
        sequence.trigger.type is TriggerType.ANNIVERSARY for sequence in ctx.store.list_sequences(SequenceStatus.ACTIVE)
    ):
        times.append(sweep_at)
    reopen = ctx.breaker.open_until
    if ctx.rate_limiter is not None:
        limiter = ctx.rate_limiter.next_opening(ctx.now())
        if limiter is not None and (reopen is None or limiter > reopen):
            reopen = limiter
    if reopen is not None:
        times = [max(t, reopen) for t in times]
    return min(times) if times else None


def due_sweep_day(ctx: Context, now: datetime) -> date | None:
    """The latest day whose sweep time has come at ``now`` (today, or yesterday before the time); None if off."""
    at = ctx.anniversary_sweep_at
    if at is None:
        return None
    now = now.astimezone(UTC)
    return now.date() if now.time() >= at else now.date() - timedelta(days=1)


def next_sweep_at(ctx: Context, now: datetime) -> datetime | None:
    """The next scheduled sweep after ``now`` (always later than it); None if the sweep is off."""
    day = due_sweep_day(ctx, now)
    if day is None or ctx.anniversary_sweep_at is None:
        return None
    return datetime.combine(day + timedelta(days=1), ctx.anniversary_sweep_at, tzinfo=UTC)


def sweep_due(ctx: Context) -> bool:
    """Sweep each day due and not yet swept by this worker (at its start: the catch-up window too).

    Every day is tried even if one fails; :attr:`Context.swept_through` then stops before the
    first failed day, so the next call sweeps it again (and the later ones, harmlessly). A day
    that keeps failing is given up on once it leaves the catch-up window. Returns whether all
    went well; failures are logged.
    """
    due = due_sweep_day(ctx, ctx.now())
    if due is None or (ctx.swept_through is not None and ctx.swept_through >= due):
        return True
    first = due - timedelta(days=ctx.anniversary_catch_up_days)
    if ctx.swept_through is not None:
        first = max(first, ctx.swept_through + timedelta(days=1))
    failed: date | None = None
    day = first
    while day <= due:
        try:
            created = sweep_anniversaries(ctx, day)
        except Exception as exc:
            if isinstance(exc, StoreError):
                log.warning("anniversary sweep of %s failed (%s)", day, describe(exc))
            else:
                log.exception("anniversary sweep of %s failed", day)
            failed = failed or day
        else:
            if created:
                log.info("anniversary sweep of %s: %d enrolled", day, len(created))
        day += timedelta(days=1)
    ctx.swept_through = due if failed is None else failed - timedelta(days=1)
    return failed is None


def run(
    ctx: Context,
    *,
    stop: threading.Event | None = None,
    idle: float = 30.0,
    on_tick: Callable[[TickReport], None] | None = None,
    max_ticks: int | None = None,
) -> None:
    """Tick until stopped, sleeping until the next due time rather than polling."""
    if not isinstance(idle, (int, float)) or isinstance(idle, bool) or not 0 < idle <= MAX_IDLE:
        raise InvalidArgument("idle", idle, f"must be a number of seconds, more than 0 and at most {MAX_IDLE}")
    if max_ticks is not None:
        check_count(max_ticks, "max_ticks", minimum=1)
    if stop is not None and not isinstance(stop, threading.Event):
        raise InvalidArgument("stop", stop, "must be a threading.Event")
    if on_tick is not None and not callable(on_tick):
        raise InvalidArgument("on_tick", on_tick, "must be a callable taking a TickReport")
    ctx.stop.clear()
    ticks = 0
    backoff = 0.0
    sweep_backoff = 0.0
    sweep_retry_at: datetime | None = None
    while not ctx.stop.is_set() and not (stop is not None and stop.is_set()):
        ctx.wake.clear()
        if sweep_retry_at is None or ctx.now() >= sweep_retry_at:
            if sweep_due(ctx):
                sweep_backoff, sweep_retry_at = 0.0, None
            else:
                sweep_backoff = min(max(sweep_backoff * 2, 0.5), idle)
                sweep_retry_at = ctx.now() + timedelta(seconds=sweep_backoff)
                log.warning("anniversary sweep trying again in %.1f s", sweep_backoff)
        try:
            report = tick(ctx)
        except Exception as exc:
            backoff = min(max(backoff * 2, 0.5), idle)
            if isinstance(exc, StoreError):  # the store already retried what was safe to retry
                log.warning("tick failed (%s); trying again in %.1f s", describe(exc), backoff)
            else:
                log.exception("tick failed; trying again in %.1f s", backoff)
            sleep(ctx, backoff, stop)
            continue
        backoff = 0.0
        ticks += 1
        if on_tick is not None:
            on_tick(report)
        if max_ticks is not None and ticks >= max_ticks:
            return
        if report.busy:
            continue
        sleep(ctx, idle_for(ctx, idle, sweep_retry_at), stop)


def idle_for(ctx: Context, idle: float, also: datetime | None = None) -> float:
    """Seconds until the next work is due (or ``also``), at most ``idle`` (``idle`` if that can't be told)."""
    try:
        wake_at = next_wake_at(ctx)
        if also is not None and (wake_at is None or also < wake_at):
            wake_at = also
        if wake_at is None:
            return idle
        return min(idle, max((wake_at - ctx.now()).total_seconds(), 0.0))
    except Exception:
        log.exception("could not tell when work is next due; waking in %.1f s", idle)
        return idle


def sleep(ctx: Context, seconds: float, stop: threading.Event | None) -> None:
    """Wait for work, a wake-up, or ``seconds``.

    With the real clock the store may hear other processes' writes
    (:meth:`Store.wait_for_work <dripcore.ports.Store.wait_for_work>`);
    a fake clock just moves forward.
    """
    if seconds <= 0:
        return
    # An outside stop event can't wake us: it is looked at every half second, in a loop of
    # short waits that does not tick in between.
    remaining = seconds
    while remaining > 0 and not ctx.wake.is_set() and not (stop is not None and stop.is_set()):
        part = remaining if stop is None else min(remaining, 0.5)
        try:
            if isinstance(ctx.clock, SystemClock):
                if ctx.store.wait_for_work(part, ctx.wake):
                    return  # the store heard work coming
            else:
                ctx.clock.wait(part, ctx.wake)
        except Exception:
            log.exception("waiting for work failed; waiting %.1f s without listening", part)
            ctx.wake.wait(part)
        remaining -= part


def stop(ctx: Context) -> None:
    """Ask :meth:`run` to return after the current batch."""
    ctx.stop.set()
    ctx.wake.set()
