"""A dripcore worker delivering over real SMTP that may kill itself (SIGKILL) at a planned point.

Run by tests/slow/test_delivery_crash.py. It ticks a ``Drip`` on a real SQLite file
(the 3-step sequence of :mod:`tests.workers.sqlite_worker`, each step due as
soon as the previous one is delivered) with an :class:`~dripcore.senders.SMTPSender`
to the naive server of :mod:`tests.workers.smtp_server`, until nothing is left
to do, or until its planned crash. ``--k K`` is the number of sends it keeps in
flight: ``Drip(concurrency=K)`` and ``SMTPSender(connections=K)``, where this
dripcore has those parameters (K=1 runs on any).

The crash plans are those of :mod:`tests.workers.sqlite_worker` (``--crash
KIND:N``), each a point counted in the worker's own work, never in anybody's
wall-clock time; the ones the delivery test uses:

``mid_delivery:N``  right after the N-th ``send`` returned: the server has
                    accepted that message, its outcome is not recorded yet
``in_settle:N``     mid-statement inside the write transaction that records
                    outcomes, at its N-th SQLite progress callback
``anywhere:N``      at the N-th call or return in dripcore's code (in any
                    thread) or in-transaction progress callback

Every message goes out with ``MAIL FROM:<WORKER@workers.example>``, which the
server records with each accepted message: so a test knows which worker's
send the server accepted, and can pin each repeat on the kill that caused it.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests.workers` importable, and `dripcore` if not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if importlib.util.find_spec("dripcore") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from dripcore import Drip
from dripcore.ports import Email, SystemClock
from dripcore.senders import SMTPSender
from tests.workers import sqlite_worker
from tests.workers.sqlite_worker import RAN_OUT, Contacts, Crash, CrashingStore, done, watching_connections

ENVELOPE_DOMAIN = "workers.example"
FROM = "news@shop.example"
MESSAGE_ID_DOMAIN = FROM.rpartition("@")[2]

#: The engine keeps K sends in flight (``Drip(concurrency=K)``); until it does, K is 1.
ENGINE_CONCURRENCY = "concurrency" in inspect.signature(Drip).parameters
#: The sender has a pool of connections (``SMTPSender(connections=K)``); until it does, one.
SENDER_CONNECTIONS = "connections" in inspect.signature(SMTPSender).parameters


def worker_of(mail_from: str) -> str:
    """The worker that sent a message, from the envelope sender the server recorded."""
    return mail_from.partition("@")[0]


class CountingSMTPSender(SMTPSender):
    """An SMTPSender that reports each message the server accepted to the crash plan."""

    crash: Crash

    def send(self, email: Email) -> str | None:
        provider_id = super().send(email)
        self.crash.at("mid_delivery")
        return provider_id


def smtp_sender(port: int, worker: str, k: int, **options: Any) -> CountingSMTPSender:
    """The worker's sender: K connections where SMTPSender pools them, its envelope naming the worker."""
    if SENDER_CONNECTIONS:
        options["connections"] = k
    return CountingSMTPSender(
        host="127.0.0.1", port=port, default_sender=FROM, envelope_from=f"{worker}@{ENVELOPE_DOMAIN}",
        timeout=30.0, **options,
    )  # fmt: skip


def drip(store: CrashingStore, sender: SMTPSender, worker: str, k: int, lease: float, batch: int) -> Drip:
    """The worker's Drip, keeping K sends in flight where the engine can."""
    options: dict[str, Any] = {"concurrency": k} if ENGINE_CONCURRENCY else {}
    return Drip(
        store=store, sender=sender, contacts=Contacts(), clock=SystemClock(), worker_id=worker,
        lease=timedelta(seconds=lease), batch_size=batch, **options,
        allow_placeholder_unsubscribe=True,  # the mail goes to a local test server
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int, help="the SMTP server's port on 127.0.0.1")
    parser.add_argument("--log-dir", required=True, type=Path, help="where the crash report goes")
    parser.add_argument("--worker", default=f"w{os.getpid()}")
    parser.add_argument("--crash", default=None, help="PLAN, see the module docstring")
    parser.add_argument("--k", type=int, default=1, help="sends in flight (needs Drip(concurrency=...) above 1)")
    parser.add_argument("--lease", type=float, default=0.3, help="lease in seconds")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=120.0, help="give up (exit 3) after this many seconds")
    args = parser.parse_args(argv)
    if args.k > 1 and not ENGINE_CONCURRENCY:
        print(f"{args.worker}: --k {args.k}: this Drip has no concurrency parameter", file=sys.stderr)
        return 2

    crash = Crash(args.crash, args.log_dir / f"crash-{args.worker}.log")
    with watching_connections(crash):
        store = CrashingStore(args.db)
    if crash.kind in (*sqlite_worker.TRANSACTIONS, sqlite_worker.ANYWHERE) and not crash.connections:
        store.close()
        print(f"{args.worker}: the store opened no connection through sqlite3.connect to watch", file=sys.stderr)
        return 2
    store.crash = crash
    sender = smtp_sender(args.port, args.worker, args.k)
    sender.crash = crash
    engine = drip(store, sender, args.worker, args.k, args.lease, args.batch)
    deadline = time.monotonic() + args.timeout
    crash.start_ticking()
    try:
        while time.monotonic() < deadline:
            report = engine.tick()
            if report.errors:
                print(f"{args.worker}: {report.errors}", file=sys.stderr)
            if report.claimed or report.messages:
                continue
            if done(store):
                if crash.armed:
                    print(f"{args.worker}: no work left before the planned crash {args.crash}", file=sys.stderr)
                    return RAN_OUT
                return 0
            time.sleep(0.005)  # a killed predecessor's messages wait for their lease to run out
        print(f"{args.worker}: not done after {args.timeout}s", file=sys.stderr)
        return 3
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        sender.close()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
