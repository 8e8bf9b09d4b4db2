"""How fast does dripcore deliver over SMTP, with K sends in flight, as the mail server gets slower?

End to end: N enrollments due now in a real SQLite file, one worker process
(``Drip`` with ``SMTPSender``) ticking until all are delivered, to a real SMTP
server in another process (tests/workers/smtp_server.py: aiosmtpd, any number
of connections, every message takes the given latency and is recorded before
the 250 reply). For each latency (default 0, 5, 20 and 50 ms per message) and
each K (default 1, 4, 8, 16: ``Drip(concurrency=K)`` and
``SMTPSender(connections=K)``, where this dripcore has them), one summary line:

- delivered emails/s, and its ratio to the physical limit: K messages per
  latency (at 0 ms there is no latency floor);
- CPU time per delivered email, of the worker process (all its threads) and
  of the server process, separately;
- with a latency, how many sends were in flight on average, as the server
  counted them (each message notes how many were in its DATA latency with it);
- that every message arrived, once.

At 0 ms, Postfix's C test tools set the pace of a client that does almost
nothing (Debian package ``postfix``; skipped, visibly, when they are absent):
``smtp-source -s K`` pushing the same message to ``smtp-sink``, against which
each K is compared; dripcore into ``smtp-sink`` (the client's own cost,
without the Python server's); and ``smtp-source`` into the test server (the
most that server lets any client do).

Targets, for 2 cores: at 20 ms, K=8 delivers at >= 80% of its limit; at
0 ms, K=1 delivers at >= 50% of one smtp-source session into smtp-sink.
Wall-clock figures depend on the machine, and on what else it runs::

    python benchmarks/bench_delivery.py                           # 2,000 messages a case
    python benchmarks/bench_delivery.py --latencies 20 --k 1 8    # some cases only
    python benchmarks/bench_delivery.py --quick                   # the smoke run the test suite uses
"""

from __future__ import annotations

import argparse
import inspect
import math
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the SMTP test server lives with the tests
    sys.path.insert(0, str(ROOT))

from tests.workers.smtp_server import HOST, process_cpu_seconds, start_server  # noqa: E402

from dripcore import Contact, Drip, ExitReason, Sequence, SequenceStatus, Step, enroll  # noqa: E402
from dripcore.adapters.memory import MemoryStore  # noqa: E402
from dripcore.adapters.sqlite import SQLiteStore  # noqa: E402
from dripcore.ports import ContactDirectory, SystemClock  # noqa: E402
from dripcore.senders import SMTPSender  # noqa: E402
from dripcore.testing import RecordingSender  # noqa: E402

UTC = timezone.utc
FROM = "news@shop.example"
LATENCIES_MS = (0.0, 5.0, 20.0, 50.0)
KS = (1, 4, 8, 16)
TARGET_LIMIT_SHARE = 0.80  # at TARGET_LIMIT_CASE
TARGET_LIMIT_CASE = (20.0, 8)
TARGET_POSTFIX_SHARE = 0.50  # K=1 at 0 ms against one smtp-source session into smtp-sink
EVER = datetime(4000, 1, 1, tzinfo=UTC)

#: The engine keeps K sends in flight (``Drip(concurrency=K)``); without it, K is 1.
ENGINE_CONCURRENCY = "concurrency" in inspect.signature(Drip).parameters
#: The sender keeps a pool of connections (``SMTPSender(connections=K)``); without it, one.
SENDER_CONNECTIONS = "connections" in inspect.signature(SMTPSender).parameters


def sequence() -> Sequence:
    """One step, due as soon as the contact is enrolled: one email per enrollment."""
    return Sequence(
        id="bench",
        name="Delivery benchmark",
        status=SequenceStatus.ACTIVE,
        steps=(
            Step(
                position=1,
                subject="Welcome, {{ firstName }}",
                text="Hello {{ firstName }},\n\nthanks for joining us. Here is what happens next.\n" * 3,
            ),
        ),
    )


class Contacts(ContactDirectory):
    """Every contact id exists, at ``<id>@example.com``."""

    def get(self, contact_id: str) -> Contact | None:
        return Contact(id=contact_id, email=f"{contact_id}@example.com", first_name="Ana")

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        return {i: Contact(id=i, email=f"{i}@example.com", first_name="Ana") for i in contact_ids}

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        raise AssertionError(f"nobody should be suppressed ({contact_id}, {reason})")


def build(path: Path, n: int) -> None:
    """``n`` enrollments due now in ``path``."""
    seq = sequence()
    now = datetime.now(UTC) - timedelta(seconds=1)
    with SQLiteStore(path) as store:
        store.save_sequence(seq)
        created = store.add_enrollments(
            (enroll(seq, None, now, enrollment_id=f"enr-{i:07d}", contact_id=f"c{i}").enrollment for i in range(n)),
            allow_reentry=False,
        )
    assert created == n


def sample_message(path: Path) -> Path:
    """The benchmark's email as dripcore renders it and SMTPSender writes it, for smtp-source to send
    the same bytes (``-F``)."""
    store, recorder = MemoryStore(), RecordingSender()
    store.save_sequence(sequence())
    drip = Drip(store=store, sender=recorder, contacts=Contacts(), clock=SystemClock())
    drip.enroll(sequence().id, "c0")
    drip.tick()
    (email,) = recorder.sent
    message = SMTPSender(host=HOST, port=25, default_sender=FROM).build_message(email)
    path.write_text(message.as_string().replace("\r\n", "\n"))
    return path


# --------------------------------------------------------------------------- the worker (in a child process)


def deliver(db: Path, port: int, k: int, batch: int | None) -> dict[str, Any]:
    """Tick until every due enrollment is delivered; wall and CPU seconds from the first tick to the last."""
    sender_options: dict[str, Any] = {"connections": k} if SENDER_CONNECTIONS else {}
    drip_options: dict[str, Any] = {"concurrency": k} if ENGINE_CONCURRENCY else {}
    if batch is not None:
        drip_options["batch_size"] = batch
    with SQLiteStore(db) as store:
        sender = SMTPSender(host=HOST, port=port, default_sender=FROM, timeout=60.0, **sender_options)
        drip = Drip(
            store=store, sender=sender, contacts=Contacts(), clock=SystemClock(), **drip_options,
            allow_placeholder_unsubscribe=True,  # the mail goes to a local sink
        )  # fmt: skip
        sent = 0
        cpu, started = time.process_time(), time.perf_counter()
        while True:
            report = drip.tick()
            if report.errors or report.retried or report.failed:
                raise RuntimeError(f"a send did not go through: {report.summary()} {report.errors[:3]}")
            sent += report.sent
            if not (report.claimed or report.messages):
                if store.count_due(EVER) == 0 and store.next_message_at() is None:
                    break
                time.sleep(0.001)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        sender.close()
    return {"sent": sent, "elapsed": elapsed, "worker_cpu": cpu}


def _child(queue: Any, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as exc:  # report it to the parent rather than dying silently
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn`` in a fresh child process: its CPU time is the worker's alone."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(queue, fn, args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: a fork with a thread alive
        process.start()
    status, result = queue.get()
    process.join()
    queue.close()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed: {result}")
    return result  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- cases


def case_size(n: int, latency_ms: float, k: int, seconds: float) -> int:
    """``n``, or fewer when the physical limit would take longer than ``seconds`` to deliver them."""
    if latency_ms <= 0:
        return n
    return max(min(n, 50), min(n, math.ceil(k * 1000 / latency_ms * seconds)))


def run_case(directory: Path, n: int, latency_ms: float, k: int, batch: int | None) -> dict[str, Any]:
    """N due enrollments through a worker with K in flight to the test server taking ``latency_ms``."""
    db, log = directory / f"case-{latency_ms:g}-{k}.db", directory / f"case-{latency_ms:g}-{k}.log"
    build(db, n)
    with start_server(log, latency_ms) as server:
        server_cpu = server.cpu_seconds()
        figures = in_process(deliver, db, server.port, k, batch)
        server_after = server.cpu_seconds()
        accepted = server.accepted()
    _remove(db, log)
    keys = Counter(message.key for message in accepted)
    figures.update(
        n=n, latency_ms=latency_ms, k=k, arrived=len(keys), repeats=sum(keys.values()) - len(keys),
        in_flight=statistics.fmean(message.in_flight for message in accepted) if accepted else 0.0,
        server_cpu=None if server_cpu is None or server_after is None else server_after - server_cpu,
    )  # fmt: skip
    return figures


def _remove(*paths: Path) -> None:
    for path in paths:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------- Postfix's tools


def postfix_tool(name: str) -> str | None:
    """The path of smtp-source or smtp-sink (often in /usr/sbin, off a user's PATH), or None."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class SmtpSink:
    """Postfix's smtp-sink on the loopback interface: takes every message and throws it away."""

    def __init__(self, tool: str) -> None:
        self.port = _free_port()
        as_root = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root without -u
        self.process = subprocess.Popen(
            [tool, *as_root, f"{HOST}:{self.port}", "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"smtp-sink did not start on port {self.port}") from None
                time.sleep(0.02)

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> SmtpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def smtp_source(tool: str, port: int, sessions: int, messages: int, message: Path) -> dict[str, Any]:
    """``messages`` copies of ``message`` over ``sessions`` parallel sessions, each kept open (``-d``)."""
    before = os.times()
    started = time.perf_counter()
    run = subprocess.run(
        [tool, "-d", "-s", str(sessions), "-m", str(messages), "-F", str(message), "-f", FROM,
         "-t", "c0@example.com", f"{HOST}:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"smtp-source exited with {run.returncode}: {run.stderr.strip()}")
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"rate": messages / elapsed, "client_cpu": cpu / messages}


def postfix_figures(directory: Path, n: int, ks: list[int], batch: int | None) -> dict[str, Any]:
    """At 0 ms: smtp-source -s K into smtp-sink and into the test server; dripcore into smtp-sink."""
    source, sink = postfix_tool("smtp-source"), postfix_tool("smtp-sink")
    if source is None or sink is None:
        return {"missing": " and ".join(name for name, tool in (("smtp-source", source), ("smtp-sink", sink))
                                        if tool is None)}  # fmt: skip
    message = sample_message(directory / "message.txt")
    messages = max(n, 5_000) if n >= 1_000 else n  # the C tools are quick: more messages, a steadier figure
    figures: dict[str, Any] = {"messages": messages, "into_sink": {}, "into_server": {}, "dripcore_into_sink": {}}
    with SmtpSink(sink) as running:
        for k in ks:
            cpu = running.cpu_seconds()
            figures["into_sink"][k] = smtp_source(source, running.port, k, messages, message)
            after = running.cpu_seconds()
            figures["into_sink"][k]["server_cpu"] = None if cpu is None or after is None else (after - cpu) / messages
        for k in ks:
            db = directory / f"sink-{k}.db"
            build(db, n)
            cpu = running.cpu_seconds()
            figures["dripcore_into_sink"][k] = in_process(deliver, db, running.port, k, batch)
            after = running.cpu_seconds()
            figures["dripcore_into_sink"][k]["server_cpu"] = None if cpu is None or after is None else after - cpu
            _remove(db)
    with start_server(directory / "source.log") as server:
        for k in ks:
            cpu = server.cpu_seconds()
            figures["into_server"][k] = smtp_source(source, server.port, k, messages, message)
            after = server.cpu_seconds()
            figures["into_server"][k]["server_cpu"] = None if cpu is None or after is None else (after - cpu) / messages
        arrived = len(server.accepted())
    assert arrived == messages * len(ks), f"the test server recorded {arrived} of smtp-source's messages"
    _remove(directory / "source.log", message)
    return figures


# --------------------------------------------------------------------------- report


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _ms(seconds: float | None, count: int) -> str:
    return "n/a" if seconds is None else f"{seconds / count * 1000:.3f} ms"


def report(cases: list[dict[str, Any]], postfix: dict[str, Any] | None, settings: str) -> list[str]:
    lines = [settings]
    sink = (postfix or {}).get("into_sink", {})
    for f in cases:
        latency, k, n = f["latency_ms"], f["k"], f["n"]
        rate = f["sent"] / f["elapsed"]
        arrived = (
            "every one arrived once"
            if f["arrived"] == n and f["repeats"] == 0
            else f"ARRIVED {f['arrived']:,} of {n:,}, {f['repeats']} repeated"
        )
        head = f"[{latency:g} ms, K={k}] {rate:,.0f} emails/s ({f['sent']:,} in {f['elapsed']:.2f} s, {arrived})"
        if latency > 0:
            limit = k * 1000 / latency
            target = (
                f"target >= {TARGET_LIMIT_SHARE:.0%}: {_verdict(rate / limit >= TARGET_LIMIT_SHARE)}"
                if (latency, k) == TARGET_LIMIT_CASE
                else "target: none set"
            )
            against = (
                f" = {rate / limit:.0%} of the physical limit {limit:,.0f}/s (K / latency) ({target}); "
                f"{f['in_flight']:.1f} in flight on average, as the server saw them"
            )
        else:
            against = "; no latency floor"
            if k in sink:
                sessions = "one smtp-source session" if k == 1 else f"smtp-source -s {k}"
                target = (
                    f"target >= {TARGET_POSTFIX_SHARE:.0%}: {_verdict(rate / sink[k]['rate'] >= TARGET_POSTFIX_SHARE)}"
                    if k == 1
                    else "target: none set"
                )
                share = rate / sink[k]["rate"]
                against += f"; {share:.1%} of {sessions} into smtp-sink ({sink[k]['rate']:,.0f}/s) ({target})"
        lines.append(
            f"{head}{against}; CPU per email: worker {_ms(f['worker_cpu'], f['sent'])}, "
            f"server {_ms(f['server_cpu'], f['sent'])}"
        )
    if postfix is None:
        return lines
    if "missing" in postfix:
        lines.append(f"Postfix comparison at 0 ms skipped: {postfix['missing']} not found (Debian package postfix)")
        return lines
    for k, f in postfix["into_sink"].items():
        lines.append(
            f"[Postfix, 0 ms] smtp-source -s {k} -> smtp-sink: {f['rate']:,.0f} emails/s over {postfix['messages']:,} "
            f"(the same message, connections kept open); CPU per email: client {f['client_cpu'] * 1000:.3f} ms, "
            f"server {_ms(f['server_cpu'], 1)}"
        )
    for k, f in postfix["dripcore_into_sink"].items():
        rate = f["sent"] / f["elapsed"]
        lines.append(
            f"[Postfix, 0 ms] dripcore K={k} -> smtp-sink (the worker's cost without the Python server's): "
            f"{rate:,.0f} emails/s = {rate / postfix['into_sink'][k]['rate']:.1%} of smtp-source -s {k}; "
            f"CPU per email: worker {_ms(f['worker_cpu'], f['sent'])}, smtp-sink {_ms(f['server_cpu'], f['sent'])}"
        )
    for k, f in postfix["into_server"].items():
        lines.append(
            f"[Postfix, 0 ms] smtp-source -s {k} -> the test server (the most it lets any client do): "
            f"{f['rate']:,.0f} emails/s; CPU per email: server {_ms(f['server_cpu'], 1)}"
        )
    return lines


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000, help="messages a case (default 2,000; see --seconds)")
    parser.add_argument(
        "--seconds", type=float, default=5.0,
        help="cap a case at what its physical limit delivers in this many seconds (default 5)",
    )  # fmt: skip
    parser.add_argument("--latencies", type=float, nargs="+", default=list(LATENCIES_MS), help="ms per message")
    parser.add_argument("--k", type=int, nargs="+", default=list(KS), help="sends in flight")
    parser.add_argument("--batch", type=int, default=None, help="Drip(batch_size=...) (default: Drip's)")
    parser.add_argument("--no-postfix", action="store_true", help="leave out the comparison with Postfix's tools")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 messages, 0 ms, K=1")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.latencies, args.k = 40, [0.0], [1]
    ks = sorted(set(args.k))
    runnable = [k for k in ks if k == 1 or ENGINE_CONCURRENCY]
    settings = (
        f"settings: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; SQLite file, "
        f"Drip(batch_size={args.batch or inspect.signature(Drip).parameters['batch_size'].default}), "
        f"server tests/workers/smtp_server.py (aiosmtpd, one process); "
        f"Drip(concurrency=K): {'yes' if ENGINE_CONCURRENCY else 'no'}, "
        f"SMTPSender(connections=K): {'yes' if SENDER_CONNECTIONS else 'no, one connection'}"
    )
    if len(runnable) < len(ks):
        settings += (
            f"; K={', '.join(str(k) for k in ks if k not in runnable)} not run: Drip has no `concurrency` "
            "parameter yet (this engine keeps one send in flight)"
        )
    directory = Path(tempfile.mkdtemp(prefix="dripcore-bench-delivery-", dir=args.dir))
    try:
        cases = [
            run_case(directory, case_size(args.n, latency, k, args.seconds), latency, k, args.batch)
            for latency in sorted(set(args.latencies))
            for k in runnable
        ]
        postfix = None
        if 0 in args.latencies and not args.no_postfix:
            postfix = postfix_figures(directory, args.n, runnable, args.batch)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    for line in report(cases, postfix, settings):
        print(line)
    return cases


if __name__ == "__main__":
    main()
