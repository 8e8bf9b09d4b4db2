"""Command line: ``python -m dripcore demo | run | sync | status | preview``.

- ``demo [--db PATH]``: the prefab sequences for a few contacts over two
  simulated weeks, on the embedded SQLite store (a fresh file unless ``--db``).
- ``run MODULE:ATTR [--once] [--idle SECONDS] [--anniversary-sweep-at HH:MM|off]``:
  the worker. Loads the host's configured :class:`~dripcore.Drip` (an instance,
  or a callable returning one) and runs it until SIGINT or SIGTERM, which stop
  it cleanly after the current batch. ``--once`` runs a single tick (no
  sweep). The worker sweeps anniversaries daily at the Drip's
  ``anniversary_sweep_at`` (00:00 UTC by default); ``--anniversary-sweep-at``
  sets that UTC time, or ``off`` turns the sweep off. ``--sync MODULE:ATTR``
  syncs the sequences kept as code there (a list of :class:`~dripcore.Sequence`)
  before the worker starts.
- ``sync MODULE:ATTR MODULE:ATTR``: a deploy step. Saves the sequences kept as
  code (the second target: a list of :class:`~dripcore.Sequence`, or a callable
  returning one) into the Drip's store (the first) with
  :meth:`~dripcore.Drip.sync_sequences`, and prints what changed; exits 1 if a
  definition failed (a draft whose activation could not enroll its members).
- ``status --db PATH``: each sequence's active, paused, completed and exited
  counts and its next due time.
- ``preview SEQUENCE [--db PATH] [--timezone ZONE] [--start WHEN]``: when each
  step of a sequence (a prefab, or one stored in a SQLite file) would go for a
  contact enrolled at WHEN, and how long after the enrollment, in words.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from collections.abc import Sequence as Seq
from datetime import datetime, time, timezone, tzinfo
from pathlib import Path
from types import FrameType
from typing import TextIO, cast

from .adapters.sqlite import SQLiteStore
from .demo import run_demo
from .engine import Drip, TickReport
from .errors import DripcoreError
from .model import Contact, Sequence, zone
from .ports import SequenceStats
from .prefabs import PREFABS
from .scheduler import preview, resolve_zone

log = logging.getLogger("dripcore.worker")


def _demo(db: str | None, out: TextIO) -> int:
    if db is None:
        path = Path(tempfile.mkdtemp(prefix="dripcore-demo-")) / "demo.db"
    else:
        path = Path(db)
        if path.exists() and path.stat().st_size > 0:
            print(f"error: {path} already exists; the demo starts from an empty database", file=sys.stderr)
            return 2
    with SQLiteStore(str(path)) as store:
        run_demo(store, out=out, store_label=f"SQLite {path}")
    print(f"\nThe database is kept at {path}; try: python -m dripcore status --db {path}", file=out)
    return 0


def _load(target: str, example: str) -> object:
    """Import ``MODULE:ATTR`` and return the attribute it names (called first, if callable)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise DripcoreError(f"{target!r}: expected MODULE:ATTR, such as {example}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    value: object = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise DripcoreError(f"{target!r}: module {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    return value


def load_drip(target: str) -> Drip:
    """Import ``MODULE:ATTR`` and return the :class:`Drip` it names (or builds, if callable)."""
    value = _load(target, "myapp.drip:engine")
    if not isinstance(value, Drip) and callable(value):
        value = value()
    if not isinstance(value, Drip):
        raise DripcoreError(
            f"{target!r} is a {type(value).__name__}, not a dripcore Drip (or a callable returning one)"
        )
    return value


def load_definitions(target: str) -> list[Sequence]:
    """Import ``MODULE:ATTR`` and return the sequences it names: a list (or any iterable) of
    :class:`Sequence`, or a callable returning one."""
    value = _load(target, "myapp.campaigns:SEQUENCES")
    if callable(value) and not isinstance(value, Sequence):
        value = value()
    if isinstance(value, Sequence) or not isinstance(value, Iterable) or isinstance(value, (str, bytes)):
        raise DripcoreError(f"{target!r} is a {type(value).__name__}, not a list of dripcore Sequence definitions")
    definitions = list(value)
    for item in definitions:
        if not isinstance(item, Sequence):
            raise DripcoreError(f"{target!r} holds a {type(item).__name__}, not a dripcore Sequence")
    return definitions


def _sync(target: str, definitions: str, out: TextIO) -> int:
    sequences = load_definitions(definitions)  # first: a typo fails before any store is opened
    drip = load_drip(target)
    try:
        report = drip.sync_sequences(sequences)
    finally:
        drip.sender.close()
        drip.store.close()
    print(report, file=out)
    return 0 if report.ok else 1


_NO_SWEEP = ("off", "none", "no")


def sweep_time(text: str) -> time | None:
    """``--anniversary-sweep-at``: ``HH:MM`` (or ``HH:MM:SS``), UTC, or ``off``."""
    if text.strip().lower() in _NO_SWEEP:
        return None
    try:
        return time.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UTC time of day such as 00:00, nor 'off'") from None


_KEEP = object()


def _run(
    target: str, *, once: bool, idle: float, out: TextIO, sweep_at: object = _KEEP, sync: str | None = None
) -> int:
    drip = load_drip(target)
    if sync is not None:
        log.info("%s", drip.sync_sequences(load_definitions(sync)))
    if sweep_at is not _KEEP:
        drip.anniversary_sweep_at = cast("time | None", sweep_at)
    interactive = out.isatty()

    def on_tick(report: TickReport) -> None:
        line = f"{datetime.now():%H:%M:%S} {report.summary()}"
        if interactive:
            print(line, file=out, flush=True)
        elif report.claimed or report.messages or report.errors:
            log.info(line)
        for error in report.errors:
            log.warning("set aside %s %s: %s", error.kind, error.id, error.error)

    if once:
        on_tick(drip.tick())
        return 0

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping after the current batch", signal.Signals(signum).name)
        drip.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log.info(
        "worker %s started; anniversary sweep %s", drip.worker_id,
        "off" if drip.anniversary_sweep_at is None else f"daily at {drip.anniversary_sweep_at:%H:%M:%S} UTC",
    )  # fmt: skip
        drip.run(idle=idle, on_tick=on_tick)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        drip.sender.close()
        drip.store.close()
    log.info("worker %s stopped", drip.worker_id)
    return 0


def _status(db: str, out: TextIO) -> int:
    path = Path(db)
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    with SQLiteStore(str(path)) as store:
        sequences = store.list_sequences()
        print(f"{path}: {len(sequences)} sequences, next step due {store.next_due_at() or '-'}", file=out)
        header = f"{'sequence':<24} {'status':<9} {'active':>8} {'paused':>8} {'completed':>10} {'exited':>8}  next due"
        print(header, file=out)
        for sequence in sequences:
            stats = SequenceStats.from_counters(sequence.id, store.counters(sequence.id))
            due = store.next_due_for(sequence.id) if hasattr(store, "next_due_for") else None
            print(
                f"{sequence.id:<24} {sequence.status.value:<9} {stats.active:>8} {stats.paused:>8} "
                f"{stats.completed:>10} {stats.exited:>8}  {due or '-'}",
                file=out,
            )
    return 0


def _load_sequence(name: str, db: str | None) -> Sequence | None:
    """The prefab called ``name``, or with ``db`` the sequence of that id in the SQLite file."""
    if db is None:
        # (PREFABS's factories take different keywords, so mypy types the mapping's values as bare functions.)
        factory = cast("Callable[[], Sequence] | None", PREFABS.get(name))
        if factory is None:
            print(
                f"error: no prefab called {name!r} (there are {', '.join(sorted(PREFABS))}); "
                "give --db PATH to preview a sequence of your own",
                file=sys.stderr,
            )
            return None
        return factory()
    path = Path(db)
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return None
    with SQLiteStore(str(path)) as store:
        sequence = store.get_sequence(name)
    if sequence is None:
        print(f"error: {path} has no sequence {name!r}", file=sys.stderr)
    return sequence


def _start(text: str | None, tz: tzinfo) -> datetime | None:
    """``--start``: an ISO 8601 date and time; without an offset it is local time in ``tz``."""
    if text is None:
        return datetime.now(timezone.utc).replace(second=0, microsecond=0)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        print(f"error: --start {text!r} is not an ISO 8601 date and time such as 2026-03-02T09:00", file=sys.stderr)
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


def _preview(name: str, *, db: str | None, zone_name: str | None, start: str | None, out: TextIO) -> int:
    sequence = _load_sequence(name, db)
    if sequence is None:
        return 2
    contact = None
    if zone_name is not None:
        zone(zone_name, "--timezone")
        contact = Contact(id="preview", email="preview@example.com", timezone=zone_name)
    tz = resolve_zone(sequence, contact) or timezone.utc
    enrolled = _start(start, tz)
    if enrolled is None:
        return 2
    steps = {step.position: step for step in sequence.steps}
    local_start = enrolled.astimezone(tz)
    print(
        f"{sequence.id} ({sequence.name}) for a contact in {tz}, enrolled {local_start:%a %Y-%m-%d %H:%M %Z}", file=out
    )
    print(f"{'step':>4}  {'delay':<22} {'after enrollment':<24} {'local time':<24} subject", file=out)
    for planned in preview(sequence, contact, enrolled):
        subject = planned.subject or planned.name or "-"
        if planned.skipped is not None:
            subject = f"(skipped: {planned.skipped.value}) {subject}"
        delay, local = str(steps[planned.position].delay), f"{planned.local:%a %Y-%m-%d %H:%M %Z}"
        print(f"{planned.position:>4}  {delay:<22} {planned.after or '-':<24} {local:<24} {subject}", file=out)
    return 0


def main(argv: Seq[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``python -m dripcore``."""
    out = sys.stdout if out is None else out
    parser = argparse.ArgumentParser(prog="python -m dripcore", description="dripcore command line")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the prefab sequences for a few contacts on a simulated clock")
    demo.add_argument("--db", help="SQLite file to use (default: a fresh file in a temporary directory)")
    run = commands.add_parser("run", help="run a worker for your configured Drip until SIGINT/SIGTERM")
    run.add_argument("target", metavar="MODULE:ATTR", help="where your Drip is, e.g. myapp.drip:engine")
    run.add_argument("--once", action="store_true", help="run a single tick and exit")
    run.add_argument("--idle", type=float, default=30.0, help="longest sleep between ticks, in seconds")
    run.add_argument(
        "--anniversary-sweep-at", metavar="HH:MM", type=sweep_time, default=_KEEP,
        help="UTC time of the daily anniversary sweep, or 'off' (default: the Drip's anniversary_sweep_at, 00:00)",
    )  # fmt: skip
    run.add_argument(
        "--sync", metavar="MODULE:ATTR",
        help="sequences kept as code (a list of Sequence) to sync first, e.g. myapp.campaigns:SEQUENCES",
    )  # fmt: skip
    sync = commands.add_parser(
        "sync", help="save the sequences kept as code into your Drip's store, and print what changed (a deploy step)"
    )
    sync.add_argument("target", metavar="MODULE:ATTR", help="where your Drip is, e.g. myapp.drip:engine")
    sync.add_argument(
        "definitions", metavar="MODULE:ATTR", help="your list of Sequence definitions, e.g. myapp.campaigns:SEQUENCES"
    )
    status = commands.add_parser("status", help="sequences of a SQLite database with their counts")
    status.add_argument("--db", required=True, help="the SQLite file")
    plan = commands.add_parser(
        "preview", help="when each step of a sequence would go for one contact, and how long after enrollment"
    )
    plan.add_argument(
        "sequence", metavar="SEQUENCE", help=f"a prefab ({', '.join(sorted(PREFABS))}), or a sequence id with --db"
    )
    plan.add_argument("--db", help="the SQLite file holding the sequence (default: SEQUENCE names a prefab)")
    plan.add_argument(
        "--timezone", metavar="ZONE", help="the contact's IANA time zone (default: the sequence's, else UTC)"
    )
    plan.add_argument(
        "--start", metavar="WHEN", help="enrollment time, ISO 8601 (default: now); without an offset, local to ZONE"
    )
    args = parser.parse_args(argv)
    # The worker reports what it does; the demo and status print their own output.
    level = logging.INFO if args.command == "run" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "demo":
            return _demo(args.db, out)
        if args.command == "run":
            return _run(
                args.target, once=args.once, idle=args.idle, out=out, sweep_at=args.anniversary_sweep_at, sync=args.sync
            )
        if args.command == "sync":
            return _sync(args.target, args.definitions, out)
        if args.command == "preview":
            return _preview(args.sequence, db=args.db, zone_name=args.timezone, start=args.start, out=out)
        return _status(args.db, out)
    except DripcoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
