"""``python manage.py drip_worker``: deliver due drip steps until Ctrl-C or SIGTERM.

It first syncs the sequences defined in code (as ``sync_sequences`` does), then
runs :meth:`dripcore.Drip.run` in a thread of its own while the main thread
waits for a signal. SIGINT (Ctrl-C) and SIGTERM (your process manager) both
ask the engine to stop after the batch in hand: the messages being sent are
finished and recorded, and the command exits with status 0. Run one per
machine, or several: claims are leased, so no step goes twice.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections, connections

from drip_app.campaigns import SEQUENCES
from drip_app.engine import get_drip
from dripcore import TickReport


class Command(BaseCommand):
    help = "Sync the sequences defined in code, then deliver due drip steps until SIGINT or SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--idle", type=float, default=30.0, help="longest sleep, in seconds, when no work is known (default 30)"
        )

    def handle(self, *args: Any, idle: float, **options: Any) -> None:
        drip = get_drip()
        stopping = threading.Event()
        failed: list[BaseException] = []

        def on_tick(report: TickReport) -> None:
            close_old_connections()  # what Django does after each request: drop broken or expired connections
            if report.sent or report.failed:
                self.stdout.write(report.summary())

        def work() -> None:
            try:
                drip.run(idle=idle, on_tick=on_tick, stop=stopping)
            except BaseException as exc:  # handed to the main thread, which reports it
                failed.append(exc)
            finally:
                connections.close_all()  # this thread's database connections

        worker = threading.Thread(target=work, name="drip-worker")
        signals: list[int] = []

        def stop(signum: int, frame: FrameType | None) -> None:
            # Only flags are touched here: the main thread is merely waiting (or syncing), and
            # the engine, in its own thread, finishes and records the batch in hand before
            # run() returns.
            signals.append(signum)
            stopping.set()  # seen by run() even if it has not started yet
            if worker.is_alive():
                drip.stop()  # wakes it now if it is waiting for work

        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        announced = False
        try:
            self.stdout.write(str(drip.sync_sequences(SEQUENCES)))
            worker.start()
            self.stdout.write("delivering due steps until Ctrl-C or SIGTERM")
            while True:  # the main thread only waits: signal handlers run here, between waits
                worker.join(0.5)
                if signals and not announced:
                    self.stdout.write(f"{signal.Signals(signals[0]).name}: stopping after the current batch")
                    announced = True
                if not worker.is_alive():
                    break
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if failed:
            raise CommandError(f"the drip worker stopped: {failed[0]!r}") from failed[0]
        self.stdout.write("drip worker stopped")
