"""The run loop: tick, then sleep until the next due work, a wake-up or a stop, and survive a failing tick."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from .._checks import check_count
from ..errors import (
    InvalidArgument,
    StoreError,
)
from ..ports import (
    SystemClock,
)
from .context import Context, log
from .report import TickReport
from .text import describe
from .tick import tick

__all__ = ["next_wake_at", "run", "stop"]

MAX_IDLE = 366 * 86_400  # seconds: a year (longer waits overflow the platform's timers)


def next_wake_at(ctx: Context) -> datetime | None:
    """When there will next be work: the earliest due enrollment or retry."""
    times = [t for t in (ctx.store.next_due_at(), ctx.store.next_message_at()) if t is not None]
    reopen = ctx.breaker.open_until
    if ctx.rate_limiter is not None:
        limiter = ctx.rate_limiter.next_opening(ctx.now())
        if limiter is not None and (reopen is None or limiter > reopen):
            reopen = limiter
    if reopen is not None:
        times = [max(t, reopen) for t in times]
    return min(times) if times else None


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
    while not ctx.stop.is_set() and not (stop is not None and stop.is_set()):
        ctx.wake.clear()
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
        sleep(ctx, idle_for(ctx, idle), stop)


def idle_for(ctx: Context, idle: float) -> float:
    """Seconds until the next work is due, at most ``idle`` (``idle`` if that can't be told)."""
    try:
        wake_at = next_wake_at(ctx)
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
