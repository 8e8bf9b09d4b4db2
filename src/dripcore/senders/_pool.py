"""Lends up to ``size`` reusable connections, each to one thread at a time.

A thread takes a :class:`Lease` (blocking while ``size`` leases are out), and
through it one connection at a time: an idle one (the most recently returned,
so a quiet sender keeps using one connection), or a new one when none is
idle. Ending the lease without an error, or calling :meth:`Lease.give_back`,
returns the connection for the next thread; ending it on an exception drops
the connection (it is in an unknown state), and so does
:meth:`Lease.discard`. A connection that has served ``max_uses`` times is
closed politely instead of being reused, and so is one that comes back after
the pool was closed. So at most ``size`` connections are ever open at once:
a connection is either idle or held by one of at most ``size`` leases.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["ConnectionPool", "Lease"]

C = TypeVar("C")


class _Slot(Generic[C]):
    """A connection, how many times it has served, and the pool generation that opened it."""

    __slots__ = ("connection", "generation", "uses")

    def __init__(self, connection: C, generation: int) -> None:
        self.connection = connection
        self.generation = generation
        self.uses = 0


class ConnectionPool(Generic[C]):
    """Up to ``size`` connections made by ``open``; ``close(connection, polite)`` ends one
    (``polite``: say goodbye first; else just drop it)."""

    def __init__(self, size: int, *, open: Callable[[], C], close: Callable[[C, bool], None], max_uses: int) -> None:
        self.size = size
        self.max_uses = max_uses
        self._open = open
        self._close = close
        self._permits = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Slot[C]] = []
        self._generation = 0

    def lease(self) -> Lease[C]:
        """A hold on one connection at a time, for ``with``; blocks while all ``size`` are lent."""
        self._permits.acquire()
        return Lease(self)

    def close(self) -> None:
        """Close the idle connections now, and those lent out when they come back.

        The pool stays usable: the next lease opens a new connection.
        """
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for slot in idle:
            self._close(slot.connection, True)

    # -- for Lease

    def _take(self, fresh: bool) -> tuple[_Slot[C], bool]:
        """An idle connection (not with ``fresh``) and True, or a new one and False."""
        slot = None
        if not fresh:
            with self._lock:
                if self._idle:
                    slot = self._idle.pop()
        if slot is not None and slot.uses >= self.max_uses:
            self._close(slot.connection, True)
            slot = None
        if slot is not None:
            return slot, True
        connection = self._open()
        with self._lock:
            generation = self._generation
        return _Slot(connection, generation), False

    def _give_back(self, slot: _Slot[C]) -> None:
        with self._lock:
            if slot.generation == self._generation:
                self._idle.append(slot)
                return
        self._close(slot.connection, True)


class Lease(Generic[C]):
    """One thread's hold on a :class:`ConnectionPool`: one connection at a time, given back at the end."""

    def __init__(self, pool: ConnectionPool[C]) -> None:
        self._pool = pool
        self._slot: _Slot[C] | None = None
        self._reused = False
        self._done = False

    def connection(self, *, fresh: bool = False) -> tuple[C, bool]:
        """The connection held (else an idle one, else a new one; only a new one with ``fresh``),
        and whether it was taken idle from the pool (it may have gone stale there).
        Raises what ``open`` raises."""
        if self._slot is None:
            self._slot, self._reused = self._pool._take(fresh)
        return self._slot.connection, self._reused

    def served(self) -> None:
        """Count one use of the held connection (toward ``max_uses``)."""
        if self._slot is not None:
            self._slot.uses += 1

    def give_back(self) -> None:
        """Return the held connection to the pool now: it is fit for the next command."""
        slot, self._slot = self._slot, None
        if slot is not None:
            self._pool._give_back(slot)

    def discard(self) -> None:
        """Drop the held connection without a goodbye: it is in an unknown state."""
        slot, self._slot = self._slot, None
        if slot is not None:
            self._pool._close(slot.connection, False)

    def __enter__(self) -> Lease[C]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._done:
            return
        self._done = True
        slot, self._slot = self._slot, None
        try:
            if slot is not None:
                if error is None:
                    self._pool._give_back(slot)
                else:  # interrupted mid-conversation: nobody knows what the other side expects next
                    self._pool._close(slot.connection, False)
        finally:
            self._pool._permits.release()
