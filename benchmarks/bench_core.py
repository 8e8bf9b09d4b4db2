"""How fast is advance(), the hot path of every dispatch?

Runs advance() over a batch of due enrollments and compares it with the
practical floor: a bare loop doing only what any implementation must do on
the same batch, ``attrs.evolve`` of the enrollment plus ``datetime +
timedelta`` for the next due time. Runs are interleaved (floor, advance,
floor, ...) and the best of each is kept, so a noisy neighbour slows both.

Prints one summary line per figure::

    python benchmarks/bench_core.py            # 100,000 enrollments
    python benchmarks/bench_core.py --n 2000   # the smoke run the test suite uses
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from datetime import time as clock_time

import attrs

from dripcore import Contact, Delay, Enrollment, SendWindow, Sequence, SequenceStatus, Step, advance, enroll

UTC = timezone.utc
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def exact_sequence() -> Sequence:
    """Three steps in exact units: the case that must not pay for zone arithmetic."""
    return Sequence(
        id="welcome",
        name="Welcome",
        status=SequenceStatus.ACTIVE,
        steps=(
            Step(position=1, subject="Welcome", text="Hello"),
            Step(position=2, delay=Delay.hours(24), subject="Tips", text="Tips"),
            Step(position=3, delay=Delay.hours(144), subject="Offer", text="Offer"),
        ),
    )


def calendar_sequence() -> Sequence:
    """The same in calendar days, timed in a contact's zone (DST-aware arithmetic)."""
    return Sequence(
        id="welcome",
        name="Welcome",
        status=SequenceStatus.ACTIVE,
        timezone="Europe/Paris",
        steps=(
            Step(position=1, subject="Welcome", text="Hello"),
            Step(position=2, delay=Delay.days(1), subject="Tips", text="Tips"),
            Step(position=3, delay=Delay.days(6), subject="Offer", text="Offer"),
        ),
    )


def windowed_sequence() -> Sequence:
    """Exact delays, but every step only on business days 08:00-20:00 in the contact's zone."""
    return attrs.evolve(
        exact_sequence(), timezone="America/New_York", window=SendWindow.business_days(clock_time(8), clock_time(20))
    )


def batch(sequence: Sequence, n: int) -> list[Enrollment]:
    start = NOW - timedelta(hours=1)
    return [
        enroll(sequence, None, start, enrollment_id=f"enr-{i}", contact_id=f"contact-{i}").enrollment for i in range(n)
    ]


def floor_loop(enrollments: list[Enrollment], now: datetime) -> int:
    """The practical floor: evolve + datetime arithmetic, nothing else."""
    delay = timedelta(hours=24)
    evolve = attrs.evolve
    count = 0
    for e in enrollments:
        evolve(e, last_step_sent=1, last_step_sent_at=now, next_step_due_at=now + delay)
        count += 1
    return count


def advance_loop(
    enrollments: list[Enrollment], now: datetime, sequence: Sequence, contact: Contact | None = None
) -> int:
    sent = 0
    for e in enrollments:
        if advance(e, now, sequence=sequence, contact=contact).send is not None:
            sent += 1
    return sent


def best_of(repeats: int, fn: Callable[[], int]) -> tuple[float, int]:
    best = float("inf")
    result = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def measure(n: int, repeats: int) -> dict[str, float]:
    exact = exact_sequence()
    calendar = calendar_sequence()
    windowed = windowed_sequence()
    exact_batch = batch(exact, n)
    calendar_batch = batch(calendar, n)
    windowed_batch = batch(windowed, n)
    not_due = [advance(e, NOW, sequence=exact).enrollment for e in exact_batch[: max(1, n // 10)]]

    floor_times, exact_times, calendar_times, window_times, idle_times = [], [], [], [], []
    for _ in range(repeats):  # interleaved, so drift on the machine hits every contender
        floor_times.append(best_of(1, lambda: floor_loop(exact_batch, NOW))[0])
        t, sent = best_of(1, lambda: advance_loop(exact_batch, NOW, exact))
        assert sent == n, f"every enrollment was due, {sent} of {n} sent"
        exact_times.append(t)
        t, sent = best_of(1, lambda: advance_loop(calendar_batch, NOW, calendar))
        assert sent == n
        calendar_times.append(t)
        t, sent = best_of(1, lambda: advance_loop(windowed_batch, NOW, windowed))
        assert sent == n
        window_times.append(t)
        idle_times.append(best_of(1, lambda: advance_loop(not_due, NOW, exact))[0] * n / len(not_due))

    floor, exact_t, calendar_t, idle = min(floor_times), min(exact_times), min(calendar_times), min(idle_times)
    window_t = min(window_times)
    return {
        "n": n,
        "floor_rate": n / floor,
        "advance_rate": n / exact_t,
        "calendar_rate": n / calendar_t,
        "window_rate": n / window_t,
        "idle_rate": n / idle,
    }


def report(figures: dict[str, float]) -> list[str]:
    floor = figures["floor_rate"]
    n = int(figures["n"])
    return [
        f"floor (attrs.evolve + datetime+timedelta): {floor:,.0f} enrollments/s on {n:,} due enrollments",
        f"advance() exact-unit steps: {figures['advance_rate']:,.0f} calls/s = "
        f"{figures['advance_rate'] / floor:.0%} of floor (target >= 40%)",
        f"advance() calendar-day steps in Europe/Paris: {figures['calendar_rate']:,.0f} calls/s = "
        f"{figures['calendar_rate'] / floor:.0%} of floor",
        f"advance() exact steps in a business-days window (America/New_York): {figures['window_rate']:,.0f} "
        f"calls/s = {figures['window_rate'] / floor:.0%} of floor",
        f"advance() not yet due (identity): {figures['idle_rate']:,.0f} calls/s = "
        f"{figures['idle_rate'] / floor:.1f}x floor",
    ]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="enrollments in the batch (default 100,000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; the best is kept")
    args = parser.parse_args(argv)
    figures = measure(args.n, args.repeats)
    for line in report(figures):
        print(line)
    return figures


if __name__ == "__main__":
    main()
