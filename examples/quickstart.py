"""Quickstart: a three-step welcome series on SQLite, run on a simulated clock.

    .venv/bin/python examples/quickstart.py

Steps 1 to 7 of the tutorial (docs/tutorial.md) as one program: the same
series and contacts. It creates a database in a temporary directory (so each
run starts afresh and leaves nothing behind), enrolls two contacts when they
are tagged "new", and moves a fake clock through their first week, printing
each email as the mail sender accepts it. A fake clock and a recording sender
stand in for the real ones, so the week takes a fraction of a second.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dripcore import Contact, Delay, Drip, Sequence, Step, Trigger, TriggerEvent, TriggerType, preview
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender

START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday

WELCOME = Sequence(
    id="welcome",
    name="Welcome series",
    trigger=Trigger(type=TriggerType.TAG_ADDED, value="new"),
    steps=(
        Step(position=1, subject="Welcome, {{ firstName }}!", text="Glad you are here."),
        Step(position=2, delay=Delay.hours(24), subject="Three tips", text="Tip one..."),
        Step(position=3, delay=Delay.days(6), subject="How is it going?", text="Just reply."),
    ),
)

CONTACTS = [
    Contact(id="ana", email="ana@example.com", first_name="Ana", timezone="Europe/Lisbon"),
    Contact(id="bo", email="bo@example.com", first_name="Bo", timezone="America/New_York"),
]


def run(db_path: Path) -> RecordingSender:
    """Run the scenario on a database at ``db_path``; returns the sender with what it accepted."""
    clock = FakeClock(START)
    sender = RecordingSender()
    with SQLiteStore(db_path) as store:
        contacts = MemoryContacts(CONTACTS)
        drip = Drip(store=store, sender=sender, clock=clock, contacts=contacts)
        drip.save_sequence(WELCOME)
        drip.activate("welcome")

        print("Planned for Ana if she is tagged now:")
        for planned in preview(WELCOME, CONTACTS[0], clock.now()):
            print(f"  step {planned.position}  {planned.local:%a %d %b %H:%M %Z}")

        print("\nWhat actually happens:")
        shown = 0

        def run_until(until: datetime | None) -> None:
            """Tick at every due time up to ``until`` (None: until nothing is left), printing each email."""
            nonlocal shown
            while (wake := drip.next_wake_at()) is not None and (until is None or wake <= until):
                clock.set(max(wake, clock.now()))  # jump straight to the next due step
                drip.tick()
                for email in sender.sent[shown:]:
                    local = clock.now().astimezone(contacts.get(email.contact_id).zone)  # type: ignore[union-attr]
                    print(f"  {clock.now():%a %d %b %H:%M} UTC  {email.to:<16} {email.subject!r:<30}"
                          f" {local:%H:%M %Z} local")  # fmt: skip
                shown = len(sender.sent)
            if until is not None:
                clock.set(until)

        drip.notify(TriggerEvent.tag_added("ana", "new"))
        run_until(START + timedelta(hours=5))
        drip.notify(TriggerEvent.tag_added("bo", "new"))
        drip.notify(TriggerEvent.tag_added("bo", "new"))  # the trigger fired twice: still one enrollment
        run_until(None)

        stats = drip.stats("welcome")
        print(f"\n{stats.recipients} recipients, {stats.completed} completed, {len(sender.sent)} emails sent.")
    return sender


def main() -> None:
    """Run the quickstart in a throw-away directory."""
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp) / "drip.db")


if __name__ == "__main__":
    main()
