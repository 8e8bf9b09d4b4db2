"""The SQLite schema and its migrations: every version's DDL in order, and opening a file at the right version.

A file is marked with ``PRAGMA application_id`` (:data:`APPLICATION_ID`) and holds its
schema version in ``PRAGMA user_version``; ``dripcore_migrations`` records each migration
applied. :func:`check_schema` refuses a foreign or newer file; :func:`migrate` brings an
older (or new, empty) one up to :data:`SCHEMA_VERSION` in one transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime

from ...errors import SchemaTooNew
from ...model import UTC
from .errors import NotADripcoreDatabase

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "check_schema", "migrate"]

log = logging.getLogger("dripcore.sqlite")

#: ``PRAGMA application_id`` of a dripcore database (the bytes ``drip``).
APPLICATION_ID = 0x64726970


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
    (
        6,
        "listing a sequence's enrollments by the step they are on goes through an index",
        ("CREATE INDEX enrollments_by_step ON enrollments (sequence_id, last_step_sent, id)",),
    ),
)

#: The schema version this code writes; older files are migrated up to it.
SCHEMA_VERSION = _MIGRATIONS[-1][0]


def check_schema(path: str, application_id: int, version: int, tables: list[str]) -> None:
    """Refuse a file this code must not write into: one of a newer dripcore
    (:class:`~dripcore.errors.SchemaTooNew`) or another application's (:class:`NotADripcoreDatabase`)."""
    if application_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(path, version, SCHEMA_VERSION)
        return
    if application_id == 0 and not tables:
        return  # a new (or empty) file: the migrations create the schema
    owner = f"application_id {application_id:#x}" if application_id else "no dripcore marker"
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise NotADripcoreDatabase(
        path,
        f"this SQLite database belongs to another application ({owner}; tables: {shown or 'none'}); "
        "dripcore will not write into it. Point the store at a new path",
    )


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Apply the migrations the file lacks, in one ``BEGIN IMMEDIATE`` transaction (another
    process that migrated meanwhile leaves nothing to do)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if conn.execute("PRAGMA application_id").fetchone()[0] not in (0, APPLICATION_ID):
            raise NotADripcoreDatabase(path, "another application claimed this file while it was opened")
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(path, version, SCHEMA_VERSION)
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
            log.info("%s: migrated the schema to version %d (%s)", path, number, description)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
