"""Command line: ``python -m dripcore demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence as Seq
from datetime import datetime, timezone
from typing import TextIO

from . import Delay, Sequence, SequenceStatus, Step, Trigger, TriggerType, advance, enroll


def welcome_series() -> Sequence:
    """The Welcome series of the reference documents: 0 h, +24 h, +6 days."""
    return Sequence(
        id="welcome",
        name="Welcome series",
        status=SequenceStatus.ACTIVE,
        trigger=Trigger(type=TriggerType.TAG_ADDED),
        steps=(
            Step(position=1, subject="Welcome aboard", text="Glad you are here."),
            Step(position=2, delay=Delay.hours(24), subject="Getting started", text="Three tips."),
            Step(position=3, delay=Delay.days(6), subject="How is it going?", text="Tell us."),
        ),
    )


def demo(out: TextIO | None = None) -> None:
    """Enroll one contact into the Welcome series and print when each step goes."""
    out = sys.stdout if out is None else out
    sequence = welcome_series()
    now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    enrollment = enroll(sequence, None, now, enrollment_id="demo-1", contact_id="ana@example.com").enrollment
    print(f"{sequence.name}: {len(sequence.steps)} steps, trigger {sequence.trigger.type.value}", file=out)
    while not enrollment.is_terminal:
        assert enrollment.next_step_due_at is not None
        now = max(now, enrollment.next_step_due_at)
        result = advance(enrollment, now, sequence=sequence)
        if result.send is not None:
            print(f"  {now:%a %Y-%m-%d %H:%M} UTC  step {result.send.position}: {result.send.subject}", file=out)
        enrollment = result.enrollment
    print(f"  {enrollment.status.value} at {enrollment.ended_at:%a %Y-%m-%d %H:%M} UTC", file=out)


def main(argv: Seq[str] | None = None) -> int:
    """Entry point of ``python -m dripcore``."""
    parser = argparse.ArgumentParser(prog="python -m dripcore", description="dripcore command line")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the Welcome series on a simulated clock and print its timeline")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
