"""An EventSink that posts signed webhooks: each lifecycle event as JSON, with an HMAC signature.

dripcore publishes events after they are committed; this sink POSTs each one to
a URL with two headers the receiver checks:

- ``X-Dripcore-Timestamp``: seconds since the epoch when it was sent;
- ``X-Dripcore-Signature``: ``sha256=<hex HMAC of "<timestamp>.<body>" with the shared secret>``.

The receiver recomputes the HMAC with :func:`verify` (constant-time compare,
and a tolerance on the timestamp against replays). Run this file to see it
work end to end against a local receiver::

    python examples/webhook_sink.py
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from dripcore import Contact, Drip, Event, event_to_json
from dripcore import Sequence as DripSequence
from dripcore.adapters.memory import MemoryStore
from dripcore.ports import EventSink
from dripcore.prefabs import welcome_series
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, *, tolerance: int = 300) -> bool:
    """Whether a received webhook is authentic and fresh."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


class WebhookSink(EventSink):
    """POSTs each event to ``url``, signed with ``secret``. Failures raise, and the
    engine reports them in the tick's errors without stopping (add a queue and
    retries in production, or publish from your own outbox)."""

    def __init__(self, url: str, secret: bytes, *, timeout: float = 5.0) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout

    def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            body = json.dumps(event_to_json(event), separators=(",", ":")).encode()
            timestamp = int(time.time())
            request = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "X-Dripcore-Event": event.wire_name,
                    "X-Dripcore-Timestamp": str(timestamp),
                    "X-Dripcore-Signature": sign(self.secret, timestamp, body),
                },
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()


def receiver(secret: bytes) -> tuple[HTTPServer, list[dict[str, Any]]]:
    """A local webhook receiver that keeps the events whose signature checks out."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = verify(secret, self.headers["X-Dripcore-Timestamp"], self.headers["X-Dripcore-Signature"], body)
            if ok:
                received.append(json.loads(body))
            self.send_response(204 if ok else 401)
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep the example's output readable
            pass

    return HTTPServer(("127.0.0.1", 0), Handler), received


def main() -> list[dict[str, Any]]:
    secret = b"shared-secret"
    server, received = receiver(secret)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks/dripcore"
        drip = Drip(
            store=MemoryStore(),
            sender=RecordingSender(),
            contacts=MemoryContacts([Contact(id="ana", email="ana@example.com", first_name="Ana")]),
            clock=FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)),
            events=WebhookSink(url, secret),
        )
        sequence: DripSequence = welcome_series()
        drip.save_sequence(sequence)
        drip.activate(sequence.id)
        drip.enroll(sequence.id, "ana")
        drip.tick()
    finally:
        server.shutdown()
        server.server_close()
    for payload in received:
        print(f"{payload['type']:<22} {payload['contact_id']} {payload['at']}")
    return received


if __name__ == "__main__":
    main()
