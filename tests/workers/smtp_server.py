"""A naive SMTP server in a process of its own, for the delivery crash test and benchmark.

Run as a script, it listens on the loopback interface (port 0: the system picks
one), prints that port on a line of its own when it is ready, and serves until
SIGTERM or SIGINT::

    python tests/workers/smtp_server.py --log accepted.log --latency-ms 20

- Every message takes ``--latency-ms`` in its DATA handler before the 250
  reply: an ``await asyncio.sleep``, so the other connections go on meanwhile
  (a mail server's own queueing and disk, seen from the client). Any number of
  connections at once.
- Every accepted message is recorded before the client hears 250: one line
  ``<X-Dripcore-Key> TAB <Message-ID> TAB <MAIL FROM> TAB <in flight>``
  appended to the log with a single ``os.write`` (``O_APPEND``), so a line is
  never torn or interleaved, and it outlives this process and the client's
  (``-`` stands for a missing header). ``in flight`` is how many messages were
  in their DATA latency at that moment, this one included: how many sends a
  client really keeps going. A client that drops the connection before that
  point has not delivered its message, as with a real server.
- It remembers nothing and never deduplicates: a message sent twice is
  recorded twice. That is the point: it counts what plain SMTP really sends.

Imported, the module starts and stops that process (:func:`start_server`,
:class:`RunningServer`) and reads its log (:func:`read_log`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import selectors
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

HOST = "127.0.0.1"
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_KEY = re.compile(rb"^X-Dripcore-Key:[ \t]*(.*?)[ \t]*\r?$", re.MULTILINE | re.IGNORECASE)
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)[ \t]*\r?$", re.MULTILINE | re.IGNORECASE)


class Accepted(NamedTuple):
    """One message the server accepted: its idempotency key, Message-ID, envelope sender, and how
    many messages were in the server's DATA latency when it was accepted (this one included)."""

    key: str
    message_id: str
    mail_from: str
    in_flight: int


def read_log(path: Path) -> list[Accepted]:
    """Every message the server accepted, in the order it accepted them (a repeat appears twice)."""
    if not path.exists():
        return []
    accepted = []
    for line in path.read_text(encoding="utf-8").splitlines():
        key, message_id, mail_from, in_flight = line.split("\t")
        accepted.append(Accepted(key, message_id, mail_from, int(in_flight)))
    return accepted


def _header(pattern: re.Pattern[bytes], head: bytes) -> str:
    found = pattern.search(head)
    if found is None:
        return "-"
    # a tab or line break would break the log's format; our keys and ids have none
    return found.group(1).decode("utf-8", "replace").replace("\t", " ") or "-"


class Recorder:
    """The aiosmtpd handler: waits ``latency`` seconds, appends the message's line to the log, says 250."""

    def __init__(self, fd: int, latency: float) -> None:
        self.fd = fd
        self.latency = latency
        self.in_flight = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_flight += 1
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            self._record(envelope)
        finally:
            self.in_flight -= 1
        return "250 2.0.0 accepted"

    def _record(self, envelope: Any) -> None:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        end = _HEADER_END.search(content)
        head = content[: end.start()] if end else content
        mail_from = (envelope.mail_from or "-").replace("\t", " ")
        line = f"{_header(_KEY, head)}\t{_header(_MESSAGE_ID, head)}\t{mail_from}\t{self.in_flight}\n"
        os.write(self.fd, line.encode("utf-8"))  # one write per message: whole lines, in acceptance order


async def serve(log: Path, latency_ms: float, host: str) -> None:
    from aiosmtpd.smtp import SMTP

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    handler = Recorder(fd, latency_ms / 1000)
    loop = asyncio.get_running_loop()
    # hostname given, so aiosmtpd doesn't look up this machine's FQDN for every connection
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="dripcore-test-server", enable_SMTPUTF8=True, data_size_limit=None),
        host=host, port=0, backlog=1024,
    )  # fmt: skip
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        server.close()
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, type=Path, help="the file accepted messages are appended to")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="time each message takes in DATA")
    parser.add_argument("--host", default=HOST)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.log, args.latency_ms, args.host))
    return 0


# --------------------------------------------------------------------------- helpers for tests and benchmarks


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a running process, from /proc (None where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # the command name may hold spaces: the fields after it start past its closing parenthesis
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class RunningServer:
    """A server process started by :func:`start_server`; a context manager that stops it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path, latency_ms: float) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.latency_ms = latency_ms

    @property
    def host(self) -> str:
        return HOST

    def accepted(self) -> list[Accepted]:
        """What the server has accepted so far (see :func:`read_log`)."""
        return read_log(self.log)

    def cpu_seconds(self) -> float | None:
        """The server process's CPU time so far (None where it can't be read)."""
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it hasn't gone within 10 s; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(log: Path, latency_ms: float = 0.0, *, timeout: float = 30.0) -> RunningServer:
    """Start the server in a new process recording to ``log``; return once it listens."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--log", str(log), "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
    line = process.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        RunningServer(process, 0, log, latency_ms).stop()
        raise RuntimeError(f"the SMTP server did not start within {timeout}s (exit status {process.returncode})")
    return RunningServer(process, int(line), log, latency_ms)


if __name__ == "__main__":
    sys.exit(main())
