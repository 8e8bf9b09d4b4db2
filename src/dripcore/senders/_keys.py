"""The idempotency keys a sender has delivered in this process, shared safely by its threads.

:meth:`DeliveredKeys.begin` either returns the Message-ID a key was delivered
with, or hands the key to the calling thread until it calls
:meth:`~DeliveredKeys.delivered` or :meth:`~DeliveredKeys.failed`. A second
thread that begins the same key meanwhile waits for that outcome: it gets the
Message-ID if the first delivered, or the key itself if the first failed, so
one key is never on the wire twice at once nor sent again once delivered.
The last ``size`` delivered keys are remembered, oldest forgotten first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["DeliveredKeys"]


class DeliveredKeys:
    """Delivered keys (the last ``size``) and keys on their way, with their Message-IDs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._delivered: OrderedDict[str, str] = OrderedDict()
        self._sending: dict[str, threading.Event] = {}

    def begin(self, key: str) -> str | None:
        """The Message-ID ``key`` was delivered with; else None, and ``key`` is the caller's to send."""
        while True:
            with self._lock:
                if key in self._delivered:
                    return self._delivered[key]
                settled = self._sending.get(key)
                if settled is None:
                    self._sending[key] = threading.Event()
                    return None
            settled.wait()

    def delivered(self, key: str, message_id: str) -> None:
        """Record that ``key`` went out with ``message_id``, and wake the threads waiting for it."""
        with self._lock:
            if self.size > 0:
                self._delivered[key] = message_id
                while len(self._delivered) > self.size:
                    self._delivered.popitem(last=False)
            settled = self._sending.pop(key, None)
        if settled is not None:
            settled.set()

    def failed(self, key: str) -> None:
        """``key`` did not go out: release it to the next thread that begins it."""
        with self._lock:
            settled = self._sending.pop(key, None)
        if settled is not None:
            settled.set()
