"""A worker process that delivers due steps through SMTP.

    python examples/smtp_worker.py --db drip.db --smtp-host localhost --smtp-port 1025 --seed

The worker opens the SQLite store your web application writes to, and runs
:meth:`dripcore.Drip.run`: it sleeps until the next step is due, delivers it
through :class:`~dripcore.senders.SMTPSender`, and stops cleanly on SIGTERM or
Ctrl-C (the batch in hand is finished first). Start as many as you like on the
same database file: claims are leased, so no step goes twice.

The sender keeps ``--connections`` SMTP sessions open (8 by default) and the
engine sends over all of them at once, so a slow server is not waited on one
message at a time.

``--seed`` adds a welcome series and two contacts tagged "new", so there is
something to send. ``--simulate`` runs on a fake clock that jumps to each due
time, so the whole week-long series is delivered (to a real SMTP server) in a
second. ``--drain`` delivers whatever is due now and exits (to run from cron, say).

Any SMTP server will do for a try-out, for example aiosmtpd's debugging server::

    python -m aiosmtpd -n -l localhost:1025
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence as Seq
from datetime import datetime, timezone
from types import FrameType

from dripcore import Contact, Drip, TickReport, TriggerEvent
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Clock
from dripcore.prefabs import welcome_series
from dripcore.render import LiquidRenderer
from dripcore.senders import SMTPSender
from dripcore.testing import FakeClock, MemoryContacts

#: Stand-ins for the host application's users table.
CONTACTS = [
    Contact(id="ana", email="ana@example.com", first_name="Ana", timezone="Europe/Lisbon"),
    Contact(id="bo", email="bo@example.com", first_name="Bo", timezone="America/New_York"),
]


def build(args: argparse.Namespace, clock: Clock | None) -> Drip:
    """The engine, wired to SQLite and SMTP."""
    sender = SMTPSender(
        host=args.smtp_host,
        port=args.smtp_port,
        default_sender=args.mail_from,
        timeout=10.0,
        connections=args.connections,  # sends in flight at once: the engine reads sender.max_in_flight
    )
    return Drip(
        store=SQLiteStore(args.db),
        sender=sender,
        clock=clock,
        contacts=MemoryContacts(CONTACTS),
        renderer=LiquidRenderer(unsubscribe_url="https://example.com/unsubscribe?contact={contact_id}"),
    )


def seed(drip: Drip) -> None:
    """A welcome series and two contacts who were just tagged "new" (idempotent)."""
    if drip.store.get_sequence("welcome") is None:
        drip.save_sequence(welcome_series(tag="new"))
        drip.activate("welcome")
    for contact in CONTACTS:
        drip.notify(TriggerEvent.tag_added(contact.id, "new"))


def simulate(drip: Drip, clock: FakeClock, log: bool) -> None:
    """Jump the fake clock from one due time to the next until nothing is left."""
    while (wake := drip.next_wake_at()) is not None:
        clock.set(max(wake, clock.now()))
        report = drip.tick()
        if log:
            print(f"{clock.now():%Y-%m-%d %H:%M} {report.summary()}", flush=True)


def main(argv: Seq[str] | None = None) -> int:
    """Parse the options and run the worker until stopped."""
    parser = argparse.ArgumentParser(description="Deliver due dripcore steps through SMTP.")
    parser.add_argument("--db", default="drip.db", help="SQLite database file (default: drip.db)")
    parser.add_argument("--smtp-host", default="localhost")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--mail-from", default="hello@example.com")
    parser.add_argument("--connections", type=int, default=8, help="SMTP sessions kept open (default: 8)")
    parser.add_argument("--seed", action="store_true", help="add a welcome series and two contacts")
    parser.add_argument("--simulate", action="store_true", help="run on a fake clock: a week in a second")
    parser.add_argument("--drain", action="store_true", help="deliver what is due now, then exit")
    parser.add_argument("--quiet", action="store_true", help="don't log each tick")
    args = parser.parse_args(argv)

    fake = FakeClock(datetime.now(timezone.utc)) if args.simulate else None
    drip = build(args, fake)
    try:
        if args.seed:
            seed(drip)
        if fake is not None:
            simulate(drip, fake, not args.quiet)
            return 0

        def stop(signum: int, _frame: FrameType | None) -> None:
            print(f"signal {signum}: finishing the current batch", file=sys.stderr)
            drip.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        def on_tick(report: TickReport) -> None:
            if not args.quiet and (report.claimed or report.messages):
                print(f"{datetime.now(timezone.utc):%H:%M:%S} {report.summary()}", flush=True)
            wake = drip.next_wake_at()
            if args.drain and not report.busy and (wake is None or wake > drip.clock.now()):
                drip.stop()

        drip.run(on_tick=on_tick, idle=30.0)
        return 0
    finally:
        drip.sender.close()
        drip.store.close()


if __name__ == "__main__":
    sys.exit(main())
