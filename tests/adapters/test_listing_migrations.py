"""Listing by step on a database made before the step index: SQLite and PostgreSQL migrate it in place.

Each test builds the schema the release before the index wrote, by replaying that release's own
migrations (``_MIGRATIONS`` is private, but it is exactly what those files were made with: released
migrations are never edited), stores data as that release did (sequence bodies without
``created_at``/``updated_at``), then opens it with the current store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from dripcore import EnrollmentOrder, SequenceStatus
from dripcore.adapters.postgres import PostgresStore
from dripcore.adapters.postgres import schema as postgres_schema
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.adapters.sqlite import schema as sqlite_schema
from dripcore.model import UTC
from dripcore.serialization import make_converter
from dripcore.testing.contract import T0, sample_sequence

pytest_plugins = ["tests.postgres_fixtures"]

HOUR = timedelta(hours=1)
# The last schema versions without the step index.
SQLITE_BEFORE = 5
POSTGRES_BEFORE = 1
# (id, contact, last step sent, due in hours from T0, or None once completed)
ROWS = [("e1", "ana", 1, 30), ("e2", "bo", 0, 2), ("e3", "cy", 1, 5), ("e4", "dee", 3, None), ("e5", "eve", 1, 5)]


def _legacy_body() -> str:
    """A sequence's stored body as the release before timestamps wrote it: no created_at/updated_at keys."""
    document = make_converter().unstructure(sample_sequence("s1"))
    del document["created_at"], document["updated_at"]
    return json.dumps(document)


def _micros(instant: datetime) -> int:
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _write_sqlite_file_before_the_index(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "CREATE TABLE dripcore_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
            "applied_at TEXT NOT NULL)"
        )
        for number, description, statements in sqlite_schema._MIGRATIONS:
            if number > SQLITE_BEFORE:
                break
            for statement in statements:
                if callable(statement):
                    statement(conn)
                else:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO dripcore_migrations VALUES (?, ?, '2026-01-01T00:00:00+00:00')", (number, description)
            )
        conn.execute("INSERT INTO sequences VALUES ('s1', 'active', 1, ?)", (_legacy_body(),))
        for enrollment_id, contact_id, last, due in ROWS:
            finished = due is None
            conn.execute(
                "INSERT INTO enrollments (id, sequence_id, contact_id, status, enrolled_at, next_due, last_step_sent, "
                "last_step_sent_at, ended_at, version, seq_live) VALUES (?, 's1', ?, ?, ?, ?, ?, ?, ?, 0, 1)",
                (
                    enrollment_id, contact_id, "completed" if finished else "active", _micros(T0 - 2 * HOUR),
                    None if finished else _micros(T0 + due * HOUR), last, _micros(T0 - HOUR) if last else None,
                    _micros(T0) if finished else None,
                ),
            )  # fmt: skip
        conn.execute(f"PRAGMA application_id = {sqlite_schema.APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SQLITE_BEFORE}")
    finally:
        conn.close()


def _check_listing(store: SQLiteStore | PostgresStore) -> None:
    sequence = store.get_sequence("s1")
    assert sequence is not None
    assert sequence.status is SequenceStatus.ACTIVE
    assert (sequence.created_at, sequence.updated_at) == (None, None), "unknown, not invented"
    assert [e.id for e in store.find_enrollments(sequence_id="s1", last_step_sent=1)] == ["e1", "e3", "e5"]
    by_due = store.find_enrollments(sequence_id="s1", order=EnrollmentOrder.NEXT_DUE)
    assert [e.id for e in by_due] == ["e2", "e3", "e5", "e1", "e4"]
    page = store.find_enrollments(sequence_id="s1", last_step_sent=1, order=EnrollmentOrder.NEXT_DUE, limit=2, offset=1)
    assert [e.id for e in page] == ["e5", "e1"]


def test_a_sqlite_file_from_before_the_step_index_is_migrated_and_lists_by_step(tmp_path: Path) -> None:
    """The file opens at the current version with the step index, its sequence loads with no
    timestamps, and its enrollments list by step and by next due time."""
    path = tmp_path / "drip.db"
    _write_sqlite_file_before_the_index(path)
    with SQLiteStore(path) as store:
        assert store.schema_version() == sqlite_schema.SCHEMA_VERSION
        _check_listing(store)
    conn = sqlite3.connect(path)
    try:
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "enrollments_by_step" in indexes
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM enrollments WHERE sequence_id = 's1' AND last_step_sent = 1 "
                "ORDER BY id LIMIT 50"
            )
        )
        assert "enrollments_by_step" in plan, plan
    finally:
        conn.close()


def test_a_postgres_schema_from_before_the_step_index_is_migrated_and_lists_by_step(
    postgres_dsn: str, new_schema: Callable[[], str]
) -> None:
    """Same for PostgreSQL: a version-1 schema is migrated in place and lists by step and due time."""
    schema = new_schema()
    quoted = f'"{schema}"'
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {quoted}")
        conn.execute(
            f"CREATE TABLE {quoted}.dripcore_migrations (version integer PRIMARY KEY, "
            "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for number, description, statements in postgres_schema._MIGRATIONS:
            if number > POSTGRES_BEFORE:
                break
            for statement in statements:
                conn.execute(statement.replace("{s}", quoted))
            conn.execute(
                f"INSERT INTO {quoted}.dripcore_migrations (version, description) VALUES (%s, %s)",
                (number, description),
            )
        conn.execute(f"INSERT INTO {quoted}.sequences VALUES ('s1', 'active', 1, %s::jsonb)", (_legacy_body(),))
        for enrollment_id, contact_id, last, due in ROWS:
            finished = due is None
            conn.execute(
                f"INSERT INTO {quoted}.enrollments (id, sequence_id, contact_id, status, seq_live, enrolled_at, "
                "next_due, last_step_sent, last_step_sent_at, ended_at, version) "
                "VALUES (%s, 's1', %s, %s, true, %s, %s, %s, %s, %s, 0)",
                (
                    enrollment_id, contact_id, "completed" if finished else "active", T0 - 2 * HOUR,
                    None if finished else T0 + due * HOUR, last, T0 - HOUR if last else None, T0 if finished else None,
                ),
            )  # fmt: skip
    with PostgresStore(postgres_dsn, schema=schema) as store:
        assert store.schema_version() == postgres_schema.SCHEMA_VERSION
        _check_listing(store)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND indexname = 'enrollments_by_step'", (schema,)
        ).fetchall()
    assert found == [("enrollments_by_step",)]
