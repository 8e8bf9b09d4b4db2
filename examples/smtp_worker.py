"""A worker process that delivers due steps through SMTP.

    DRIP_UNSUBSCRIBE_SECRET=... .venv/bin/python examples/smtp_worker.py --db /srv/app/drip.db

The worker opens the SQLite store your web application writes to, and runs
:meth:`dripcore.Drip.run`: it sleeps until the next step is due, delivers it
through :class:`~dripcore.senders.SMTPSender`, and stops cleanly on SIGTERM or
Ctrl-C (the batch in hand is finished first). Start as many as you like on the
same database file: claims are leased, so no step goes twice.

The sender keeps ``--connections`` SMTP sessions open (8 by default) and the
engine sends over all of them at once, so a slow server is not waited on one
message at a time.

Every email carries a signed unsubscribe link (and the ``List-Unsubscribe``
headers for one-click unsubscribing), made by
:class:`~dripcore.UnsubscribeLinks` from ``--unsubscribe-url`` and the secret
in the ``DRIP_UNSUBSCRIBE_SECRET`` environment variable (at least 16 bytes;
your web application verifies the tokens with the same secret).

``--db`` is the SQLite file, by default ``dripcore-smtp-worker.db`` in the
system's temporary directory (printed at start), never a file in the current
directory. ``--seed`` adds a welcome series and two contacts tagged "new", so
there is something to send. ``--simulate`` (which seeds too) runs on a fake
clock that jumps to each due time, so the whole week-long series is delivered
to a real SMTP server in a second, and a try-out without a secret signs its
links with a throw-away one. Run it again on the same database and nothing is
sent twice. ``--drain`` delivers whatever is due now and exits (to run from
cron, say).

Any SMTP server will do for a try-out, for example aiosmtpd's debugging server::

    .venv/bin/python -m aiosmtpd -n -l localhost:1025 &
    .venv/bin/python examples/smtp_worker.py --simulate
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Sequence as Seq
from datetime import datetime, timezone
from types import FrameType

from dripcore import Contact, Drip, SequenceStatus, TickReport, TriggerEvent, UnsubscribeLinks
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


#: Where the database goes when ``--db`` is not given: not the current directory.
DEFAULT_DB = os.path.join(tempfile.gettempdir(), "dripcore-smtp-worker.db")

#: The environment variable holding the secret that signs unsubscribe links.
SECRET_VARIABLE = "DRIP_UNSUBSCRIBE_SECRET"


def build(args: argparse.Namespace, clock: Clock | None, secret: str) -> Drip:
    """The engine, wired to SQLite and SMTP, with signed unsubscribe links."""
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
        renderer=LiquidRenderer(unsubscribe_url=UnsubscribeLinks(args.unsubscribe_url, secret=secret)),
    )


def seed(drip: Drip) -> int:
    """A welcome series and two contacts who were just tagged "new" (idempotent); returns how
    many contacts were enrolled now (0 when they already were)."""
    print(drip.sync_sequences([welcome_series(tag="new", status=SequenceStatus.ACTIVE)]), flush=True)
    return sum(len(drip.notify(TriggerEvent.tag_added(contact.id, "new"))) for contact in CONTACTS)


def simulate(drip: Drip, clock: FakeClock, log: bool) -> int:
    """Jump the fake clock from one due time to the next until nothing is left; returns how
    many emails the SMTP server accepted."""
    sent = 0
    while (wake := drip.next_wake_at()) is not None:
        clock.set(max(wake, clock.now()))
        report = drip.tick()
        sent += report.sent
        if log:
            print(f"{clock.now():%Y-%m-%d %H:%M} {report.summary()}", flush=True)
    return sent


def main(argv: Seq[str] | None = None) -> int:
    """Parse the options and run the worker until stopped."""
    parser = argparse.ArgumentParser(description="Deliver due dripcore steps through SMTP.")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"SQLite database file (default: {DEFAULT_DB})")
    parser.add_argument("--smtp-host", default="localhost")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--mail-from", default="hello@example.com")
    parser.add_argument("--connections", type=int, default=8, help="SMTP sessions kept open (default: 8)")
    parser.add_argument(
        "--unsubscribe-url", default="https://example.com/unsubscribe/{token}",
        help="the unsubscribe page of your application, with a {token} field",
    )  # fmt: skip
    parser.add_argument("--seed", action="store_true", help="add a welcome series and two contacts")
    parser.add_argument(
        "--simulate", action="store_true", help="seed, then run on a fake clock: a week in a second"
    )  # fmt: skip
    parser.add_argument("--drain", action="store_true", help="deliver what is due now, then exit")
    parser.add_argument("--quiet", action="store_true", help="don't log each tick")
    args = parser.parse_args(argv)

    secret = os.environ.get(SECRET_VARIABLE, "")
    if not secret:
        if not args.simulate:
            parser.error(f"set {SECRET_VARIABLE} to the secret that signs unsubscribe links (16 bytes or more)")
        secret = secrets.token_urlsafe(32)  # a try-out: its links need not verify later
    fake = FakeClock(datetime.now(timezone.utc)) if args.simulate else None
    drip = build(args, fake, secret)
    print(f"database: {args.db}", flush=True)
    try:
        if args.seed or args.simulate:
            enrolled = seed(drip)
            print(f"enrolled {enrolled} contacts", flush=True)
        if fake is not None:
            sent = simulate(drip, fake, not args.quiet)
            if sent:
                print(f"{sent} emails delivered to {args.smtp_host}:{args.smtp_port}; nothing left to send")
            else:
                print("nothing to send: every email of the series went already (nothing is sent twice)")
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
