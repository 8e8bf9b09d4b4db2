"""``python -m dripcore demo``: the three prefabs, a handful of contacts, two simulated weeks.

Runs the real engine (store, renderer, delivery, events) on a simulated clock
and prints a timeline: who got which step when, a sequence paused and resumed
(stale steps bumped, not flooded), an unsubscribe exit, a hard bounce, and a
birthday found by the daily anniversary sweep.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from collections.abc import Sequence as Seq
from datetime import date, datetime, time, timedelta
from typing import TextIO

import attrs

from .engine import Drip
from .model import (
    UTC,
    Cancelled,
    Completed,
    Contact,
    Delay,
    Event,
    SequenceStatus,
    StepFailed,
    StepSent,
    Subscribed,
    TriggerEvent,
)
from .ports import EventSink, Store
from .prefabs import birthday_email, post_purchase, welcome_series
from .scheduler import preview
from .testing.fakes import FakeClock, FlakySender, MemoryContacts, RecordingSender

__all__ = ["run_demo"]

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday
DAYS = 14

CONTACTS = (
    Contact(id="ana", email="ana@example.com", first_name="Ana", timezone="Europe/Lisbon"),
    Contact(id="bo", email="bo@example.com", first_name="Bo", timezone="America/New_York"),
    Contact(id="chloe", email="chloe@example.com", first_name="Chloé", timezone="Europe/Paris"),
    Contact(id="dev", email="dev@bounces.example", first_name="Dev"),
    Contact(id="eve", email="eve@example.com", first_name="Eve", birthday=date(1991, 3, 9)),
)


class _Printer(EventSink):
    """Prints each lifecycle event as a timeline line."""

    def __init__(self, out: TextIO) -> None:
        self.drip: Drip | None = None  # set once the engine that publishes to it exists
        self.out = out

    def _engine(self) -> Drip:
        assert self.drip is not None
        return self.drip

    def publish(self, events: Seq[Event]) -> None:
        for event in events:
            what = self._describe(event)
            if what:
                line(self.out, event.at, event.contact_id, what)

    def _describe(self, event: Event) -> str:
        name = self._engine().get_sequence(event.sequence_id).name
        if isinstance(event, Subscribed):
            return f"enrolled in {name}"
        if isinstance(event, StepSent):
            sent = self._engine().store.get_message(event.idempotency_key)
            subject = sent.email.subject if sent and sent.email else ""
            return f"{name} step {event.position} sent: {subject!r}"
        if isinstance(event, StepFailed):
            return f"{name} step {event.position} FAILED ({event.reason or event.error})"
        if isinstance(event, Completed):
            return f"completed {name}"
        if isinstance(event, Cancelled):
            return f"left {name} ({event.reason.value})"
        return ""


def line(out: TextIO, at: datetime, who: str, what: str) -> None:
    """One timeline line: when, who, what."""
    print(f"  {at:%a %m-%d %H:%M}  {who:<6} {what}", file=out)


def run_demo(store: Store, *, out: TextIO | None = None, store_label: str = "memory") -> Drip:
    """Run the scenario on ``store`` and print its timeline; returns the engine for inspection."""
    out = sys.stdout if out is None else out
    clock = FakeClock(START)
    contacts = MemoryContacts(CONTACTS)
    sender = FlakySender(RecordingSender())
    sender.fail_address("dev@bounces.example", reason="bounced")  # a hard bounce from the provider
    printer = _Printer(out)
    drip = printer.drip = Drip(store=store, sender=sender, clock=clock, contacts=contacts, events=printer)

    for prefab in (welcome_series(), post_purchase(), birthday_email()):
        drip.save_sequence(prefab)
        drip.activate(prefab.id)

    print(
        f"dripcore demo: {len(drip.sequences())} prefab sequences, {len(CONTACTS)} contacts, "
        f"{DAYS} simulated days from {START:%a %Y-%m-%d} (store: {store_label})\n",
        file=out,
    )

    def tag(contact_id: str) -> Callable[[], object]:
        return lambda: drip.notify(TriggerEvent.tag_added(contact_id, "new"))

    def buy(contact_id: str, order_id: str) -> Callable[[], object]:
        event = TriggerEvent.purchase(contact_id, order_id=order_id, variables={"order_id": order_id})
        return lambda: drip.notify(event)

    minute, hour, days = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
    # (when, who, what the host application does)
    script: list[tuple[datetime, str, str, Callable[[], object]]] = [
        (START + 1 * hour, "ana", "tagged 'new'", tag("ana")),
        (START + 2 * hour, "bo", "tagged 'new'", tag("bo")),
        (START + 3 * hour, "chloe", "bought order o-1001", buy("chloe", "o-1001")),
        (START + 3 * hour + 5 * minute, "chloe", "webhook re-sent o-1001 (no-op)", buy("chloe", "o-1001")),
        (START + 4 * hour, "dev", "tagged 'new'", tag("dev")),
        (START + days + 12 * hour, "bo", "clicked unsubscribe", lambda: drip.contact_unsubscribed("bo")),
        (START + 2 * days, "admin", "paused Post-purchase thank-you", lambda: drip.pause("post-purchase")),
        (START + 6 * days, "admin", "resumed it: one overdue step, not a flood", lambda: drip.resume("post-purchase")),
    ]

    end = START + timedelta(days=DAYS)
    swept: set[date] = set()
    while clock.now() < end:
        now = clock.now()
        day = now.date()
        if day not in swept:
            swept.add(day)
            for enrollment in drip.sweep_anniversaries(day):
                line(out, now, enrollment.contact_id, "birthday today: found by the daily sweep")
        while script and script[0][0] <= now:
            _, who, what, action = script.pop(0)
            line(out, now, who, what)
            action()
        drip.tick()
        candidates = [end, datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)]
        if script:
            candidates.append(script[0][0])
        wake = drip.next_wake_at()
        if wake is not None and wake > now:
            candidates.append(wake)
        clock.set(min(candidates))

    print("", file=out)
    for sequence in drip.sequences(SequenceStatus.ACTIVE):
        stats = drip.stats(sequence.id)
        print(
            f"{sequence.name}: {stats.recipients} recipients, {stats.completed} completed, "
            f"{stats.exited} exited {dict(stats.exited_by_reason)}, {stats.active} still active, "
            f"completion rate {stats.completion_rate:.0%}",
            file=out,
        )
    inner = sender.inner
    assert isinstance(inner, RecordingSender)
    print(f"{len(inner.sent)} emails delivered, {inner.duplicate_attempts} duplicates.", file=out)
    _dst_preview(out)
    return drip


def _dst_preview(out: TextIO) -> None:
    """Show how delays behave across a daylight-saving change, with preview()."""
    sequence = attrs.evolve(
        welcome_series(),
        steps=(
            *welcome_series().steps[:2],
            attrs.evolve(welcome_series().steps[1], position=3, delay=Delay.days(1), subject="A calendar day later"),
        ),
    )
    contact = Contact(id="bo", email="bo@example.com", timezone="America/New_York")
    enrolled = datetime(2026, 3, 7, 14, 0, tzinfo=UTC)  # Saturday 09:00 in New York
    print("\nPreview for a contact in America/New_York enrolled Sat 03-07 09:00 local;", file=out)
    print("clocks spring forward at 02:00 on Sun 03-08 (a 23-hour day):", file=out)
    for planned in preview(sequence, contact, enrolled):
        step = sequence.step(planned.position)
        assert step is not None
        print(
            f"  step {planned.position} ({step.delay!s:>11})  {planned.local:%a %m-%d %H:%M %Z} local"
            f"  = {planned.at:%a %m-%d %H:%M} UTC",
            file=out,
        )
