"""What stands between a tick and the sender: the circuit breaker and the thread pool sends run on."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

__all__ = ["Breaker", "SendPool"]


class Breaker:
    """The circuit breaker in front of the sender.

    Closed, sends go. ``threshold`` failures in a row (transient ones, or errors the
    sender should not raise), or one :class:`~dripcore.errors.SenderUnavailable`, open
    it for a cooldown that starts at ``cooldown`` and doubles up to ``longest`` while it
    keeps failing. While open nothing is sent and nothing claimed. Once the cooldown
    has passed, sends go again; the first failure then reopens it, the first success
    closes it.
    """

    def __init__(self, *, threshold: int = 5, cooldown: timedelta = timedelta(seconds=30),
                 longest: timedelta = timedelta(minutes=10)) -> None:  # fmt: skip
        self.threshold = threshold
        self.first_cooldown = cooldown
        self.longest = longest
        self._lock = threading.Lock()
        self._failures = 0
        self._cooldown = cooldown
        self.open_until: datetime | None = None

    def is_open(self, now: datetime) -> bool:
        """Whether sending is held back at ``now``."""
        until = self.open_until
        return until is not None and now < until

    def succeeded(self) -> None:
        """A send reached the provider: close."""
        with self._lock:
            self._failures = 0
            self._cooldown = self.first_cooldown
            self.open_until = None

    def failed(self, now: datetime, *, whole: bool) -> bool:
        """A send failed (``whole``: the sender as a whole); True if that opened the breaker."""
        with self._lock:
            self._failures += 1
            if not whole and self._failures < self.threshold:
                return False
            if self.open_until is not None and now < self.open_until:
                return False  # already open: a send that was in flight when it opened
            self.open_until = now + self._cooldown
            self._cooldown = min(self._cooldown * 2, self.longest)
            self._failures = self.threshold - 1  # half-open after the cooldown: one failure reopens
            return True


class SendPool:
    """The worker's thread pool for sends, made (or remade) at the size a delivery run asks for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._size = 0

    def get(self, size: int) -> ThreadPoolExecutor:
        """The pool, with ``size`` threads."""
        with self._lock:
            if self._executor is None or self._size != size:
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="dripcore-send")
                self._size = size
            return self._executor
