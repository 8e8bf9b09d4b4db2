"""The PostgreSQL schema and its migrations: every version's DDL in order, and bringing a schema to the current version.

Tables live in a PostgreSQL schema of their own (``dripcore`` by default);
``<schema>.dripcore_migrations`` records each migration applied.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...errors import SchemaTooNew
from .connection import lock_key
from .errors import NotADripcoreSchema, SchemaOutdated

if TYPE_CHECKING:  # psycopg is imported (or its absence explained) by .connection
    import psycopg

__all__ = ["SCHEMA_VERSION", "ensure_schema", "stored_version"]

log = logging.getLogger("dripcore.postgres")

# Each migration takes the schema from version ``n - 1`` to ``n`` and is never
# edited once released. ``{s}`` is the quoted schema name. Identifier columns
# use the "C" collation so ids sort as Python strings do, whatever the
# database's locale.
_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "sequences, enrollments, outbox and sharded counters",
        (
            """CREATE TABLE {s}.sequences (
                id text COLLATE "C" PRIMARY KEY,
                status text NOT NULL,
                version integer NOT NULL,
                body jsonb NOT NULL
            )""",
            """CREATE TABLE {s}.enrollments (
                id text COLLATE "C" PRIMARY KEY,
                rid bigint GENERATED ALWAYS AS IDENTITY,
                sequence_id text COLLATE "C" NOT NULL,
                contact_id text COLLATE "C" NOT NULL,
                dedupe_key text COLLATE "C",
                status text NOT NULL,
                seq_live boolean NOT NULL,
                enrolled_at timestamptz NOT NULL,
                next_due timestamptz,
                last_step_sent integer NOT NULL,
                last_step_sent_at timestamptz,
                exit_reason text,
                paused_at timestamptz,
                ended_at timestamptz,
                variables jsonb,
                opened jsonb,
                clicked jsonb,
                skipped jsonb,
                version integer NOT NULL,
                lease_owner text,
                lease_until timestamptz
            ) WITH (fillfactor = 80)""",
            # The claim index: only what could be due, in claim order.
            "CREATE INDEX enrollments_due ON {s}.enrollments (next_due, id) WHERE status = 'active' AND seq_live",
            "CREATE INDEX enrollments_by_contact ON {s}.enrollments (contact_id, sequence_id)",
            "CREATE INDEX enrollments_by_sequence ON {s}.enrollments (sequence_id, id)",
            """CREATE TABLE {s}.outbox (
                key text COLLATE "C" PRIMARY KEY,
                enrollment_id text COLLATE "C" NOT NULL,
                sequence_id text COLLATE "C" NOT NULL,
                contact_id text COLLATE "C" NOT NULL,
                position integer NOT NULL,
                status text NOT NULL,
                created_at timestamptz NOT NULL,
                next_attempt_at timestamptz,
                attempts integer NOT NULL,
                last_error text,
                settled_at timestamptz,
                provider_id text,
                email jsonb,
                lease_owner text,
                lease_until timestamptz
            ) WITH (fillfactor = 80)""",
            "CREATE INDEX outbox_pending_due ON {s}.outbox (next_attempt_at, key) WHERE status = 'pending'",
            "CREATE INDEX outbox_by_enrollment ON {s}.outbox (enrollment_id, status)",
            "CREATE INDEX outbox_by_contact ON {s}.outbox (contact_id, created_at)",
            """CREATE TABLE {s}.counters (
                sequence_id text COLLATE "C" NOT NULL,
                position integer NOT NULL,
                name text COLLATE "C" NOT NULL,
                shard smallint NOT NULL,
                value bigint NOT NULL,
                PRIMARY KEY (sequence_id, position, name, shard)
            )""",
        ),
    ),
    (
        2,
        "listing a sequence's enrollments by the step they are on goes through an index",
        ("CREATE INDEX enrollments_by_step ON {s}.enrollments (sequence_id, last_step_sent, id)",),
    ),
)

#: The schema version this code writes; older schemas are migrated up to it.
SCHEMA_VERSION = _MIGRATIONS[-1][0]


def ensure_schema(conn: psycopg.Connection[Any], *, schema: str, server: str, migrate: bool) -> None:
    """Bring the PostgreSQL schema ``schema`` to :data:`SCHEMA_VERSION`: create it, migrate an older
    one (under an advisory lock, so concurrent first starts migrate once), or refuse a newer one
    (:class:`~dripcore.errors.SchemaTooNew`), an outdated one with ``migrate=False``
    (:class:`SchemaOutdated`) or one holding foreign tables (:class:`NotADripcoreSchema`)."""
    quoted = f'"{schema}"'
    version = stored_version(conn, quoted)
    if version == SCHEMA_VERSION:
        return
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaTooNew(server, version, SCHEMA_VERSION)
    if not migrate:
        raise SchemaOutdated(server, version or 0, SCHEMA_VERSION)
    with conn.transaction():
        # Concurrent first starts migrate once: the others wait here, then find it done.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("dripcore-migrate", schema),))
        if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone():
            conn.execute(f"CREATE SCHEMA {quoted}")
        version = stored_version(conn, quoted)
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaTooNew(server, version, SCHEMA_VERSION)
        if version is None:
            foreign = [
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))
            ]
            if foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise NotADripcoreSchema(
                    server,
                    f"schema {schema!r} already holds tables that are not dripcore's ({shown}) and no "
                    "dripcore_migrations table; dripcore will not write into it. Choose another schema=",
                )
            conn.execute(
                f"CREATE TABLE {quoted}.dripcore_migrations (version integer PRIMARY KEY, "
                "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for number, description, statements in _MIGRATIONS:
            if number <= (version or 0):
                continue
            for statement in statements:
                conn.execute(statement.replace("{s}", quoted))
            conn.execute(
                f"INSERT INTO {quoted}.dripcore_migrations (version, description) VALUES (%s, %s)",
                (number, description),
            )
            log.info("%s: migrated the schema to version %d (%s)", server, number, description)


def stored_version(conn: psycopg.Connection[Any], quoted: str) -> int | None:
    """The version of the schema ``quoted`` (its quoted name), or None when it has no dripcore_migrations table."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quoted}.dripcore_migrations",)).fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {quoted}.dripcore_migrations").fetchone()
    return int(row[0]) if row else 0
