"""Test builders shared by several test files: the reference instant, steps, the Welcome series, a World.

Files with a special variant (other subjects, another trigger, many contacts, a failing store) keep
their own; Hypothesis strategies live in ``tests/strategies.py``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from dripcore import Contact, Delay, Drip, Sequence, SequenceStatus, Step, Trigger, TriggerType, WaitUntil
from dripcore.adapters.memory import MemoryStore
from dripcore.testing import FakeClock, MemoryContacts, RecordingEvents, RecordingSender

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


def step(position: int, delay: Delay | WaitUntil | None = None, **kw: object) -> Step:
    """Step ``position``, ``delay`` after the previous one (immediately by default), greeting {{firstName}}."""
    return Step(
        position=position, delay=delay or Delay.immediately(), subject=f"Step {position} for {{{{firstName}}}}",
        text=f"Body {position}", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def welcome(**kw: object) -> Sequence:
    """The reference Welcome series: active, on any tag, three steps at once, +24 hours, +6 days; ``kw`` overrides."""
    fields: dict[str, object] = {
        "id": "welcome",
        "name": "Welcome series",
        "status": SequenceStatus.ACTIVE,
        "trigger": Trigger(type=TriggerType.TAG_ADDED),
        "steps": (step(1), step(2, Delay.hours(24)), step(3, Delay.days(6))),
    }
    fields.update(kw)
    return Sequence(**fields)  # type: ignore[arg-type]


class World:
    """A Drip on fakes at T0 (FakeClock, MemoryStore, RecordingSender, four contacts), with handles on everything."""

    def __init__(self, *, sender: object = None, **drip_kw: object) -> None:
        self.clock = FakeClock(T0)
        self.store = MemoryStore()
        self.recorder = RecordingSender()
        self.sender = sender if sender is not None else self.recorder
        self.contacts = MemoryContacts(
            [
                Contact(id="ana", email="ana@example.com", first_name="Ana"),
                Contact(id="bo", email="bo@example.com", first_name="Bo"),
                Contact(id="cy", email="cy@example.com", first_name="Cy", birthday=date(1990, 3, 3)),
                Contact(id="leap", email="leap@example.com", birthday=date(2000, 2, 29)),
            ]
        )
        self.events = RecordingEvents()
        counter = iter(range(1, 10**6))
        self.drip = Drip(
            store=self.store, sender=self.sender, clock=self.clock, contacts=self.contacts,  # type: ignore[arg-type]
            events=self.events, id_factory=lambda: f"enr_{next(counter):06d}", **drip_kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def run_for(self, duration: timedelta, every: timedelta = timedelta(hours=1)) -> None:
        """Tick every ``every`` for ``duration`` of fake time, then once more."""
        end = self.clock.now() + duration
        while self.clock.now() < end:
            self.drip.tick()
            self.clock.advance(every)
        self.drip.tick()

    def subjects(self, address: str) -> list[str]:
        """The subjects sent to ``address``, in order."""
        return [e.subject for e in self.recorder.to(address)]
