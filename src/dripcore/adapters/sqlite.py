"""SQLiteStore: the embedded default :class:`~dripcore.ports.Store`, on one file and stdlib :mod:`sqlite3`.

A host gets durable, crash-safe drip campaigns with no server::

    from dripcore import Drip
    from dripcore.adapters.sqlite import SQLiteStore

    drip = Drip(store=SQLiteStore("drip.db"), sender=..., contacts=...)

How it keeps its promises
-------------------------

- **Atomic batches.** Every write method is one ``BEGIN IMMEDIATE``
  transaction; a failure (a full disk, a killed process, a lost lock race)
  rolls all of it back, so a batch is never partly applied.
- **Several processes, one file.** The database runs in WAL mode: readers never
  block the writer. Claims take the write lock (``BEGIN IMMEDIATE``), choose
  the due rows and record their leases (in a small table of their own) in one
  transaction, so two worker processes never hold the same enrollment. A
  writer waits up to ``busy_timeout`` seconds for the lock, then raises
  :class:`DatabaseLocked` naming the file.
- **O(due), not O(total).** A partial index holds only ACTIVE enrollments of
  ACTIVE sequences, ordered by due time: a claim, :meth:`SQLiteStore.count_due`
  and :meth:`SQLiteStore.next_due_at` read the due rows and nothing else,
  whatever the size of the table. Pending outbox messages have their own
  partial index.
- **Durability.** ``synchronous=NORMAL`` (the WAL default): a committed batch
  survives the process being killed; a power cut may lose the last few
  commits, which is safe because keys are deterministic: a lost step is
  advanced again with the same idempotency key (pass ``synchronous="FULL"``
  to fsync every commit). The WAL is copied back into the file by a
  background thread of the store, not inside a writer's COMMIT.
- **Versioned schema.** ``PRAGMA user_version`` holds the schema version and
  the ``dripcore_migrations`` table records each migration applied. A file
  written by an older dripcore is upgraded in place when opened; one written
  by a newer dripcore is refused with :class:`SchemaTooNew`. The file is
  marked with ``PRAGMA application_id`` so a foreign database is refused with
  :class:`NotADripcoreDatabase` instead of being written into.
- **Bad rows stay local.** An enrollment row that can't be read (broken JSON,
  an unknown enum value) comes back from :meth:`SQLiteStore.claim_due` as a
  :class:`~dripcore.ports.BrokenRecord`, leased like the others, so the
  engine reports it and goes on.
- **Pickup across processes.** A worker idle in :meth:`SQLiteStore.wait_for_work`
  (as :meth:`Drip.run <dripcore.engine.Drip.run>` is between ticks) reads
  ``PRAGMA data_version`` every ``pickup_interval`` (0.1 s): it changes when
  another connection commits, so an enrollment made by a web process reaches
  the worker in a fraction of a second, with no write transaction while
  nothing changes.
- **A pause holds retries.** A pending message whose enrollment is PAUSED, or
  ACTIVE in a sequence that is not, is not claimed until both are active again.

Threads and processes
---------------------

One :class:`SQLiteStore` owns one connection, and a lock serialises its
calls: several threads may share a store safely (they take turns). For
parallel work run several *processes*, each with its own store on the same
file. A store opened before :func:`os.fork` notices it is in a child and opens
a fresh connection there (SQLite connections must not cross a fork); its
background checkpoints pause while a fork happens. Close a store
(:meth:`SQLiteStore.close`, or ``with``) to stop its checkpoint thread.

Errors
------

Every failure is a :class:`SQLiteStoreError` (a
:class:`~dripcore.errors.StoreError`) naming the file and what to do:
:class:`InvalidStorePath`, :class:`StoreReadOnly`, :class:`StoreFull`,
:class:`DatabaseLocked`, :class:`NotADripcoreDatabase`, :class:`SchemaTooNew`,
:class:`CorruptRecord`.
"""

from __future__ import annotations

import functools
import itertools
import json
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
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .._checks import (
    MAX_SPAN,
    check_claim,
    check_count,
    check_counters,
    check_enums,
    check_flag,
    check_id,
    check_ids,
    check_instant,
    check_key,
    check_opt_enum,
    check_opt_id,
    check_opt_instant,
    check_record,
    check_records,
    check_span,
)
from ..errors import (
    ConcurrencyConflict,
    InvalidArgument,
    SequenceNotFound,
    SequenceStateError,
    StoreError,
    UnreadableRecord,
)
from ..model import (
    _ID_MAX,
    UTC,
    Enrollment,
    EnrollmentStatus,
    SenderIdentity,
    Sequence,
    SequenceStatus,
    _assemble_enrollment,
    to_utc,
)
from ..ports import BrokenRecord, Change, Counter, Delivery, Email, OutboxMessage, OutboxStatus, Store
from ..serialization import make_converter
from ._common import describe, dumps, dumps_text_map, rejected_changes, rejected_deliveries, sum_counters

__all__ = [
    "APPLICATION_ID",
    "CorruptRecord",
    "DatabaseLocked",
    "InvalidStorePath",
    "NotADripcoreDatabase",
    "SCHEMA_VERSION",
    "SQLiteStore",
    "SQLiteStoreError",
    "SchemaTooNew",
    "StoreFull",
    "StoreReadOnly",
]

log = logging.getLogger("dripcore.sqlite")

#: ``PRAGMA application_id`` of a dripcore database (the bytes ``drip``).
APPLICATION_ID = 0x64726970


# --------------------------------------------------------------------------- errors


class SQLiteStoreError(StoreError):
    """A :class:`SQLiteStore` failure; ``path`` names the database file."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class InvalidStorePath(SQLiteStoreError):
    """The path can't hold a database: it is a directory, or its directory does not exist."""


class StoreReadOnly(SQLiteStoreError):
    """The database file (or its directory, which must hold the ``-wal`` and ``-shm`` files) is not writable."""


class StoreFull(SQLiteStoreError):
    """The disk (or quota, or ``max_page_count``) is full; the transaction was rolled back."""


class DatabaseLocked(SQLiteStoreError):
    """Another connection held the write lock for longer than ``busy_timeout``; nothing was written."""

    def __init__(self, path: str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(
            path,
            f"the database stayed locked by another writer for more than {timeout:g}s, so nothing was "
            "written. Another process holds a long write transaction: check for a stuck process using "
            "this file, or open the store with a larger busy_timeout",
        )


class NotADripcoreDatabase(SQLiteStoreError):
    """The file exists but is not a dripcore database (not SQLite at all, or another application's)."""


class SchemaTooNew(SQLiteStoreError):
    """The file was written by a newer dripcore whose schema this version does not know."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            path,
            f"schema version {found} was written by a newer dripcore; this version knows schema versions "
            f"up to {supported}. Upgrade dripcore to open it (it is left untouched)",
        )


class CorruptRecord(SQLiteStoreError, UnreadableRecord):
    """A stored row can't be read back (broken JSON, an unknown enum value)."""

    def __init__(self, path: str, table: str, id: str, error: str) -> None:
        self.table = table
        self.id = id
        self.error = error
        super().__init__(path, f"{table} row {id!r} is corrupt and can't be read: {error}")


# --------------------------------------------------------------------------- schema

# The outbox's columns since version 1, spelled out for migration 5, which copies them:
# a migration must not change when later code changes ``_OUTBOX_COLUMNS``.
_OUTBOX_COLUMNS_V1 = (
    "key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts, "
    "last_error, settled_at, provider_id, email_to, email_subject, email_html, email_text, email_sender, "
    "email_headers, email_identity"
)


def _rebuild_outbox_with_rowids(conn: sqlite3.Connection) -> None:
    """Migration 5's table rebuild, SQLite's own procedure for what ALTER TABLE can't change.

    A WITHOUT ROWID table keeps whole rows (email bodies included) in key order, so a batch
    of messages, whose keys are random, dirtied a page per message; in a rowid table they are
    appended and share the last pages, and only the small key index is written at random.
    The copy reads the old table in its own (key) order, so it needs no sort in memory.
    Triggers on the outbox go with the old table: they are saved and made again. Views and
    other tables' triggers that name it are left alone (legacy renaming doesn't check them
    against the schema half-way through); they name the new table once it is renamed.
    """
    triggers = [
        sql
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'outbox' AND sql IS NOT NULL "
            "ORDER BY rowid"
        )
    ]
    conn.execute(
        """CREATE TABLE outbox_v5 (
            key TEXT NOT NULL PRIMARY KEY,
            enrollment_id TEXT NOT NULL,
            sequence_id TEXT NOT NULL,
            contact_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            next_attempt_at INTEGER,
            attempts INTEGER NOT NULL,
            last_error TEXT,
            settled_at INTEGER,
            provider_id TEXT,
            email_to TEXT,
            email_subject TEXT,
            email_html TEXT,
            email_text TEXT,
            email_sender TEXT,
            email_headers TEXT,
            email_identity TEXT,
            lease_owner TEXT,
            lease_until INTEGER
        )"""
    )
    conn.execute(
        f"INSERT INTO outbox_v5 ({_OUTBOX_COLUMNS_V1}, lease_owner, lease_until) "
        f"SELECT {_OUTBOX_COLUMNS_V1}, lease_owner, lease_until FROM outbox ORDER BY key"
    )
    # The dropped pages hold just what was copied: no need to zero each one first (SQLite
    # builds with secure_delete on do, which made the drop hold the whole table in memory).
    secure_delete = conn.execute("PRAGMA secure_delete").fetchone()[0]
    conn.execute("PRAGMA secure_delete = FAST")
    try:
        conn.execute("DROP TABLE outbox")
    finally:
        conn.execute(f"PRAGMA secure_delete = {int(secure_delete)}")
    conn.execute("PRAGMA legacy_alter_table = ON")
    try:
        conn.execute("ALTER TABLE outbox_v5 RENAME TO outbox")
    finally:
        conn.execute("PRAGMA legacy_alter_table = OFF")
    for sql in triggers:
        conn.execute(sql)


# Each migration takes the schema from version ``n - 1`` to ``n`` and is never
# edited once released: a database written by an older dripcore replays the
# ones it lacks. A step is a statement, or a function of the connection for what
# SQL alone can't say. Tests build a version-1 file by hand to prove the upgrade path.
_MIGRATIONS: tuple[tuple[int, str, tuple[str | Callable[[sqlite3.Connection], None], ...]], ...] = (
    (
        1,
        "sequences, enrollments, outbox and counters",
        (
            """CREATE TABLE sequences (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                version INTEGER NOT NULL,
                body TEXT NOT NULL
            ) WITHOUT ROWID""",
            """CREATE TABLE enrollments (
                rid INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                sequence_id TEXT NOT NULL,
                contact_id TEXT NOT NULL,
                dedupe_key TEXT,
                status TEXT NOT NULL,
                enrolled_at INTEGER NOT NULL,
                next_due INTEGER,
                last_step_sent INTEGER NOT NULL,
                last_step_sent_at INTEGER,
                exit_reason TEXT,
                paused_at INTEGER,
                ended_at INTEGER,
                variables TEXT,
                opened TEXT,
                clicked TEXT,
                skipped TEXT,
                version INTEGER NOT NULL,
                lease_owner TEXT,
                lease_until INTEGER
            )""",
            "CREATE INDEX enrollments_by_sequence ON enrollments (sequence_id, id)",
            "CREATE INDEX enrollments_by_contact ON enrollments (contact_id, sequence_id)",
            "CREATE INDEX enrollments_active_due ON enrollments (next_due) WHERE status = 'active'",
            """CREATE TABLE outbox (
                key TEXT PRIMARY KEY,
                enrollment_id TEXT NOT NULL,
                sequence_id TEXT NOT NULL,
                contact_id TEXT NOT NULL,
                position INTEGER NOT NULL,
                status TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                next_attempt_at INTEGER,
                attempts INTEGER NOT NULL,
                last_error TEXT,
                settled_at INTEGER,
                provider_id TEXT,
                email_to TEXT,
                email_subject TEXT,
                email_html TEXT,
                email_text TEXT,
                email_sender TEXT,
                email_headers TEXT,
                email_identity TEXT,
                lease_owner TEXT,
                lease_until INTEGER
            ) WITHOUT ROWID""",
            "CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, key) WHERE status = 'pending'",
            "CREATE INDEX outbox_by_enrollment ON outbox (enrollment_id, status)",
            """CREATE TABLE counters (
                sequence_id TEXT NOT NULL,
                position INTEGER NOT NULL,
                name TEXT NOT NULL,
                value INTEGER NOT NULL,
                PRIMARY KEY (sequence_id, position, name)
            ) WITHOUT ROWID""",
        ),
    ),
    (
        2,
        "claims skip paused sequences through the due index (enrollments.seq_live)",
        (
            "ALTER TABLE enrollments ADD COLUMN seq_live INTEGER NOT NULL DEFAULT 0",
            """UPDATE enrollments SET seq_live = coalesce(
                (SELECT s.status = 'active' FROM sequences AS s WHERE s.id = enrollments.sequence_id), 0)""",
            "DROP INDEX enrollments_active_due",
            "CREATE INDEX enrollments_due ON enrollments (next_due, id) WHERE status = 'active' AND seq_live = 1",
        ),
    ),
    (
        3,
        "frequency caps count a contact's recent messages through an index",
        ("CREATE INDEX outbox_by_contact ON outbox (contact_id, created_at)",),
    ),
    (
        4,
        "enrollment leases move to their own small table (a claim no longer rewrites enrollment pages)",
        (
            "CREATE TABLE leases (rid INTEGER PRIMARY KEY, owner TEXT NOT NULL, until INTEGER NOT NULL)",
            "INSERT INTO leases (rid, owner, until) SELECT rid, lease_owner, lease_until FROM enrollments "
            "WHERE lease_owner IS NOT NULL",
            # enrollments.lease_owner and lease_until stay, unused, so old rows need no rewrite.
            "UPDATE enrollments SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
        ),
    ),
    (
        5,
        "the outbox becomes a rowid table (new messages are appended, not placed among old ones by key), "
        "with an index of pending messages by enrollment for claims",
        (
            _rebuild_outbox_with_rowids,
            "CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, key) WHERE status = 'pending'",
            # A claim asks of every due row whether its enrollment has a PENDING message: a
            # small index of pending messages only answers from cache however big the outbox.
            "CREATE INDEX outbox_pending_by_enrollment ON outbox (enrollment_id) WHERE status = 'pending'",
            # Listings by enrollment; without the status, settling a message leaves it untouched.
            "CREATE INDEX outbox_by_enrollment ON outbox (enrollment_id)",
            "CREATE INDEX outbox_by_contact ON outbox (contact_id, created_at)",
        ),
    ),
)

#: The schema version this code writes; older files are migrated up to it.
SCHEMA_VERSION = _MIGRATIONS[-1][0]

# With background checkpoints, the writer's own automatic checkpoint only kicks
# in if the WAL grows this large (the checkpointer fell behind or is stopped).
_SAFETY_NET_CHECKPOINT_PAGES = 16_384

_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

# --------------------------------------------------------------------------- encoding

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EMPTY: frozenset[Any] = frozenset()
_NO_VARIABLES: Mapping[str, Any] = MappingProxyType({})  # read-only, so every enrollment may share it
_LIVE_STATUSES = ("active", "paused")

# CPython's sqlite3 binds None through its adapter registry: about half a
# microsecond a value, ten times an int. The hot statements bind _NULL in its
# place and SQL turns it back into NULL (``nullif``). No column holds _NULL as a
# value: instants are above datetime.min (-6.2e16 microseconds) and text is
# bound as str.
_NULL = -(2**62)
_OR_NULL = f"nullif(?, {_NULL})"


def _instant(value: datetime) -> int:
    """An instant as integer microseconds since the Unix epoch (exact, sortable)."""
    return (value - _EPOCH) // _MICROSECOND


def _opt_instant(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _MICROSECOND


def _from_instant(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _opt_from_instant(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _map_text(value: Mapping[str, Any]) -> str | None:
    return dumps(dict(value)) if value else None


def _ints_text(value: frozenset[int]) -> str | None:
    return dumps(sorted(value)) if value else None


def _clicks_text(value: frozenset[tuple[int, str]]) -> str | None:
    return dumps(sorted(value)) if value else None


_ENROLLMENT_COLUMNS = (
    "id, sequence_id, contact_id, status, enrolled_at, next_due, last_step_sent, last_step_sent_at, "
    "exit_reason, paused_at, ended_at, variables, opened, clicked, skipped, dedupe_key, version"
)


_STATUSES = {status.value: status for status in EnrollmentStatus}


def _plain(value: object) -> bool:
    """A text the model's id validators accept, by a stricter and cheaper test: a printable,
    non-blank str of at most ``_ID_MAX`` characters (printable excludes CR, LF and NUL)."""
    return type(value) is str and 0 < len(value) <= _ID_MAX and value.isprintable() and not value.isspace()


def _enrollment_from_row(row: Seq[Any]) -> Enrollment:
    (
        id_, sequence_id, contact_id, status, enrolled_at, due, last, last_at,
        reason, paused_at, ended_at, variables, opened, clicked, skipped, key, version,
    ) = row  # fmt: skip
    known = _STATUSES.get(status)
    # The common row (no engagement, no variables, not exited): its few values are
    # checked here (no more loosely than the constructor would), the cross-field
    # rules by _assemble_enrollment. Anything else takes the validated constructor.
    plain = (
        known is not None and reason is None and not (variables or opened or clicked or skipped)
        and _plain(id_) and _plain(sequence_id) and _plain(contact_id) and (key is None or _plain(key))
        and enrolled_at.__class__ is int
    )  # fmt: skip
    build: Callable[..., Enrollment] = _assemble_enrollment if plain else Enrollment
    return build(
        id=id_,
        sequence_id=sequence_id,
        contact_id=contact_id,
        status=status if known is None else known,
        enrolled_at=_EPOCH + timedelta(microseconds=enrolled_at),
        next_step_due_at=None if due is None else _EPOCH + timedelta(microseconds=due),
        last_step_sent=last,
        last_step_sent_at=None if last_at is None else _EPOCH + timedelta(microseconds=last_at),
        exit_reason=reason,
        paused_at=None if paused_at is None else _EPOCH + timedelta(microseconds=paused_at),
        ended_at=None if ended_at is None else _EPOCH + timedelta(microseconds=ended_at),
        variables=json.loads(variables) if variables else _NO_VARIABLES,
        opened=json.loads(opened) if opened else _EMPTY,
        clicked=json.loads(clicked) if clicked else _EMPTY,
        skipped=json.loads(skipped) if skipped else _EMPTY,
        key=key,
        version=version,
    )


def _enrollment_state(e: Enrollment) -> tuple[Any, ...]:
    """The mutable columns of an enrollment, in ``_UPDATE_STATE`` order (without the version and rid);
    ``_NULL`` stands for NULL."""
    return (
        e.status.value,
        _NULL if e.next_step_due_at is None else (e.next_step_due_at - _EPOCH) // _MICROSECOND,
        e.last_step_sent,
        _NULL if e.last_step_sent_at is None else (e.last_step_sent_at - _EPOCH) // _MICROSECOND,
        _NULL if e.exit_reason is None else e.exit_reason.value,
        _NULL if e.paused_at is None else (e.paused_at - _EPOCH) // _MICROSECOND,
        _NULL if e.ended_at is None else (e.ended_at - _EPOCH) // _MICROSECOND,
        _map_text(e.variables) if e.variables else _NULL,
        _ints_text(e.opened) if e.opened else _NULL,
        _clicks_text(e.clicked) if e.clicked else _NULL,
        _ints_text(e.skipped) if e.skipped else _NULL,
    )


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
    f"UPDATE enrollments SET status = ?, next_due = {_OR_NULL}, last_step_sent = ?, last_step_sent_at = {_OR_NULL}, "
    f"exit_reason = {_OR_NULL}, paused_at = {_OR_NULL}, ended_at = {_OR_NULL}, variables = {_OR_NULL}, "
    f"opened = {_OR_NULL}, clicked = {_OR_NULL}, skipped = {_OR_NULL}, version = ? WHERE rid = ?"
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
    f"version, seq_live) VALUES (?, ?, ?, {_OR_NULL}, ?, ?, {_OR_NULL}, ?, {', '.join([_OR_NULL] * 8)}, ?, ?)"
)

_OUTBOX_COLUMNS = (
    "key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts, "
    "last_error, settled_at, provider_id, email_to, email_subject, email_html, email_text, email_sender, "
    "email_headers, email_identity"
)
_INSERT_MESSAGE = (
    f"INSERT OR IGNORE INTO outbox ({_OUTBOX_COLUMNS}, lease_owner, lease_until) "
    f"VALUES (?, ?, ?, ?, ?, ?, ?, {_OR_NULL}, ?, {', '.join([_OR_NULL] * 12)})"
)


@functools.lru_cache(maxsize=256)
def _sender_text(sender: SenderIdentity) -> str:
    return dumps({"from_email": sender.from_email, "from_name": sender.from_name, "reply_to": sender.reply_to})


_NO_EMAIL = (_NULL,) * 7


def _message_row(m: OutboxMessage, lease_owner: str | None, lease_until: int | None) -> tuple[Any, ...]:
    """An outbox row in ``_INSERT_MESSAGE`` order; ``_NULL`` stands for NULL."""
    email = m.email
    if email is None:
        email_fields: tuple[Any, ...] = _NO_EMAIL
    else:
        identity = (email.idempotency_key, email.enrollment_id, email.sequence_id, email.contact_id, email.position)
        own = (m.key, m.enrollment_id, m.sequence_id, m.contact_id, m.position)
        email_fields = (
            email.to,
            email.subject,
            _NULL if email.html is None else email.html,
            _NULL if email.text is None else email.text,
            _NULL if email.sender is None else _sender_text(email.sender),
            dumps_text_map(email.headers) if email.headers else _NULL,
            _NULL if identity == own else dumps(identity),
        )
    return (
        m.key,
        m.enrollment_id,
        m.sequence_id,
        m.contact_id,
        m.position,
        m.status.value,
        (m.created_at - _EPOCH) // _MICROSECOND,
        _NULL if m.next_attempt_at is None else (m.next_attempt_at - _EPOCH) // _MICROSECOND,
        m.attempts,
        _NULL if m.last_error is None else m.last_error,
        _NULL if m.settled_at is None else (m.settled_at - _EPOCH) // _MICROSECOND,
        _NULL if m.provider_id is None else m.provider_id,
        *email_fields,
        _NULL if lease_owner is None else lease_owner,
        _NULL if lease_until is None else lease_until,
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


def _message_from_row(row: Seq[Any]) -> OutboxMessage:
    (
        key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts,
        last_error, settled_at, provider_id, to, subject, html, text, sender, headers, identity,
    ) = row  # fmt: skip
    email = None
    if to is not None:
        ident = (key, enrollment_id, sequence_id, contact_id, position) if identity is None else json.loads(identity)
        email = Email(
            idempotency_key=ident[0],
            enrollment_id=ident[1],
            sequence_id=ident[2],
            contact_id=ident[3],
            position=ident[4],
            to=to,
            subject=subject,
            html=html,
            text=text,
            sender=None if sender is None else SenderIdentity(**json.loads(sender)),
            headers=json.loads(headers) if headers else _NO_VARIABLES,
        )
    return OutboxMessage(
        key=key,
        enrollment_id=enrollment_id,
        sequence_id=sequence_id,
        contact_id=contact_id,
        position=position,
        email=email,
        status=OutboxStatus(status),
        created_at=_from_instant(created_at),
        next_attempt_at=_opt_from_instant(next_attempt_at),
        attempts=attempts,
        last_error=last_error,
        settled_at=_opt_from_instant(settled_at),
        provider_id=provider_id,
    )


# Only a PENDING message changes: a finished one is left as it is.
_SETTLE = (
    f"UPDATE outbox SET status = ?, attempts = attempts + 1, next_attempt_at = {_OR_NULL}, last_error = {_OR_NULL}, "
    f"settled_at = {_OR_NULL}, provider_id = {_OR_NULL}, lease_owner = NULL, lease_until = NULL "
    "WHERE key = ? AND status = 'pending'"
)

_UPSERT_COUNTER = (
    "INSERT INTO counters (sequence_id, position, name, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (sequence_id, position, name) DO UPDATE SET value = value + excluded.value"
)


# A fork must not happen in the middle of a background checkpoint: the child
# would inherit SQLite's internal locks held by a thread that does not exist
# there. Checkpoints hold the gate; os.fork() takes it first.
_FORK_GATE = threading.Lock()


def _fork_gate() -> threading.Lock:
    return _FORK_GATE


def _before_fork() -> None:
    _FORK_GATE.acquire()


def _after_fork_in_parent() -> None:
    _FORK_GATE.release()


def _after_fork_in_child() -> None:
    global _FORK_GATE
    _FORK_GATE = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


class _Checkpointer:
    """Copies the WAL back into the database file on a thread of its own.

    SQLite checkpoints automatically inside the COMMIT that crosses
    ``wal_autocheckpoint`` pages, so the writer pays for copying pages back and,
    with ``synchronous=NORMAL``, for the fsyncs: on a large file that was most
    of a dispatch's time. Here a PASSIVE checkpoint (it never blocks readers or
    writers) runs on its own connection shortly after each commit, with the GIL
    released, while the writer goes on. The writer's own automatic checkpoint
    stays as a safety net at a much larger WAL size.
    """

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dripcore-checkpoint:{path}", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                # Let a burst of commits land, then copy them back at once.
                if self._halt.is_set() or self._halt.wait(0.02):
                    return
                try:
                    with _fork_gate():
                        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy, or the file went away: the next commit tries again
                    log.debug("background checkpoint skipped: %s", exc)
        finally:
            self._conn.close()

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()
        self._thread.join(5)

    def abandon(self) -> None:
        """In a forked child: the thread did not come along; keep its connection unclosed."""
        _ABANDONED.append(self._conn)


# Connections inherited across a fork are kept referenced, never closed: closing
# one in the child could release locks or checkpoint under the parent's feet.
_ABANDONED: list[sqlite3.Connection] = []


# --------------------------------------------------------------------------- the store


class SQLiteStore(Store):
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
    :class:`_Checkpointer`); pass False to leave it to SQLite.
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
        self._lock = threading.RLock()
        self._converter = make_converter()
        self._sequence_cache: dict[str, Sequence] = {}
        # What this store last claimed, by enrollment id: (rid, version, identity, owner, lease end).
        # A hint for commit()'s fast path; the version check in SQL is what decides.
        self._claimed: dict[str, tuple[int, int, tuple[Any, ...], str, int]] = {}
        self._closed = False
        self._background_checkpoints = background_checkpoints and not self._memory
        self._check_path()
        # PRAGMA data_version as wait_for_work last read it (a value of the current connection
        # only, read when it opens), and when a change it saw last woke a caller (time.monotonic()).
        self._seen_version = 0
        self._picked_up_at = -float("inf")
        self._conn = self._open()
        self._pid = os.getpid()
        self._checkpointer = _Checkpointer(self.path) if self._background_checkpoints else None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # ------------------------------------------------------------------ opening

    def _check_path(self) -> None:
        if self._memory:
            return
        path = Path(self.path)
        if path.is_dir():
            raise InvalidStorePath(self.path, "is a directory; give the path of a database file inside it")
        directory = path.parent if str(path.parent) else Path(".")
        if not directory.is_dir():
            raise InvalidStorePath(
                self.path, f"directory {str(directory)!r} does not exist; create it first (dripcore creates the file)"
            )
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise StoreReadOnly(
                self.path, "the file is not readable and writable by this process; fix its permissions or owner"
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreReadOnly(
                self.path,
                f"directory {str(directory)!r} is not writable; SQLite keeps its -wal and -shm files next to "
                "the database, so the directory must be writable too",
            )

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False,
                cached_statements=256,
            )  # fmt: skip
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from exc
        try:
            self._prepare(conn)
            self._seen_version = self._data_version(conn)  # what this connection has seen: everything so far
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _code(exc) not in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
                raise self._error(exc, "open") from exc
            raise NotADripcoreDatabase(
                self.path,
                f"the file is not a SQLite database ({exc}); point the store at a new path or at a database "
                "dripcore created",
            ) from exc
        self._check_schema(application_id, version, tables)
        try:
            if not self._memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise SQLiteStoreError(self.path, f"could not switch to WAL journaling (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA cache_size = -{self._cache_size_kib}")
            if self._background_checkpoints:
                conn.execute(f"PRAGMA wal_autocheckpoint = {_SAFETY_NET_CHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {64 * 2**20}")  # a WAL that grew is cut back after use
            conn.execute("PRAGMA temp_store = MEMORY")
            for name, value in self._pragmas.items():
                conn.execute(f"PRAGMA {name} = {int(value) if isinstance(value, int) else repr(str(value))}")
            if version < SCHEMA_VERSION:
                self._migrate(conn)
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from exc

    def _check_schema(self, application_id: int, version: int, tables: list[str]) -> None:
        if application_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(self.path, version, SCHEMA_VERSION)
            return
        if application_id == 0 and not tables:
            return  # a new (or empty) file: the migrations create the schema
        owner = f"application_id {application_id:#x}" if application_id else "no dripcore marker"
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise NotADripcoreDatabase(
            self.path,
            f"this SQLite database belongs to another application ({owner}; tables: {shown or 'none'}); "
            "dripcore will not write into it. Point the store at a new path",
        )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if conn.execute("PRAGMA application_id").fetchone()[0] not in (0, APPLICATION_ID):
                raise NotADripcoreDatabase(self.path, "another application claimed this file while it was opened")
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(self.path, version, SCHEMA_VERSION)
            if version == 0:
                conn.execute(
                    "CREATE TABLE dripcore_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                    "applied_at TEXT NOT NULL)"
                )
            for number, description, statements in _MIGRATIONS:
                if number <= version:
                    continue
                for statement in statements:
                    if callable(statement):
                        statement(conn)
                    else:
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO dripcore_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                    (number, description, datetime.now(UTC).isoformat(timespec="seconds")),
                )
                log.info("%s: migrated the schema to version %d (%s)", self.path, number, description)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ plumbing

    def _error(self, exc: sqlite3.Error, action: str) -> SQLiteStoreError:
        """Translate a sqlite3 error into the dripcore error that says what to do."""
        code = _code(exc)
        text = str(exc)
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
            return DatabaseLocked(self.path, self.busy_timeout)
        if code == _SQLITE_FULL or "database or disk is full" in text:
            return StoreFull(
                self.path,
                f"{action} failed because the disk (or quota) is full; nothing of it was written. "
                "Free some space and retry",
            )
        if code in (_SQLITE_READONLY, _SQLITE_PERM) or "readonly" in text:
            return StoreReadOnly(
                self.path, f"{action} failed: the database is read-only ({text}); fix the file's permissions"
            )
        if code == _SQLITE_NOTADB:
            return NotADripcoreDatabase(self.path, f"{action} failed: the file is not a database ({text})")
        if code == _SQLITE_CORRUPT:
            return SQLiteStoreError(
                self.path,
                f"{action} failed: the database file is damaged ({text}); restore it from a backup, or salvage "
                "it with the sqlite3 shell's .recover command",
            )
        if code == _SQLITE_CANTOPEN:
            return InvalidStorePath(self.path, f"{action} failed: SQLite can't open the file ({text})")
        if code == _SQLITE_IOERR:
            return SQLiteStoreError(self.path, f"{action} failed with an I/O error ({text}); check the disk")
        return SQLiteStoreError(self.path, f"{action} failed: {text}")

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise SQLiteStoreError(self.path, "the store is closed")
        if os.getpid() != self._pid:
            _ABANDONED.append(self._conn)
            if self._checkpointer is not None:
                self._checkpointer.abandon()
            self._conn = self._open()
            self._pid = os.getpid()
            self._checkpointer = _Checkpointer(self.path) if self._background_checkpoints else None
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
                _ABANDONED.append(self._conn)
                if self._checkpointer is not None:
                    self._checkpointer.abandon()

    def schema_version(self) -> int:
        """The schema version of the open file (:data:`SCHEMA_VERSION` once opened)."""
        with self._read("read the schema version") as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ sequences

    def _decode_sequence(self, sequence_id: str, body: str) -> Sequence:
        cached = self._sequence_cache.get(body)
        if cached is not None:
            return cached
        try:
            sequence = self._converter.structure(json.loads(body), Sequence)
        except Exception as exc:
            raise CorruptRecord(self.path, "sequences", sequence_id, describe(exc)) from exc
        if len(self._sequence_cache) >= 256:
            self._sequence_cache.clear()
        self._sequence_cache[body] = sequence
        return sequence

    def get_sequence(self, sequence_id: str) -> Sequence | None:
        """The sequence, or None; :class:`CorruptRecord` if its row can't be read."""
        sequence_id = check_id(sequence_id, "sequence_id")
        with self._read("get a sequence") as conn:
            row = conn.execute("SELECT body FROM sequences WHERE id = ?", (sequence_id,)).fetchone()
            return None if row is None else self._decode_sequence(sequence_id, row[0])

    def list_sequences(self, status: SequenceStatus | None = None) -> list[Sequence]:
        """All sequences (of one status), ordered by id; unreadable rows are logged and left out."""
        status = check_opt_enum(status, SequenceStatus, "status")
        with self._read("list sequences") as conn:
            if status is None:
                rows = conn.execute("SELECT id, body FROM sequences ORDER BY id").fetchall()
            else:
                rows = conn.execute(
                    "SELECT id, body FROM sequences WHERE status = ? ORDER BY id", (status.value,)
                ).fetchall()
            found = []
            for sequence_id, body in rows:
                try:
                    sequence = self._decode_sequence(sequence_id, body)
                except CorruptRecord as exc:
                    log.error("%s", exc)
                    continue
                if status is None or sequence.status is status:
                    found.append(sequence)
            return found

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
        micros = shift // _MICROSECOND
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

    def _decode_enrollment(self, row: Seq[Any]) -> Enrollment:
        try:
            return _enrollment_from_row(row)
        except Exception as exc:
            raise CorruptRecord(self.path, "enrollments", str(row[0]), describe(exc)) from exc

    @staticmethod
    def _insert_row(e: Enrollment, live: int) -> tuple[Any, ...]:
        return (
            e.id, e.sequence_id, e.contact_id, _NULL if e.key is None else e.key, _instant(e.enrolled_at),
            *_enrollment_state(e), e.version, live,
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
            f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollments WHERE contact_id = ? AND sequence_id = ? "
            "AND dedupe_key IS ? ORDER BY rid",
            (e.contact_id, e.sequence_id, e.key),
        ).fetchall()
        for row in rows:
            if row[3] in _LIVE_STATUSES:
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

    def get_enrollment(self, enrollment_id: str) -> Enrollment | None:
        """The enrollment, or None; :class:`CorruptRecord` if its row can't be read."""
        enrollment_id = check_id(enrollment_id, "enrollment_id")
        with self._read("get an enrollment") as conn:
            row = conn.execute(
                f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollments WHERE id = ?", (enrollment_id,)
            ).fetchone()
        return None if row is None else self._decode_enrollment(row)

    def find_enrollments(
        self,
        *,
        sequence_id: str | None = None,
        contact_id: str | None = None,
        statuses: Iterable[EnrollmentStatus] | None = None,
        limit: int = 50,
        offset: int = 0,
        after: str | None = None,
    ) -> list[Enrollment]:
        """Enrollments matching every filter, ordered by id (unreadable rows are logged and left out)."""
        sequence_id = check_opt_id(sequence_id, "sequence_id")
        contact_id = check_opt_id(contact_id, "contact_id")
        statuses = check_enums(statuses, EnrollmentStatus, "statuses")
        limit, offset = check_count(limit, "limit"), check_count(offset, "offset")
        after = check_opt_id(after, "after")
        where: list[str] = []
        params: list[Any] = []
        if sequence_id is not None:
            where.append("sequence_id = ?")
            params.append(sequence_id)
        if contact_id is not None:
            where.append("contact_id = ?")
            params.append(contact_id)
        if statuses is not None:
            values = sorted({s.value for s in statuses})
            if not values:
                return []
            where.append(f"status IN ({', '.join('?' * len(values))})")
            params.extend(values)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.extend((limit, offset))
        with self._read("find enrollments") as conn:
            rows = conn.execute(
                f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollments {clause} ORDER BY id LIMIT ? OFFSET ?", params
            ).fetchall()
        found = []
        for row in rows:
            try:
                found.append(self._decode_enrollment(row))
            except CorruptRecord as exc:
                log.error("%s", exc)
        return found

    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Enrollment | BrokenRecord]:
        """Lease the earliest due enrollments of active sequences, with no PENDING message, to
        ``owner``: one write transaction reads them through the due index and records the leases."""
        now, limit, lease, owner = check_claim(now, limit, lease, owner)
        at = _instant(to_utc(now, "now"))
        until = _instant(to_utc(now, "now") + lease)
        with self._write("claim due enrollments") as conn:
            rows = conn.execute(
                f"SELECT {_ENROLLMENT_COLUMNS}, rid FROM enrollments WHERE status = 'active' AND seq_live = 1 "
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
        claimed: list[Enrollment | BrokenRecord] = []
        for row in rows:
            try:
                claimed.append(_enrollment_from_row(row[:-1]))
            except Exception as exc:
                claimed.append(BrokenRecord(id=str(row[0]), error=describe(exc)))
        return claimed

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
                end = _instant(to_utc(until, "until"))
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
                updates.append((*_enrollment_state(new), new.version + 1, rid))
                enrolled_at = _instant(new.enrolled_at)
                if (new.sequence_id, new.contact_id, new.key, enrolled_at) != (row[5], row[6], row[7], row[8]):
                    row[5:9] = new.sequence_id, new.contact_id, new.key, enrolled_at
                    identity_updates.append(
                        (new.sequence_id, new.contact_id, new.key, enrolled_at, new.sequence_id, rid)
                    )
                held = owner is not None and lease_owner == owner
                for message in change.outbox:
                    leased = held and message.status is OutboxStatus.PENDING
                    messages.append(_message_row(message, owner if leased else None, lease_until if leased else None))
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
            if identity != (new.sequence_id, new.contact_id, new.key, _instant(new.enrolled_at)):
                return False
            updates.append((*_enrollment_state(new), new.version + 1, rid, new.id, new.version))
            leases.append((rid,))
            for message in change.outbox:
                leased = message.status is OutboxStatus.PENDING
                messages.append(_message_row(message, owner if leased else None, until if leased else None))
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
        return None if row[0] is None else _from_instant(row[0])

    def count_due(self, now: datetime) -> int:
        """How many ACTIVE enrollments of ACTIVE sequences are due at ``now``, leased or not."""
        now = check_instant(now, "now")
        at = _instant(to_utc(now, "now"))
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
        at = _instant(to_utc(now, "now"))
        until = _instant(to_utc(now, "now") + lease)
        with self._write("claim outbox messages") as conn:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? "
                f"AND (lease_until IS NULL OR lease_until <= ?) AND {_NOT_HELD} ORDER BY next_attempt_at, key LIMIT ?",
                (at, at, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE key = ?",
                    [(owner, until, row[0]) for row in rows],
                )
        claimed = []
        for row in rows:
            try:
                claimed.append(_message_from_row(row))
            except Exception as exc:
                log.error("%s", CorruptRecord(self.path, "outbox", str(row[0]), describe(exc)))
        return claimed

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
                    _NULL
                    if d.status is not OutboxStatus.PENDING or d.next_attempt_at is None
                    else _instant(to_utc(d.next_attempt_at, "delivery.next_attempt_at")),
                    _NULL if d.error is None else d.error,
                    _NULL if d.status is OutboxStatus.PENDING else _instant(to_utc(d.at, "delivery.at")),
                    _NULL if d.provider_id is None else d.provider_id,
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
            _insert_messages(conn, [_message_row(message, None, None)])
            return True

    def get_message(self, key: str) -> OutboxMessage | None:
        """The outbox message with that key, or None; :class:`CorruptRecord` if its row can't be read."""
        key = check_key(key)
        with self._read("get an outbox message") as conn:
            row = conn.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return _message_from_row(row)
        except Exception as exc:
            raise CorruptRecord(self.path, "outbox", key, describe(exc)) from exc

    def find_messages(
        self, *, status: OutboxStatus | None = None, enrollment_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[OutboxMessage]:
        """Outbox messages matching the filters, ordered by ``(created_at, key)``."""
        status = check_opt_enum(status, OutboxStatus, "status")
        enrollment_id = check_opt_id(enrollment_id, "enrollment_id")
        limit, offset = check_count(limit, "limit"), check_count(offset, "offset")
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if enrollment_id is not None:
            where.append("enrollment_id = ?")
            params.append(enrollment_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.extend((limit, offset))
        with self._read("find outbox messages") as conn:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox {clause} ORDER BY created_at, key LIMIT ? OFFSET ?", params
            ).fetchall()
        found = []
        for row in rows:
            try:
                found.append(_message_from_row(row))
            except Exception as exc:
                log.error("%s", CorruptRecord(self.path, "outbox", str(row[0]), describe(exc)))
        return found

    def count_messages(self, contact_id: str, since: datetime, until: datetime) -> int:
        """Emails queued for the contact (PENDING or DELIVERED) with ``since <= created_at < until``;
        one range read of an index on (contact, created_at)."""
        contact_id = check_id(contact_id, "contact_id")
        since, until = check_instant(since, "since"), check_instant(until, "until")
        start, end = _instant(to_utc(since, "since")), _instant(to_utc(until, "until"))
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

    def prune_messages(self, settled_before: datetime, *, batch_size: int = 10_000) -> int:
        """Delete DELIVERED and FAILED outbox messages settled before ``settled_before``; return how many.

        The outbox otherwise grows by one row per email. Keep at least as much
        history as the longest frequency-cap window (:meth:`count_messages`
        counts what is left). Deletes in batches, one short transaction each,
        so workers sharing the file are never held up for long.
        """
        settled_before = check_instant(settled_before, "settled_before")
        batch_size = check_count(batch_size, "batch_size", minimum=1)
        cutoff = _instant(to_utc(settled_before, "settled_before"))
        total = 0
        while True:
            with self._write("prune outbox messages") as conn:
                deleted = conn.execute(
                    "DELETE FROM outbox WHERE key IN (SELECT key FROM outbox WHERE status != 'pending' "
                    "AND settled_at < ? LIMIT ?)",
                    (cutoff, batch_size),
                ).rowcount
            total += max(deleted, 0)
            if deleted < batch_size:
                return total

    # ------------------------------------------------------------------ counters

    def bump(self, counters: Seq[Counter]) -> None:
        """Apply counter increments in one transaction."""
        counters = check_counters(counters)
        totals: dict[tuple[str, int, str], int] = {}
        sum_counters(counters, totals)
        if not totals:
            return
        with self._write("bump counters") as conn:
            _write_counters(conn, totals)

    def counters(self, sequence_id: str) -> Mapping[tuple[int, str], int]:
        """Every non-zero counter of a sequence (one index range read)."""
        sequence_id = check_id(sequence_id, "sequence_id")
        with self._read("read counters") as conn:
            rows = conn.execute(
                "SELECT position, name, value FROM counters WHERE sequence_id = ? AND value != 0", (sequence_id,)
            ).fetchall()
        return {(position, name): value for position, name, value in rows}


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


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
    return None if best is None else _from_instant(best)
