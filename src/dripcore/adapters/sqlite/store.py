"""SQLiteStore: the :class:`~dripcore.ports.Store` on one SQLite file: its transactions, claims, commits and settles."""

from __future__ import annotations

import itertools
import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as Seq
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from ..._checks import (
    MAX_SPAN,
    check_claim,
    check_count,
    check_counters,
    check_flag,
    check_id,
    check_ids,
    check_instant,
    check_opt_id,
    check_opt_instant,
    check_record,
    check_records,
    check_span,
)
from ...errors import ConcurrencyConflict, InvalidArgument, SequenceNotFound, SequenceStateError
from ...model import Enrollment, Sequence, SequenceStatus, to_utc
from ...ports import BrokenRecord, Change, Counter, Delivery, OutboxMessage, OutboxStatus
from .._base import SQLStoreBase
from .._common import checked_counters, dumps, rejected_changes, rejected_deliveries, sum_counters
from .codec import (
    ENROLLMENT_COLUMNS,
    LIVE_STATUSES,
    MICROSECOND,
    NULL,
    OR_NULL,
    OUTBOX_COLUMNS,
    enrollment_from_row,
    enrollment_state,
    from_instant,
    instant,
    message_from_row,
    message_row,
)
from .connection import Checkpointer, abandon, check_path, open_connection, translate_error
from .errors import SQLiteStoreError

__all__ = ["SQLiteStore"]

log = logging.getLogger("dripcore.sqlite")

# A contact's next step waits until the previous email is settled (delivered or
# given up on): an enrollment with a PENDING message is not claimable. One probe
# of the small index of pending messages per due row read (named: SQLite's planner
# would otherwise take the index of all messages, which is as selective on paper).
_NOTHING_PENDING = (
    "NOT EXISTS (SELECT 1 FROM outbox AS o INDEXED BY outbox_pending_by_enrollment "
    "WHERE o.enrollment_id = enrollments.id AND o.status = 'pending')"
)
# A pause holds a pending message (a retry, or a crashed worker's): its enrollment is PAUSED,
# or ACTIVE in a sequence that is not (seq_live, as claims read it). Messages of finished or
# deleted enrollments are not held: the engine takes them to drop them unsent. One probe of
# the enrollments' id index per candidate message.
_NOT_HELD = (
    "NOT EXISTS (SELECT 1 FROM enrollments AS e WHERE e.id = outbox.enrollment_id "
    "AND (e.status = 'paused' OR (e.status = 'active' AND e.seq_live = 0)))"
)
# Not under another unexpired lease (an expired one is as good as none).
_NOT_LEASED = "NOT EXISTS (SELECT 1 FROM leases AS l WHERE l.rid = enrollments.rid AND l.until > ?)"

_UPDATE_STATE = (
    f"UPDATE enrollments SET status = ?, next_due = {OR_NULL}, last_step_sent = ?, last_step_sent_at = {OR_NULL}, "
    f"exit_reason = {OR_NULL}, paused_at = {OR_NULL}, ended_at = {OR_NULL}, variables = {OR_NULL}, "
    f"opened = {OR_NULL}, clicked = {OR_NULL}, skipped = {OR_NULL}, version = ? WHERE rid = ?"
)
# The row must still be that enrollment (a deleted row's rid is handed out again) at that version.
_UPDATE_STATE_IF_VERSION = f"{_UPDATE_STATE} AND id = ? AND version = ?"
# Claim hints kept at most (a worker that claims and never commits or releases must not grow them).
_CLAIMED_HINTS = 100_000
_UPDATE_IDENTITY = (
    "UPDATE enrollments SET sequence_id = ?, contact_id = ?, dedupe_key = ?, enrolled_at = ?, "
    "seq_live = coalesce((SELECT s.status = 'active' FROM sequences AS s WHERE s.id = ?), 0) WHERE rid = ?"
)
_INSERT_ENROLLMENT = (
    "INSERT INTO enrollments (id, sequence_id, contact_id, dedupe_key, enrolled_at, status, next_due, "
    "last_step_sent, last_step_sent_at, exit_reason, paused_at, ended_at, variables, opened, clicked, skipped, "
    f"version, seq_live) VALUES (?, ?, ?, {OR_NULL}, ?, ?, {OR_NULL}, ?, {', '.join([OR_NULL] * 8)}, ?, ?)"
)


_INSERT_MESSAGE = (
    f"INSERT OR IGNORE INTO outbox ({OUTBOX_COLUMNS}, lease_owner, lease_until) "
    f"VALUES (?, ?, ?, ?, ?, ?, ?, {OR_NULL}, ?, {', '.join([OR_NULL] * 12)})"
)


def _insert_messages(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert outbox rows in key order: a batch's keys, in due order, are random in key
    order, and sorted they fill neighbouring leaves of the key's b-tree one after the
    other instead of jumping between them. The sort is stable, so of two rows with
    one key the first is still the one kept."""
    if rows:
        rows.sort(key=_first)
        conn.executemany(_INSERT_MESSAGE, rows)


_first = operator.itemgetter(0)


_SETTLE = (
    f"UPDATE outbox SET status = ?, attempts = attempts + 1, next_attempt_at = {OR_NULL}, last_error = {OR_NULL}, "
    f"settled_at = {OR_NULL}, provider_id = {OR_NULL}, lease_owner = NULL, lease_until = NULL "
    "WHERE key = ? AND status = 'pending'"
)

_UPSERT_COUNTER = (
    "INSERT INTO counters (sequence_id, position, name, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (sequence_id, position, name) DO UPDATE SET value = value + excluded.value"
)


class SQLiteStore(SQLStoreBase):
    """A :class:`~dripcore.ports.Store` in one SQLite file, shareable by worker processes.

    >>> import tempfile, os
    >>> from dripcore.adapters.sqlite import SQLiteStore
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with SQLiteStore(os.path.join(tmp, "drip.db")) as store:
    ...         store.list_sequences()
    []

    ``path`` is created (with its schema) when missing; ``":memory:"`` gives a
    private in-memory database (one process only). ``busy_timeout`` is how long
    a writer waits for another process's write lock before raising
    :class:`DatabaseLocked`. ``synchronous`` is SQLite's durability level
    (``"NORMAL"``: committed work survives a killed process; ``"FULL"``: also a
    power cut). ``cache_size_kib`` bounds SQLite's page cache: SQLite's own
    default of 2 MiB keeps an embedding app lean; a store of a million
    enrollments dispatches faster with more (``65536``, 64 MiB: see
    ``benchmarks/bench_sqlite.py``). ``pragmas``
    adds any other per-connection ``PRAGMA`` (``{"max_page_count": 1000}``).
    ``background_checkpoints`` copies the WAL back into the file on a thread
    of the store's own rather than inside a writer's COMMIT (see
    :class:`~dripcore.adapters.sqlite.connection.Checkpointer`); pass False to leave it to SQLite.
    ``pickup_interval`` is how often :meth:`wait_for_work` looks for other
    connections' commits (seconds; more than 0, at most 60).

    Reading a row that can't be decoded: :meth:`claim_due` returns it as a
    :class:`~dripcore.ports.BrokenRecord`; :meth:`get_enrollment`,
    :meth:`get_sequence` and :meth:`add_enrollment` raise
    :class:`CorruptRecord`; listings (:meth:`find_enrollments`,
    :meth:`list_sequences`, :meth:`find_messages`) log it and leave it out;
    :meth:`claim_messages` logs it and leaves it leased (set aside until the
    lease ends).
    """

    capabilities = frozenset({"multiprocess", "frequency_cap", "retention"})

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        synchronous: str = "NORMAL",
        cache_size_kib: int = 2048,
        pragmas: Mapping[str, str | int] | None = None,
        background_checkpoints: bool = True,
        pickup_interval: float = 0.1,
    ) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = float(busy_timeout)
        if isinstance(pickup_interval, bool) or not isinstance(pickup_interval, (int, float)):
            raise TypeError(f"pickup_interval={pickup_interval!r}: expected a number of seconds")
        if not 0 < pickup_interval <= 60:
            raise ValueError(f"pickup_interval={pickup_interval!r}: expected more than 0 and at most 60 seconds")
        self.pickup_interval = float(pickup_interval)
        self._synchronous = synchronous.upper()
        if self._synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r}: expected OFF, NORMAL, FULL or EXTRA")
        self._cache_size_kib = int(cache_size_kib)
        self._pragmas = dict(pragmas or {})
        for name in self._pragmas:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"pragmas: {name!r} is not a pragma name")
        self._memory = self.path == ":memory:"
        if self._memory:
            self.capabilities = frozenset({"frequency_cap", "retention"})
        super().__init__(self.path, log)
        self._lock = threading.RLock()
        # What this store last claimed, by enrollment id: (rid, version, identity, owner, lease end).
        # A hint for commit()'s fast path; the version check in SQL is what decides.
        self._claimed: dict[str, tuple[int, int, tuple[Any, ...], str, int]] = {}
        self._closed = False
        self._background_checkpoints = background_checkpoints and not self._memory
        if not self._memory:
            check_path(self.path)
        # PRAGMA data_version as wait_for_work last read it (a value of the current connection
        # only, read when it opens), and when a change it saw last woke a caller (time.monotonic()).
        self._seen_version = 0
        self._picked_up_at = -float("inf")
        self._conn = self._open()
        self._pid = os.getpid()
        self._checkpointer = Checkpointer(self.path) if self._background_checkpoints else None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # ------------------------------------------------------------------ the shared base's hooks

    _enrollment_columns = ENROLLMENT_COLUMNS
    _outbox_columns = OUTBOX_COLUMNS
    _enrollment_from_row = staticmethod(enrollment_from_row)
    _message_from_row = staticmethod(message_from_row)

    def _read_all(self, action: str, sql: str, params: Seq[Any] = ()) -> list[Any]:
        with self._read(action) as conn:
            return conn.execute(sql, params).fetchall()

    def _write_counter_totals(self, totals: Mapping[tuple[str, int, str], int]) -> None:
        with self._write("bump counters") as conn:
            _write_counters(conn, totals)

    def _prune_batch(self, cutoff: datetime, batch_size: int) -> int:
        with self._write("prune outbox messages") as conn:
            return int(
                conn.execute(
                    "DELETE FROM outbox WHERE key IN (SELECT key FROM outbox WHERE status != 'pending' "
                    "AND settled_at < ? LIMIT ?)",
                    (instant(cutoff), batch_size),
                ).rowcount
            )

    # ------------------------------------------------------------------ opening

    def _open(self) -> sqlite3.Connection:
        conn = open_connection(
            self.path, busy_timeout=self.busy_timeout, synchronous=self._synchronous,
            cache_size_kib=self._cache_size_kib, pragmas=self._pragmas,
            background_checkpoints=self._background_checkpoints,
        )  # fmt: skip
        try:
            self._seen_version = self._data_version(conn)  # what this connection has seen: everything so far
        except BaseException:
            conn.close()
            raise
        return conn

    # ------------------------------------------------------------------ plumbing

    def _error(self, exc: sqlite3.Error, action: str) -> SQLiteStoreError:
        """Translate a sqlite3 error into the dripcore error that says what to do."""
        return translate_error(exc, self.path, action, self.busy_timeout)

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise SQLiteStoreError(self.path, "the store is closed")
        if os.getpid() != self._pid:
            abandon(self._conn)
            if self._checkpointer is not None:
                self._checkpointer.abandon()
            self._conn = self._open()
            self._pid = os.getpid()
            self._checkpointer = Checkpointer(self.path) if self._background_checkpoints else None
        return self._conn

    def _data_version(self, conn: sqlite3.Connection) -> int:
        """``PRAGMA data_version`` of ``conn``: it changes when another connection commits."""
        try:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._error(exc, "read the data version") from exc

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: all of it commits, or none of it."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc, action) from exc
            try:
                yield conn
                conn.execute("COMMIT")
                if self._checkpointer is not None:
                    self._checkpointer.poke()
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # the connection is unusable; the transaction is gone anyway
                        log.exception("%s: rollback failed", self.path)
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc, action) from exc
                raise

    @contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self._error(exc, action) from exc

    # ------------------------------------------------------------------ wake-ups

    def wait_for_work(self, timeout: float, wake: threading.Event | None = None) -> bool:
        """Block up to ``timeout`` seconds; return True early when another connection (another
        process, or another store on this file) has committed since this store last looked, or
        when ``wake`` is set; False when the timeout passed.

        Every ``pickup_interval`` seconds (0.1 s by default) it reads ``PRAGMA data_version``
        on the store's connection: a look at the WAL index in shared memory that takes no
        write lock, writes nothing and blocks no one, and changes only when *another*
        connection commits (this store's own commits leave it alone, so a worker is not woken
        by its own writes). A commit in a web process therefore reaches an idle worker within
        about ``pickup_interval``; 0.1 s keeps that well under a second at the cost of ten
        reads of shared memory a second. A write that is not work (a settle, a click) wakes
        the caller too, which then only finds nothing due; such wake-ups come at most once per
        ``pickup_interval``, so a busy neighbour can't spin an idle worker. ``":memory:"``
        stores, which no other connection can see, just wait.

        The store's lock is held only for each read, so other threads use the store meanwhile
        (a look waits at most ``pickup_interval`` for it, else the next look tells). One thread
        per store should wait at a time (the first to see a change takes it). Never raises for
        a database problem: it logs it and waits out the timeout as a plain wait. Used by
        :meth:`Drip.run <dripcore.engine.Drip.run>` with the system clock.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        interval = self.pickup_interval
        listening = not self._memory
        look_at = self._picked_up_at + interval  # the rate limit on wake-ups by others' writes
        while True:
            if wake is not None and wake.is_set():
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            if listening and now >= look_at:
                changed = self._other_commits(interval)
                if changed:
                    self._picked_up_at = time.monotonic()
                    return True
                listening = changed is not None  # closed or failing: a plain wait from here on
                look_at = time.monotonic() + interval
            pause = (min(deadline, look_at) if listening else deadline) - time.monotonic()
            if pause > 0:
                if wake is not None:
                    wake.wait(pause)
                else:
                    time.sleep(pause)

    def _other_commits(self, patience: float) -> bool | None:
        """Whether another connection committed since the last look; None when it can't tell (the
        store is closed, or failing). False too while another thread keeps the store busy for
        ``patience`` seconds: the next look will tell."""
        if not self._lock.acquire(timeout=patience):
            return False
        try:
            if self._closed:
                return None
            conn = self._connection()  # after a fork, the child's own connection (with a new baseline)
            version = self._data_version(conn)
            changed = version != self._seen_version
            self._seen_version = version
            return changed
        except (SQLiteStoreError, sqlite3.Error) as exc:
            log.warning("%s: can't watch for other processes' writes (%s); waiting without it", self.path, exc)
            return None
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the connection (idempotent). The file and its data stay."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() == self._pid:
                if self._checkpointer is not None:
                    self._checkpointer.stop()
                self._conn.close()
            else:
                abandon(self._conn)
                if self._checkpointer is not None:
                    self._checkpointer.abandon()

    def schema_version(self) -> int:
        """The schema version of the open file (:data:`SCHEMA_VERSION` once opened)."""
        with self._read("read the schema version") as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ sequences

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        """Insert (``expected_version=None``) or replace at the expected version, atomically."""
        check_record(sequence, Sequence, "sequence")
        if expected_version is not None:
            check_count(expected_version, "expected_version")
        body = dumps(self._converter.unstructure(sequence))
        with self._write("save a sequence") as conn:
            self._save_sequence(conn, sequence, body, expected_version)

    def resume_sequence(self, sequence: Sequence, *, expected_version: int, shift: timedelta) -> int:
        """Save the resumed sequence and move its ACTIVE enrollments, and their PENDING messages' next
        attempts, ``shift`` later, in one transaction."""
        check_record(sequence, Sequence, "sequence")
        check_count(expected_version, "expected_version")
        check_span(shift, "shift", maximum=MAX_SPAN)
        body = dumps(self._converter.unstructure(sequence))
        micros = shift // MICROSECOND
        with self._write("resume a sequence") as conn:
            self._save_sequence(conn, sequence, body, expected_version)
            # The retries the pause held: a read of the small index of pending messages, and
            # one probe of the enrollments' id index per message.
            conn.execute(
                "UPDATE outbox SET next_attempt_at = next_attempt_at + ? WHERE status = 'pending' "
                "AND sequence_id = ? AND next_attempt_at IS NOT NULL AND EXISTS (SELECT 1 FROM enrollments AS e "
                "WHERE e.id = outbox.enrollment_id AND e.sequence_id = ? AND e.status = 'active' "
                "AND e.next_due IS NOT NULL)",
                (micros, sequence.id, sequence.id),
            )
            return conn.execute(
                "UPDATE enrollments SET next_due = next_due + ?, version = version + 1 "
                "WHERE sequence_id = ? AND status = 'active' AND next_due IS NOT NULL",
                (micros, sequence.id),
            ).rowcount

    @staticmethod
    def _save_sequence(conn: sqlite3.Connection, sequence: Sequence, body: str, expected_version: int | None) -> None:
        row = conn.execute("SELECT status, version FROM sequences WHERE id = ?", (sequence.id,)).fetchone()
        if expected_version is None:
            if row is not None:
                raise ConcurrencyConflict(kind="sequence", id=sequence.id, expected=0, actual=row[1])
        elif row is None or row[1] != expected_version:
            raise ConcurrencyConflict(
                kind="sequence", id=sequence.id, expected=expected_version, actual=None if row is None else row[1]
            )
        conn.execute(
            "INSERT OR REPLACE INTO sequences (id, status, version, body) VALUES (?, ?, ?, ?)",
            (sequence.id, sequence.status.value, sequence.version, body),
        )
        was_live = row is not None and row[0] == "active"
        live = sequence.status is SequenceStatus.ACTIVE
        if live != was_live:
            conn.execute(
                "UPDATE enrollments SET seq_live = ? WHERE sequence_id = ? AND seq_live != ?",
                (int(live), sequence.id, int(live)),
            )

    def delete_sequence(self, sequence_id: str) -> None:
        """Delete a sequence with no live enrollments, and its enrollments, messages and counters."""
        sequence_id = check_id(sequence_id, "sequence_id")
        with self._write("delete a sequence") as conn:
            row = conn.execute("SELECT status FROM sequences WHERE id = ?", (sequence_id,)).fetchone()
            if row is None:
                raise SequenceNotFound(sequence_id)
            live = conn.execute(
                "SELECT count(*) FROM enrollments WHERE sequence_id = ? AND status IN ('active', 'paused')",
                (sequence_id,),
            ).fetchone()[0]
            if live:
                raise SequenceStateError(
                    sequence_id=sequence_id, status=row[0], action="delete",
                    hint=f"it has {live} active or paused enrollments; archive it first",
                )  # fmt: skip
            conn.execute(
                "DELETE FROM leases WHERE rid IN (SELECT rid FROM enrollments WHERE sequence_id = ?)", (sequence_id,)
            )
            conn.execute("DELETE FROM enrollments WHERE sequence_id = ?", (sequence_id,))
            conn.execute("DELETE FROM outbox WHERE sequence_id = ?", (sequence_id,))
            conn.execute("DELETE FROM counters WHERE sequence_id = ?", (sequence_id,))
            conn.execute("DELETE FROM sequences WHERE id = ?", (sequence_id,))

    # ------------------------------------------------------------------ enrollments

    @staticmethod
    def _insert_row(e: Enrollment, live: int) -> tuple[Any, ...]:
        return (
            e.id, e.sequence_id, e.contact_id, NULL if e.key is None else e.key, instant(e.enrolled_at),
            *enrollment_state(e), e.version, live,
        )  # fmt: skip

    def add_enrollment(
        self, enrollment: Enrollment, *, allow_reentry: bool, counters: Seq[Counter] = ()
    ) -> tuple[Enrollment, bool]:
        """Insert unless the contact is already (or, without re-entry, was) in the sequence for that key."""
        check_record(enrollment, Enrollment, "enrollment")
        check_flag(allow_reentry, "allow_reentry")
        counters = check_counters(counters)
        with self._write("add an enrollment") as conn:
            existing = self._existing(conn, enrollment)
            if existing is not None and (existing[1] or not allow_reentry):
                return self._decode_enrollment(existing[0]), False
            live = self._sequence_live(conn, enrollment.sequence_id)
            try:
                conn.execute(_INSERT_ENROLLMENT, self._insert_row(enrollment, live))
            except sqlite3.IntegrityError:
                raise ConcurrencyConflict(kind="enrollment", id=enrollment.id, expected=0, actual=0) from None
            totals: dict[tuple[str, int, str], int] = {}
            sum_counters(counters, totals)
            _write_counters(conn, totals)
            return enrollment, True

    @staticmethod
    def _existing(conn: sqlite3.Connection, e: Enrollment) -> tuple[Seq[Any], bool] | None:
        """The enrollment to return instead of inserting ``e``: (row, live) of a live one, else of the latest."""
        rows = conn.execute(
            f"SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE contact_id = ? AND sequence_id = ? "
            "AND dedupe_key IS ? ORDER BY rid",
            (e.contact_id, e.sequence_id, e.key),
        ).fetchall()
        for row in rows:
            if row[3] in LIVE_STATUSES:
                return row, True
        return (rows[-1], False) if rows else None

    @staticmethod
    def _sequence_live(conn: sqlite3.Connection, sequence_id: str) -> int:
        row = conn.execute("SELECT status FROM sequences WHERE id = ?", (sequence_id,)).fetchone()
        return int(row is not None and row[0] == "active")

    def add_enrollments(
        self,
        enrollments: Iterable[Enrollment],
        *,
        allow_reentry: bool,
        counters: Callable[[Enrollment], Iterable[Counter]] | None = None,
        batch_size: int = 10_000,
    ) -> int:
        """Bulk :meth:`add_enrollment` (an import, a backfill): the same rules per enrollment, one
        transaction per ``batch_size``; returns how many were created.

        ``counters(enrollment)`` gives the increments of each created one. An id
        that already exists raises :class:`~dripcore.errors.ConcurrencyConflict`
        and rolls back the current batch (earlier batches stay).
        """
        check_flag(allow_reentry, "allow_reentry")
        created = 0
        iterator = iter(enrollments)
        while True:
            chunk = list(itertools.islice(iterator, batch_size))
            if not chunk:
                return created
            with self._write("add enrollments") as conn:
                live_by_sequence: dict[str, int] = {}
                totals: dict[tuple[str, int, str], int] = {}
                rows = []
                seen: set[tuple[str, str, str | None]] = set()
                for e in chunk:
                    identity = (e.sequence_id, e.contact_id, e.key)
                    if identity in seen:
                        continue  # the first of two in one batch wins, as two calls would
                    existing = self._existing(conn, e)
                    if existing is not None and (existing[1] or not allow_reentry):
                        continue
                    seen.add(identity)
                    if e.sequence_id not in live_by_sequence:
                        live_by_sequence[e.sequence_id] = self._sequence_live(conn, e.sequence_id)
                    rows.append(self._insert_row(e, live_by_sequence[e.sequence_id]))
                    if counters is not None:
                        sum_counters(counters(e), totals)
                try:
                    conn.executemany(_INSERT_ENROLLMENT, rows)
                except sqlite3.IntegrityError as exc:
                    raise ConcurrencyConflict(
                        kind="enrollment", id=f"<one of {len(rows)}>", expected=0, actual=0
                    ) from exc
                _write_counters(conn, totals)
                created += len(rows)

    def add_enrollment_batch(
        self,
        enrollments: Seq[Enrollment],
        *,
        allow_reentry: bool,
        counters: Callable[[Enrollment], Iterable[Counter]] | None = None,
    ) -> list[tuple[Enrollment, bool]]:
        """:meth:`add_enrollment` for each, in order, in one transaction: ``(enrollment, created)`` per item."""
        check_records(enrollments, Enrollment, "enrollments")
        check_flag(allow_reentry, "allow_reentry")
        increments = None if counters is None else checked_counters(counters)
        results: list[tuple[Enrollment, bool]] = []
        with self._write("add enrollments") as conn:
            live_by_sequence: dict[str, int] = {}
            totals: dict[tuple[str, int, str], int] = {}
            rows = []
            added: dict[tuple[str, str, str | None], Enrollment] = {}
            for e in enrollments:
                identity = (e.sequence_id, e.contact_id, e.key)
                first = added.get(identity)
                if first is not None:  # the first of two in one batch wins, as two calls would
                    results.append((first, False))
                    continue
                existing = self._existing(conn, e)
                if existing is not None and (existing[1] or not allow_reentry):
                    results.append((self._decode_enrollment(existing[0]), False))
                    continue
                added[identity] = e
                if e.sequence_id not in live_by_sequence:
                    live_by_sequence[e.sequence_id] = self._sequence_live(conn, e.sequence_id)
                rows.append(self._insert_row(e, live_by_sequence[e.sequence_id]))
                if increments is not None:
                    sum_counters(increments(e), totals)
                results.append((e, True))
            try:
                conn.executemany(_INSERT_ENROLLMENT, rows)
            except sqlite3.IntegrityError as exc:
                raise ConcurrencyConflict(kind="enrollment", id=f"<one of {len(rows)}>", expected=0, actual=0) from exc
            _write_counters(conn, totals)
        return results

    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Enrollment | BrokenRecord]:
        """Lease the earliest due enrollments of active sequences, with no PENDING message, to
        ``owner``: one write transaction reads them through the due index and records the leases."""
        now, limit, lease, owner = check_claim(now, limit, lease, owner)
        at = instant(to_utc(now, "now"))
        until = instant(to_utc(now, "now") + lease)
        with self._write("claim due enrollments") as conn:
            rows = conn.execute(
                f"SELECT {ENROLLMENT_COLUMNS}, rid FROM enrollments WHERE status = 'active' AND seq_live = 1 "
                f"AND next_due <= ? AND {_NOT_LEASED} AND {_NOTHING_PENDING} ORDER BY next_due, id LIMIT ?",
                (at, at, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "INSERT OR REPLACE INTO leases (rid, owner, until) VALUES (?, ?, ?)",
                    [(row[-1], owner, until) for row in rows],
                )
            hints = self._claimed  # touched only under self._lock, which _write holds
            if len(hints) > _CLAIMED_HINTS:
                hints.clear()
            for row in rows:  # id -> (rid, version, (sequence_id, contact_id, dedupe_key, enrolled_at), owner, until)
                hints[row[0]] = (row[-1], row[16], (row[1], row[2], row[15], row[4]), owner, until)
        return self._claimed_records(row[:-1] for row in rows)

    def release(self, enrollment_ids: Iterable[str], *, owner: str, until: datetime | None = None) -> None:
        """End ``owner``'s leases (or, with ``until``, keep them until then)."""
        enrollment_ids = check_ids(enrollment_ids, "enrollment_ids")
        owner, until = check_id(owner, "owner"), check_opt_instant(until, "until")
        ids = [(i, owner) for i in enrollment_ids]
        if not ids:
            return
        with self._lock:
            for i, _ in ids:
                self._claimed.pop(i, None)
        rid = "(SELECT rid FROM enrollments WHERE id = ?)"
        with self._write("release leases") as conn:
            if until is None:
                conn.executemany(f"DELETE FROM leases WHERE rid = {rid} AND owner = ?", ids)
            else:
                end = instant(to_utc(until, "until"))
                conn.executemany(
                    f"UPDATE leases SET until = ? WHERE rid = {rid} AND owner = ?", [(end, i, o) for i, o in ids]
                )

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        """Apply every change whose version still matches, in one transaction; return the refused ids.

        Changes holding what SQLite can't encode (a lone surrogate, an integer beyond
        64 bits) fail the whole transaction with :class:`~dripcore.errors.RecordRejected`
        naming them."""
        check_records(changes, Change, "changes")
        owner = check_opt_id(owner, "owner")
        if not changes:
            return []
        try:
            return self._commit(changes, owner)
        except (UnicodeError, OverflowError, ValueError) as exc:
            raise rejected_changes(changes, exc) from exc

    def _commit(self, changes: Seq[Change], owner: str | None) -> list[str]:
        refused: list[str] = []
        with self._write("commit changes") as conn:
            fast = owner is not None and self._commit_claimed(conn, changes, owner)
            for change in changes:  # a committed or refused claim is done with either way
                self._claimed.pop(change.enrollment.id, None)
            if fast:
                return refused
            ids = dumps(list({c.enrollment.id for c in changes}))
            stored = {
                row[1]: list(row)
                for row in conn.execute(
                    "SELECT e.rid, e.id, e.version, l.owner, l.until, e.sequence_id, e.contact_id, e.dedupe_key, "
                    "e.enrolled_at FROM enrollments AS e LEFT JOIN leases AS l ON l.rid = e.rid "
                    "WHERE e.id IN (SELECT value FROM json_each(?))",
                    (ids,),
                )
            }
            updates: list[tuple[Any, ...]] = []
            ended_leases: list[tuple[int]] = []
            identity_updates: list[tuple[Any, ...]] = []
            messages: list[tuple[Any, ...]] = []
            totals: dict[tuple[str, int, str], int] = {}
            for change in changes:
                new = change.enrollment
                row = stored.get(new.id)
                if row is None or row[2] != new.version:
                    refused.append(new.id)
                    continue
                rid, lease_owner, lease_until = row[0], row[3], row[4]
                if lease_owner is not None:
                    ended_leases.append((rid,))
                row[2] = new.version + 1
                row[3] = row[4] = None
                updates.append((*enrollment_state(new), new.version + 1, rid))
                enrolled_at = instant(new.enrolled_at)
                if (new.sequence_id, new.contact_id, new.key, enrolled_at) != (row[5], row[6], row[7], row[8]):
                    row[5:9] = new.sequence_id, new.contact_id, new.key, enrolled_at
                    identity_updates.append(
                        (new.sequence_id, new.contact_id, new.key, enrolled_at, new.sequence_id, rid)
                    )
                held = owner is not None and lease_owner == owner
                for message in change.outbox:
                    leased = held and message.status is OutboxStatus.PENDING
                    messages.append(message_row(message, owner if leased else None, lease_until if leased else None))
                sum_counters(change.counters, totals)
            if updates:
                conn.executemany(_UPDATE_STATE, updates)
            if ended_leases:
                conn.executemany("DELETE FROM leases WHERE rid = ?", ended_leases)
            if identity_updates:
                conn.executemany(_UPDATE_IDENTITY, identity_updates)
            _insert_messages(conn, messages)
            _write_counters(conn, totals)
        return refused

    def _commit_claimed(self, conn: sqlite3.Connection, changes: Seq[Change], owner: str) -> bool:
        """The usual commit: every change is of an enrollment this store just claimed for
        ``owner``, and nobody changed it since. Written without reading the rows first (the
        version check is in the UPDATE); True if it went through, False (nothing written) if
        any enrollment was not as claimed: then :meth:`commit` checks them one by one."""
        hints = self._claimed
        updates: list[tuple[Any, ...]] = []
        leases: list[tuple[int]] = []
        messages: list[tuple[Any, ...]] = []
        totals: dict[tuple[str, int, str], int] = {}
        for change in changes:
            new = change.enrollment
            hint = hints.get(new.id)
            if hint is None or hint[1] != new.version or hint[3] != owner:
                return False
            rid, _, identity, _, until = hint
            if identity != (new.sequence_id, new.contact_id, new.key, instant(new.enrolled_at)):
                return False
            updates.append((*enrollment_state(new), new.version + 1, rid, new.id, new.version))
            leases.append((rid,))
            for message in change.outbox:
                leased = message.status is OutboxStatus.PENDING
                messages.append(message_row(message, owner if leased else None, until if leased else None))
            sum_counters(change.counters, totals)
        if len(leases) != len({rid for (rid,) in leases}):
            return False  # two changes of one enrollment: the careful path applies them in turn
        conn.execute("SAVEPOINT commit_claimed")
        if conn.executemany(_UPDATE_STATE_IF_VERSION, updates).rowcount != len(updates):
            conn.execute("ROLLBACK TO commit_claimed")
            conn.execute("RELEASE commit_claimed")
            return False
        conn.execute("RELEASE commit_claimed")
        conn.executemany("DELETE FROM leases WHERE rid = ?", leases)
        _insert_messages(conn, messages)
        _write_counters(conn, totals)
        return True

    def next_due_at(self) -> datetime | None:
        """When :meth:`claim_due` could next return something: the earliest due time of an
        ACTIVE enrollment of an ACTIVE sequence with no PENDING message, or its lease's end
        if that is later."""
        with self._read("find the next due time") as conn:
            return _earliest(
                conn,
                "SELECT e.next_due, l.until FROM enrollments AS e LEFT JOIN leases AS l ON l.rid = e.rid "
                "WHERE e.status = 'active' AND e.seq_live = 1 AND NOT EXISTS (SELECT 1 FROM outbox AS o "
                "INDEXED BY outbox_pending_by_enrollment WHERE o.enrollment_id = e.id AND o.status = 'pending') "
                "ORDER BY e.next_due",
            )

    def next_due_for(self, sequence_id: str) -> datetime | None:
        """The earliest due time of the sequence's ACTIVE enrollments (whatever the sequence's status),
        for operators' overviews; reads that sequence's rows."""
        sequence_id = check_id(sequence_id, "sequence_id")
        with self._read("find a sequence's next due time") as conn:
            row = conn.execute(
                "SELECT min(next_due) FROM enrollments WHERE sequence_id = ? AND status = 'active'", (sequence_id,)
            ).fetchone()
        return None if row[0] is None else from_instant(row[0])

    def count_due(self, now: datetime) -> int:
        """How many ACTIVE enrollments of ACTIVE sequences are due at ``now``, leased or not."""
        now = check_instant(now, "now")
        at = instant(to_utc(now, "now"))
        with self._read("count due enrollments") as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM enrollments WHERE status = 'active' AND seq_live = 1 AND next_due <= ?",
                    (at,),
                ).fetchone()[0]
            )

    # ------------------------------------------------------------------ outbox

    def claim_messages(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[OutboxMessage]:
        """Lease the oldest pending messages whose next attempt is due to ``owner``, but none a pause
        holds (an enrollment PAUSED, or ACTIVE in a sequence that is not ACTIVE)."""
        now, limit, lease, owner = check_claim(now, limit, lease, owner)
        at = instant(to_utc(now, "now"))
        until = instant(to_utc(now, "now") + lease)
        with self._write("claim outbox messages") as conn:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? "
                f"AND (lease_until IS NULL OR lease_until <= ?) AND {_NOT_HELD} ORDER BY next_attempt_at, key LIMIT ?",
                (at, at, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE key = ?",
                    [(owner, until, row[0]) for row in rows],
                )
        return self._readable_messages(rows)

    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        """Record delivery outcomes in one transaction; a finished message is left as it is.
        Deliveries SQLite can't encode fail it with :class:`~dripcore.errors.RecordRejected`."""
        check_records(deliveries, Delivery, "deliveries")
        owner = check_opt_id(owner, "owner")
        if not deliveries:
            return
        try:
            self._settle(deliveries)
        except (UnicodeError, OverflowError, ValueError) as exc:
            raise rejected_deliveries(deliveries, exc) from exc

    def _settle(self, deliveries: Seq[Delivery]) -> None:
        with self._write("settle deliveries") as conn:
            rows = [
                (
                    d.status.value,
                    NULL
                    if d.status is not OutboxStatus.PENDING or d.next_attempt_at is None
                    else instant(to_utc(d.next_attempt_at, "delivery.next_attempt_at")),
                    NULL if d.error is None else d.error,
                    NULL if d.status is OutboxStatus.PENDING else instant(to_utc(d.at, "delivery.at")),
                    NULL if d.provider_id is None else d.provider_id,
                    d.key,
                )
                for d in deliveries
            ]
            # Usually every message is still pending (this worker holds its lease):
            # update them all at once. If some were not (another worker settled them
            # after a lease ran out), undo that and go one by one, so counters only
            # count what changed.
            conn.execute("SAVEPOINT settle")
            if conn.executemany(_SETTLE, rows).rowcount == len(rows):
                conn.execute("RELEASE settle")
                totals: dict[tuple[str, int, str], int] = {}
                for d in deliveries:
                    sum_counters(d.counters, totals)
                _write_counters(conn, totals)
                return
            conn.execute("ROLLBACK TO settle")
            conn.execute("RELEASE settle")
            totals = {}
            for d, row in zip(deliveries, rows, strict=True):
                if conn.execute(_SETTLE, row).rowcount:
                    sum_counters(d.counters, totals)
            _write_counters(conn, totals)

    def requeue_message(self, message: OutboxMessage) -> bool:
        """Replace a FAILED message with ``message`` (PENDING), in one transaction."""
        check_record(message, OutboxMessage, "message")
        if message.status is not OutboxStatus.PENDING:
            raise InvalidArgument("message.status", message.status.value, "a requeued message is pending")
        with self._write("requeue a message") as conn:
            if not conn.execute("DELETE FROM outbox WHERE key = ? AND status = 'failed'", (message.key,)).rowcount:
                return False
            _insert_messages(conn, [message_row(message, None, None)])
            return True

    def count_messages(self, contact_id: str, since: datetime, until: datetime) -> int:
        """Emails queued for the contact (PENDING or DELIVERED) with ``since <= created_at < until``;
        one range read of an index on (contact, created_at)."""
        contact_id = check_id(contact_id, "contact_id")
        since, until = check_instant(since, "since"), check_instant(until, "until")
        start, end = instant(to_utc(since, "since")), instant(to_utc(until, "until"))
        with self._read("count a contact's messages") as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM outbox WHERE contact_id = ? AND created_at >= ? AND created_at < ? "
                    "AND status != 'failed'",
                    (contact_id, start, end),
                ).fetchone()[0]
            )

    def next_message_at(self) -> datetime | None:
        """The earliest next attempt of a pending message no pause holds (or its lease's end, if later)."""
        with self._read("find the next message time") as conn:
            return _earliest(
                conn,
                "SELECT next_attempt_at, lease_until FROM outbox WHERE status = 'pending' "
                f"AND next_attempt_at IS NOT NULL AND {_NOT_HELD} ORDER BY next_attempt_at",
            )

    # ------------------------------------------------------------------ counters

    def counters(self, sequence_id: str) -> Mapping[tuple[int, str], int]:
        """Every non-zero counter of a sequence (one index range read)."""
        sequence_id = check_id(sequence_id, "sequence_id")
        with self._read("read counters") as conn:
            rows = conn.execute(
                "SELECT position, name, value FROM counters WHERE sequence_id = ? AND value != 0", (sequence_id,)
            ).fetchall()
        return {(position, name): value for position, name, value in rows}


def _write_counters(conn: sqlite3.Connection, totals: Mapping[tuple[str, int, str], int]) -> None:
    rows = [(*k, v) for k, v in totals.items() if v]
    if rows:
        conn.executemany(_UPSERT_COUNTER, rows)


def _earliest(conn: sqlite3.Connection, sql: str) -> datetime | None:
    """The least ``max(time, lease_until)`` over rows read in ``time`` order.

    Reading stops at the first row whose time is not earlier than the best so
    far, so the cost is the number of leased rows at the front, not the table.
    """
    best: int | None = None
    cursor = conn.execute(sql)
    try:
        for at, until in cursor:
            if at.__class__ is not int or (until is not None and until.__class__ is not int):
                # A corrupt row (text in a time column sorts after every number): it can't be
                # claimed either, so it has no bearing on when work is next due.
                log.error("a row with a due time of %r (lease until %r) is corrupt; ignored", at, until)
                continue
            if best is not None and at >= best:
                break
            candidate = at if until is None or until < at else until
            if best is None or candidate < best:
                best = candidate
    finally:
        cursor.close()
    return None if best is None else from_instant(best)
