"""PostgresStore: the :class:`~dripcore.ports.Store` on PostgreSQL: transactions, claims, commits, settles, wake-ups."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

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
from ...model import UTC, Enrollment, EnrollmentStatus, Sequence, SequenceStatus, to_utc
from ...ports import BrokenRecord, Change, Counter, Delivery, OutboxMessage, OutboxStatus
from .._base import SQLStoreBase
from .._common import checked_counters, dumps, rejected_changes, rejected_deliveries, sum_counters
from .codec import (
    ENROLLMENT_COLUMNS,
    EPOCH,
    OUTBOX_COLUMNS,
    enrollment_columns,
    enrollment_doc,
    enrollment_from_row,
    iso,
    message_doc,
    message_from_row,
    micros,
    text_array,
)
from .connection import Connections, Pool, is_data_error, lock_key, server_name
from .errors import PostgresStoreError
from .schema import ensure_schema

__all__ = ["PostgresStore"]

log = logging.getLogger("dripcore.postgres")

_COUNTER_SHARDS = 16
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


class PostgresStore(Connections, SQLStoreBase):
    """A :class:`~dripcore.ports.Store` in a PostgreSQL database, shared by any number of workers.

    ``target`` is a DSN (``"postgresql://user:secret@host/db"`` or
    ``"host=... dbname=..."``): the store then owns a small connection pool of
    up to ``max_connections``. Or it is a :class:`psycopg_pool.ConnectionPool`
    the host already has; the store borrows connections from it (and sets their
    session time zone to UTC) and never closes it.

    ``schema`` is the PostgreSQL schema holding the tables (created if missing;
    one database may hold several independent dripcore schemas).
    ``connect_timeout`` bounds opening a connection; ``statement_timeout`` (in
    seconds, own pool only) makes the server cancel slower statements
    (:class:`StatementTimeout`); ``retry_for`` is how long an operation keeps
    retrying a lost connection or a deadlock before raising. ``notify_within``:
    writes NOTIFY listeners (:meth:`wait_for_work`) of work due within that
    time; keep it at least the engine's ``idle``. ``migrate=False`` refuses an
    outdated schema instead of upgrading it.

    Threads may share one store (each call borrows a pooled connection). A
    store must not cross :func:`os.fork`: open one per process (a store that
    owns its pool opens a new one in the child by itself).
    """

    capabilities = frozenset({"multiprocess", "frequency_cap", "retention"})

    def __init__(
        self,
        target: str | Pool,
        /,
        *,
        schema: str = "dripcore",
        max_connections: int = 4,
        connect_timeout: float = 10.0,
        statement_timeout: float | None = None,
        retry_for: float = 10.0,
        notify_within: timedelta = timedelta(minutes=5),
        migrate: bool = True,
        application_name: str = "dripcore",
    ) -> None:
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema={schema!r}: use letters, digits and underscores (at most 48), not a digit first")
        if max_connections < 1:
            raise ValueError(f"max_connections={max_connections!r}: must be at least 1")
        self.schema = schema
        self._s = f'"{schema}"'
        self.channel = f"dripcore_{schema}"
        self.connect_timeout = float(connect_timeout)
        self.statement_timeout = statement_timeout
        self.retry_for = float(retry_for)
        self.notify_within = notify_within
        self._max_connections = max_connections
        self._application_name = application_name
        if isinstance(target, str):
            self.dsn: str | None = target
            self._own_pool = True
            self._conninfo = target
        elif isinstance(target, ConnectionPool):
            self.dsn = None
            self._own_pool = False
            conninfo, kwargs = target.conninfo, target.kwargs
            conninfo = conninfo() if callable(conninfo) else conninfo
            kwargs = (kwargs() if callable(kwargs) else kwargs) or {}
            # The listener and diagnostics open their own connections with the pool's parameters.
            extra = {
                k: v for k, v in kwargs.items()
                if k not in ("autocommit", "row_factory", "prepare_threshold", "cursor_factory", "context")
            }  # fmt: skip
            self._conninfo = make_conninfo(conninfo, **extra)
        else:
            raise TypeError(f"PostgresStore() takes a DSN string or a psycopg_pool.ConnectionPool, not {target!r}")
        self.server = f"{server_name(self._conninfo)} (schema {schema})"
        SQLStoreBase.__init__(self, self.server, log)
        self._lock = threading.Lock()
        self._prepared: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._listener: psycopg.Connection[Any] | None = None
        self._closed = False
        self._pid = os.getpid()
        # Open and check (or migrate) the schema on one direct connection, so a
        # wrong DSN, password or schema fails here with a precise error.
        with self._direct_connection("open the store") as conn:
            ensure_schema(conn, schema=self.schema, server=self.server, migrate=migrate)
        self._pool: Pool = self._open_pool() if isinstance(target, str) else target

    def __repr__(self) -> str:
        return f"PostgresStore({self.server!r})"

    # ------------------------------------------------------------------ the shared base's hooks

    _enrollment_columns = ENROLLMENT_COLUMNS
    _outbox_columns = OUTBOX_COLUMNS
    _sequence_body = "body::text"
    _param = "%s"
    _next_due_order = "next_due, id"  # ascending puts NULLs last here, and an index can serve it
    _enrollment_from_row = staticmethod(enrollment_from_row)
    _message_from_row = staticmethod(message_from_row)

    def _table(self, name: str) -> str:
        return f"{self._s}.{name}"

    def _read_all(self, action: str, sql: str, params: Seq[Any] = ()) -> list[Any]:
        return self._run(action, lambda cur: cur.execute(sql, params).fetchall(), replay_safe=True, single=True)

    def _in_texts(self, column: str, values: list[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%s::text[])", [text_array(values)]

    def _write_counter_totals(self, totals: Mapping[tuple[str, int, str], int]) -> None:
        self._run("bump counters", lambda cur: self._write_counters(cur, totals), replay_safe=False)

    def _prune_batch(self, cutoff: datetime, batch_size: int) -> int:
        sql = (
            f"DELETE FROM {self._s}.outbox WHERE key IN (SELECT key FROM {self._s}.outbox WHERE status <> 'pending' "
            "AND settled_at < %s LIMIT %s)"
        )
        return self._run(
            "prune outbox messages",
            lambda cur: int(cur.execute(sql, (cutoff, batch_size)).rowcount),
            replay_safe=True,
            single=True,
        )

    def schema_version(self) -> int:
        """The schema version of the database (:data:`SCHEMA_VERSION` once opened)."""
        return self._run(
            "read the schema version",
            lambda cur: int(_one(cur.execute(f"SELECT coalesce(max(version), 0) FROM {self._s}.dripcore_migrations"))),
            replay_safe=True,
            single=True,
        )

    # ------------------------------------------------------------------ wake-ups

    def _notify(self, cur: psycopg.Cursor[Any], at: datetime | None) -> None:
        """NOTIFY listeners (at commit) of work due at ``at``, if that is soon enough to matter."""
        if at is None or at > datetime.now(UTC) + self.notify_within:
            return
        cur.execute("SELECT pg_notify(%s, %s)", (self.channel, str(micros(at))))

    def wait_for_work(self, timeout: float, wake: threading.Event | None = None) -> bool:
        """Block up to ``timeout`` seconds until another worker signals work due by then.

        Listens (``LISTEN``) on the store's channel. Returns True as soon as
        signalled work is due (at once if it is due already), or when ``wake``
        is set; False when the timeout passes first. Notifications carry the
        due instant, so work due after the timeout does not wake the caller (it
        will see it when it next looks). If the listening connection fails, this
        degrades to a plain timed wait and reconnects on the next call: it never
        raises for a database problem. Uses the system clock. One thread per
        store should wait at a time (a notification wakes one waiter).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        woken_at: float | None = None  # when signalled work falls due
        while True:
            if wake is not None and wake.is_set():
                return True
            now = time.monotonic()
            if woken_at is not None and now >= woken_at:
                return True
            if now >= deadline:
                return False
            until = deadline if woken_at is None else min(deadline, woken_at)
            slice_ = until - now if wake is None else min(until - now, 0.2)
            listener = self._listen()
            if listener is None:
                if wake is not None:
                    wake.wait(slice_)
                else:
                    time.sleep(slice_)
                continue
            try:
                for note in listener.notifies(timeout=slice_, stop_after=1):
                    due_in = _seconds_until(note.payload)
                    if due_in <= 0:
                        return True
                    candidate = time.monotonic() + due_in
                    woken_at = candidate if woken_at is None else min(woken_at, candidate)
            except psycopg.Error as exc:
                log.warning("%s: the LISTEN connection failed (%s); falling back to timed waits", self.server, exc)
                self._drop_listener()

    # ------------------------------------------------------------------ sequences

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        """Insert (``expected_version=None``) or replace at the expected version, atomically."""
        check_record(sequence, Sequence, "sequence")
        if expected_version is not None:
            check_count(expected_version, "expected_version")
        body = dumps(self._converter.unstructure(sequence))
        self._run(
            "save a sequence", lambda cur: self._save_sequence(cur, sequence, body, expected_version), replay_safe=False
        )

    def resume_sequence(self, sequence: Sequence, *, expected_version: int, shift: timedelta) -> int:
        """Save the resumed sequence and move its ACTIVE enrollments, and their PENDING messages' next
        attempts, ``shift`` later, in one transaction."""
        check_record(sequence, Sequence, "sequence")
        check_count(expected_version, "expected_version")
        check_span(shift, "shift", maximum=MAX_SPAN)
        body = dumps(self._converter.unstructure(sequence))

        def work(cur: psycopg.Cursor[Any]) -> int:
            self._save_sequence(cur, sequence, body, expected_version)
            # The retries the pause held: the partial index of pending messages, and one
            # probe of the enrollments' primary key per message.
            cur.execute(
                f"UPDATE {self._s}.outbox AS o SET next_attempt_at = o.next_attempt_at + %s "
                "WHERE o.status = 'pending' AND o.sequence_id = %s AND o.next_attempt_at IS NOT NULL "
                f"AND EXISTS (SELECT 1 FROM {self._s}.enrollments AS e WHERE e.id = o.enrollment_id "
                "AND e.sequence_id = %s AND e.status = 'active' AND e.next_due IS NOT NULL)",
                (shift, sequence.id, sequence.id),
            )
            cur.execute(
                f"UPDATE {self._s}.enrollments SET next_due = next_due + %s, version = version + 1 "
                "WHERE sequence_id = %s AND status = 'active' AND next_due IS NOT NULL",
                (shift, sequence.id),
            )
            return cur.rowcount

        # Not replayed: a lost COMMIT that did apply would be refused (version), never applied twice.
        return self._run("resume a sequence", work, replay_safe=False)

    def _save_sequence(
        self, cur: psycopg.Cursor[Any], sequence: Sequence, body: str, expected_version: int | None
    ) -> None:
        live = sequence.status is SequenceStatus.ACTIVE
        row = cur.execute(
            f"SELECT status, version FROM {self._s}.sequences WHERE id = %s FOR UPDATE", (sequence.id,)
        ).fetchone()
        if expected_version is None:
            if row is not None:
                raise ConcurrencyConflict(kind="sequence", id=sequence.id, expected=0, actual=row[1])
            try:
                with cur.connection.transaction():
                    cur.execute(
                        f"INSERT INTO {self._s}.sequences (id, status, version, body) VALUES (%s, %s, %s, %s)",
                        (sequence.id, sequence.status.value, sequence.version, body),
                    )
            except pg_errors.UniqueViolation:
                raise ConcurrencyConflict(kind="sequence", id=sequence.id, expected=0, actual=None) from None
        elif row is None or row[1] != expected_version:
            raise ConcurrencyConflict(
                kind="sequence", id=sequence.id, expected=expected_version, actual=None if row is None else row[1]
            )
        else:
            cur.execute(
                f"UPDATE {self._s}.sequences SET status = %s, version = %s, body = %s WHERE id = %s",
                (sequence.status.value, sequence.version, body, sequence.id),
            )
        was_live = row is not None and row[0] == "active"
        if live != was_live:
            cur.execute(
                f"UPDATE {self._s}.enrollments SET seq_live = %s WHERE sequence_id = %s AND seq_live <> %s",
                (live, sequence.id, live),
            )
            if live:
                self._notify(cur, datetime.now(UTC))

    def delete_sequence(self, sequence_id: str) -> None:
        """Delete a sequence with no live enrollments, and its enrollments, messages and counters."""
        sequence_id = check_id(sequence_id, "sequence_id")

        def work(cur: psycopg.Cursor[Any]) -> None:
            row = cur.execute(
                f"SELECT status FROM {self._s}.sequences WHERE id = %s FOR UPDATE", (sequence_id,)
            ).fetchone()
            if row is None:
                raise SequenceNotFound(sequence_id)
            live = _one(
                cur.execute(
                    f"SELECT count(*) FROM {self._s}.enrollments WHERE sequence_id = %s "
                    "AND status IN ('active', 'paused')",
                    (sequence_id,),
                )
            )
            if live:
                raise SequenceStateError(
                    sequence_id=sequence_id, status=row[0], action="delete",
                    hint=f"it has {live} active or paused enrollments; archive it first",
                )  # fmt: skip
            for table in ("enrollments", "outbox", "counters"):
                cur.execute(f"DELETE FROM {self._s}.{table} WHERE sequence_id = %s", (sequence_id,))
            cur.execute(f"DELETE FROM {self._s}.sequences WHERE id = %s", (sequence_id,))

        self._run("delete a sequence", work, replay_safe=False)

    # ------------------------------------------------------------------ enrollments

    def add_enrollment(
        self, enrollment: Enrollment, *, allow_reentry: bool, counters: Seq[Counter] = ()
    ) -> tuple[Enrollment, bool]:
        """Insert unless the contact is already (or, without re-entry, was) in the sequence for that key."""
        check_record(enrollment, Enrollment, "enrollment")
        check_flag(allow_reentry, "allow_reentry")
        counters = check_counters(counters)
        e = enrollment

        def work(cur: psycopg.Cursor[Any]) -> tuple[Seq[Any] | None, bool]:
            # One add per identity at a time (and none during a bulk import): the
            # check and the insert below then see the same rows.
            cur.execute(
                "SELECT pg_advisory_xact_lock_shared(%s), pg_advisory_xact_lock(%s)",
                (self._bulk_key, lock_key(self.schema, e.sequence_id, e.contact_id, e.key)),
            )
            rows = cur.execute(
                f"SELECT {ENROLLMENT_COLUMNS} FROM {self._s}.enrollments WHERE contact_id = %s "
                "AND sequence_id = %s AND dedupe_key IS NOT DISTINCT FROM %s ORDER BY rid",
                (e.contact_id, e.sequence_id, e.key),
            ).fetchall()
            for row in rows:
                if row[3] in ("active", "paused"):
                    return row, False
            if rows and not allow_reentry:
                return rows[-1], False
            inserted = cur.execute(
                f"INSERT INTO {self._s}.enrollments (id, sequence_id, contact_id, dedupe_key, status, enrolled_at, "
                "next_due, last_step_sent, last_step_sent_at, exit_reason, paused_at, ended_at, variables, opened, "
                "clicked, skipped, version, seq_live) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                f"%s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb, %s, coalesce((SELECT s.status = 'active' FROM "
                f"{self._s}.sequences AS s WHERE s.id = %s), false)) ON CONFLICT (id) DO NOTHING RETURNING seq_live",
                (*enrollment_columns(e), e.version, e.sequence_id),
            ).fetchone()
            if inserted is None:
                raise ConcurrencyConflict(kind="enrollment", id=e.id, expected=0, actual=0)
            totals: dict[tuple[str, int, str], int] = {}
            sum_counters(counters, totals)
            self._write_counters(cur, totals)
            if inserted[0] and e.status is EnrollmentStatus.ACTIVE:
                self._notify(cur, e.next_step_due_at)
            return None, True

        existing, created = self._run("add an enrollment", work, replay_safe=False)
        if existing is None:
            return enrollment, created
        return self._decode_enrollment(existing), False

    @property
    def _bulk_key(self) -> int:
        return lock_key("dripcore-bulk", self.schema)

    def add_enrollments(
        self,
        enrollments: Iterable[Enrollment],
        *,
        allow_reentry: bool,
        counters: Callable[[Enrollment], Iterable[Counter]] | None = None,
        batch_size: int = 10_000,
    ) -> int:
        """Bulk :meth:`add_enrollment` (an import, a backfill) through ``COPY``: the same rules per
        enrollment, one transaction per ``batch_size``; returns how many were created.

        ``counters(enrollment)`` gives the increments of each created one. An id
        that already exists raises :class:`~dripcore.errors.ConcurrencyConflict`
        and rolls back the current batch (earlier batches stay). Single adds wait
        while a batch is being written.
        """
        check_flag(allow_reentry, "allow_reentry")
        created = 0
        iterator = iter(enrollments)
        while True:
            chunk = list(itertools.islice(iterator, batch_size))
            if not chunk:
                return created
            work = functools.partial(self._import, chunk=chunk, allow_reentry=allow_reentry, counters=counters)
            created += self._run("add enrollments", work, replay_safe=False)

    def add_enrollment_batch(
        self,
        enrollments: Seq[Enrollment],
        *,
        allow_reentry: bool,
        counters: Callable[[Enrollment], Iterable[Counter]] | None = None,
    ) -> list[tuple[Enrollment, bool]]:
        """:meth:`add_enrollment` for each, in order, in one transaction (the new ones through
        ``COPY``): ``(enrollment, created)`` per item. Single adds wait while it is written."""
        check_records(enrollments, Enrollment, "enrollments")
        check_flag(allow_reentry, "allow_reentry")
        batch = list(enrollments)
        increments = None if counters is None else checked_counters(counters)

        def work(cur: psycopg.Cursor[Any]) -> list[tuple[Enrollment | Seq[Any], bool]]:
            # The bulk lock, exclusive: no single add (they hold it shared) and no other
            # batch runs meanwhile, so what is read here is still so at the insert.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._bulk_key,))
            rows = cur.execute(
                f"SELECT {ENROLLMENT_COLUMNS} FROM {self._s}.enrollments WHERE contact_id = ANY(%s) "
                "AND sequence_id = ANY(%s) ORDER BY rid",
                (sorted({e.contact_id for e in batch}), sorted({e.sequence_id for e in batch})),
            ).fetchall()
            stored: dict[tuple[str, str, str | None], list[Seq[Any]]] = {}
            for row in rows:
                stored.setdefault((row[1], row[2], row[15]), []).append(row)
            plan: list[tuple[Enrollment | Seq[Any], bool]] = []
            added: dict[tuple[str, str, str | None], Enrollment] = {}
            for e in batch:
                identity = (e.sequence_id, e.contact_id, e.key)
                first = added.get(identity)
                if first is not None:  # the first of two in one batch wins, as two calls would
                    plan.append((first, False))
                    continue
                previous = stored.get(identity, [])
                live = next((row for row in previous if row[3] in ("active", "paused")), None)
                if live is not None or (previous and not allow_reentry):
                    plan.append((live or previous[-1], False))
                    continue
                added[identity] = e
                plan.append((e, True))
            if added:
                # Only identities with nothing live left, so the import's own dedupe passes them all.
                self._import(cur, chunk=list(added.values()), allow_reentry=True, counters=increments)
            return plan

        plan = self._run("add enrollments", work, replay_safe=False)
        return [
            (item if isinstance(item, Enrollment) else self._decode_enrollment(item), created) for item, created in plan
        ]

    def _import(
        self,
        cur: psycopg.Cursor[Any],
        *,
        chunk: list[Enrollment],
        allow_reentry: bool,
        counters: Callable[[Enrollment], Iterable[Counter]] | None,
    ) -> int:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._bulk_key,))
        cur.execute(
            'CREATE TEMP TABLE IF NOT EXISTS dripcore_import (ord integer, id text COLLATE "C", '
            'sequence_id text COLLATE "C", contact_id text COLLATE "C", dedupe_key text COLLATE "C", '
            "status text, enrolled_at timestamptz, next_due timestamptz, last_step_sent integer, "
            "last_step_sent_at timestamptz, exit_reason text, paused_at timestamptz, ended_at timestamptz, "
            "variables jsonb, opened jsonb, clicked jsonb, skipped jsonb, version integer) ON COMMIT DELETE ROWS"
        )
        with cur.copy(
            "COPY dripcore_import (ord, id, sequence_id, contact_id, dedupe_key, status, enrolled_at, next_due, "
            "last_step_sent, last_step_sent_at, exit_reason, paused_at, ended_at, variables, opened, clicked, "
            "skipped, version) FROM STDIN"
        ) as copy:
            for ordinal, e in enumerate(chunk):
                copy.write_row((ordinal, *enrollment_columns(e), e.version))
        try:
            rows = cur.execute(
                f"""INSERT INTO {self._s}.enrollments (id, sequence_id, contact_id, dedupe_key, status, enrolled_at,
                    next_due, last_step_sent, last_step_sent_at, exit_reason, paused_at, ended_at, variables, opened,
                    clicked, skipped, version, seq_live)
                SELECT t.id, t.sequence_id, t.contact_id, t.dedupe_key, t.status, t.enrolled_at, t.next_due,
                    t.last_step_sent, t.last_step_sent_at, t.exit_reason, t.paused_at, t.ended_at, t.variables,
                    t.opened, t.clicked, t.skipped, t.version, coalesce(s.status = 'active', false)
                FROM (SELECT DISTINCT ON (sequence_id, contact_id, dedupe_key) * FROM dripcore_import
                      ORDER BY sequence_id, contact_id, dedupe_key, ord) AS t
                LEFT JOIN {self._s}.sequences AS s ON s.id = t.sequence_id
                WHERE NOT EXISTS (SELECT 1 FROM {self._s}.enrollments AS e WHERE e.contact_id = t.contact_id
                    AND e.sequence_id = t.sequence_id AND e.dedupe_key IS NOT DISTINCT FROM t.dedupe_key
                    AND (e.status IN ('active', 'paused') OR NOT %s))
                ORDER BY t.ord
                RETURNING id, seq_live""",
                (allow_reentry,),
            ).fetchall()
        except pg_errors.UniqueViolation as exc:
            raise ConcurrencyConflict(kind="enrollment", id=f"<one of {len(chunk)}>", expected=0, actual=0) from exc
        created_ids = {row[0] for row in rows}
        live_ids = {row[0] for row in rows if row[1]}
        totals: dict[tuple[str, int, str], int] = {}
        earliest: datetime | None = None
        for e in chunk:
            if e.id not in created_ids:
                continue
            if counters is not None:
                sum_counters(counters(e), totals)
            due = e.next_step_due_at
            if e.id in live_ids and e.status is EnrollmentStatus.ACTIVE and due is not None:
                earliest = due if earliest is None else min(earliest, due)
        self._write_counters(cur, totals)
        self._notify(cur, earliest)
        return len(rows)

    def claim_due(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[Enrollment | BrokenRecord]:
        """Lease the earliest due enrollments of active sequences, with no PENDING message, to ``owner``
        (``FOR UPDATE SKIP LOCKED``: concurrent claimers skip each other's rows)."""
        now, limit, lease, owner = check_claim(now, limit, lease, owner)
        at = to_utc(now, "now")
        until = at + lease
        sql = (
            f"WITH due AS (SELECT ctid FROM {self._s}.enrollments AS d WHERE d.status = 'active' AND d.seq_live "
            "AND d.next_due <= %(at)s AND (d.lease_until IS NULL OR d.lease_until <= %(at)s) "
            f"AND NOT EXISTS (SELECT 1 FROM {self._s}.outbox AS o WHERE o.enrollment_id = d.id "
            "AND o.status = 'pending') ORDER BY d.next_due, d.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            f"UPDATE {self._s}.enrollments AS e SET lease_owner = %(owner)s, lease_until = %(until)s "
            f"WHERE e.ctid = ANY(ARRAY(SELECT ctid FROM due)) RETURNING {_qualified(ENROLLMENT_COLUMNS, 'e')}"
        )
        params = {"at": at, "until": until, "limit": max(limit, 0), "owner": owner}
        rows = self._run(
            "claim due enrollments", lambda cur: cur.execute(sql, params).fetchall(), replay_safe=True, single=True
        )
        rows.sort(key=_due_order)
        return self._claimed_records(rows)

    def release(self, enrollment_ids: Iterable[str], *, owner: str, until: datetime | None = None) -> None:
        """End ``owner``'s leases (or, with ``until``, keep them until then)."""
        enrollment_ids = check_ids(enrollment_ids, "enrollment_ids")
        owner, until = check_id(owner, "owner"), check_opt_instant(until, "until")
        ids = sorted(set(enrollment_ids))
        if not ids:
            return
        end = None if until is None else to_utc(until, "until")
        owner_after = None if end is None else owner
        sql = (
            f"UPDATE {self._s}.enrollments SET lease_owner = %s, lease_until = %s WHERE id IN ("
            f"SELECT id FROM {self._s}.enrollments WHERE id = ANY(%s::text[]) AND lease_owner = %s ORDER BY id "
            "FOR UPDATE)"
        )
        self._run(
            "release leases",
            lambda cur: cur.execute(sql, (owner_after, end, text_array(ids), owner)),
            replay_safe=True,
            single=True,
        )

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        """Apply every change whose version still matches, in one transaction; return the refused ids.

        Changes PostgreSQL can't hold (NUL in text or JSON, a lone surrogate, an integer
        beyond 64 bits) fail the whole transaction with
        :class:`~dripcore.errors.RecordRejected` naming them."""
        check_records(changes, Change, "changes")
        owner = check_opt_id(owner, "owner")
        if not changes:
            return []
        ids = sorted({c.enrollment.id for c in changes})

        def work(cur: psycopg.Cursor[Any]) -> list[str]:
            stored = {
                row[0]: [row[1], row[2], row[3], row[4]]
                for row in cur.execute(
                    f"SELECT id, version, lease_owner, lease_until, status FROM {self._s}.enrollments "
                    "WHERE id = ANY(%s::text[]) ORDER BY id FOR UPDATE",
                    (text_array(ids),),
                )
            }
            refused: list[str] = []
            final: dict[str, Enrollment] = {}
            messages: dict[str, list[Any]] = {}
            totals: dict[tuple[str, int, str], int] = {}
            wake_at: datetime | None = None
            for change in changes:
                new = change.enrollment
                row = stored.get(new.id)
                if row is None or row[0] != new.version:
                    refused.append(new.id)
                    continue
                lease_owner, lease_until, was = row[1], row[2], row[3]
                row[0], row[1], row[2], row[3] = new.version + 1, None, None, new.status.value
                final[new.id] = new
                if was == "paused" and new.status is EnrollmentStatus.ACTIVE:
                    wake_at = _earliest(wake_at, datetime.now(UTC))  # a retry the pause held may go now
                held = owner is not None and lease_owner == owner
                waiting = False
                for m in change.outbox:
                    if m.key in messages:
                        continue
                    pending = m.status is OutboxStatus.PENDING
                    leased = held and pending
                    messages[m.key] = message_doc(m, owner if leased else None, lease_until if leased else None)
                    waiting = waiting or pending
                    if pending and not leased and m.next_attempt_at is not None:
                        wake_at = _earliest(wake_at, m.next_attempt_at)
                # An enrollment waiting for its message is announced when the message settles.
                if new.status is EnrollmentStatus.ACTIVE and not waiting:
                    wake_at = _earliest(wake_at, new.next_step_due_at)
                sum_counters(change.counters, totals)
            if final:
                rows = [enrollment_doc(e, e.version + 1) for e in final.values()]
                cur.execute(_UPDATE_ENROLLMENTS.format(s=self._s), (dumps(rows),))
            if messages:
                cur.execute(_INSERT_MESSAGES.format(s=self._s), (dumps(list(messages.values())),))
            self._write_counters(cur, totals)
            self._notify(cur, wake_at)
            return refused

        # Replaying a commit whose COMMIT was lost is safe: the version check refuses it.
        try:
            return self._run("commit changes", work, replay_safe=True)
        except (UnicodeError, OverflowError, ValueError, PostgresStoreError) as exc:
            if isinstance(exc, PostgresStoreError) and not is_data_error(exc):
                raise
            raise rejected_changes(changes, exc) from exc

    def next_due_at(self) -> datetime | None:
        """When :meth:`claim_due` could next return something: the earliest due time of an
        ACTIVE enrollment of an ACTIVE sequence with no PENDING message, or its lease's end
        if that is later."""
        base = (
            f"SELECT next_due, lease_until, id FROM {self._s}.enrollments AS d WHERE d.status = 'active' "
            f"AND d.seq_live AND NOT EXISTS (SELECT 1 FROM {self._s}.outbox AS o WHERE o.enrollment_id = d.id "
            "AND o.status = 'pending')"
        )
        return self._run(
            "find the next due time",
            lambda cur: _earliest_claimable(cur, base, "next_due, id"),
            replay_safe=True,
            single=True,
        )

    def next_due_for(self, sequence_id: str) -> datetime | None:
        """The earliest due time of the sequence's ACTIVE enrollments (whatever the sequence's status),
        for operators' overviews; reads that sequence's rows."""
        sequence_id = check_id(sequence_id, "sequence_id")
        sql = f"SELECT min(next_due) FROM {self._s}.enrollments WHERE sequence_id = %s AND status = 'active'"
        return self._run(  # type: ignore[no-any-return]
            "find a sequence's next due time",
            lambda cur: _one(cur.execute(sql, (sequence_id,))),
            replay_safe=True,
            single=True,
        )

    def count_due(self, now: datetime) -> int:
        """How many ACTIVE enrollments of ACTIVE sequences are due at ``now``, leased or not."""
        now = check_instant(now, "now")
        at = to_utc(now, "now")
        sql = f"SELECT count(*) FROM {self._s}.enrollments WHERE status = 'active' AND seq_live AND next_due <= %s"
        return self._run(
            "count due enrollments", lambda cur: int(_one(cur.execute(sql, (at,)))), replay_safe=True, single=True
        )

    # ------------------------------------------------------------------ outbox

    def claim_messages(self, now: datetime, *, limit: int, lease: timedelta, owner: str) -> list[OutboxMessage]:
        """Lease the oldest pending messages whose next attempt is due to ``owner`` (``SKIP LOCKED``),
        but none a pause holds (an enrollment PAUSED, or ACTIVE in a sequence that is not ACTIVE)."""
        now, limit, lease, owner = check_claim(now, limit, lease, owner)
        at = to_utc(now, "now")
        sql = (
            f"WITH ready AS (SELECT ctid FROM {self._s}.outbox AS m WHERE status = 'pending' "
            "AND next_attempt_at <= %(at)s AND (lease_until IS NULL OR lease_until <= %(at)s) "
            f"AND {_NOT_HELD.format(s=self._s)} ORDER BY next_attempt_at, key LIMIT %(limit)s "
            f"FOR UPDATE OF m SKIP LOCKED) UPDATE {self._s}.outbox AS o SET lease_owner = %(owner)s, "
            f"lease_until = %(until)s WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM ready)) "
            f"RETURNING {_qualified(OUTBOX_COLUMNS, 'o')}"
        )
        params = {"at": at, "until": at + lease, "limit": max(limit, 0), "owner": owner}
        rows = self._run(
            "claim outbox messages", lambda cur: cur.execute(sql, params).fetchall(), replay_safe=True, single=True
        )
        rows.sort(key=lambda r: (r[7], r[0]))
        return self._readable_messages(rows)

    def settle(self, deliveries: Seq[Delivery], *, owner: str | None = None) -> None:
        """Record delivery outcomes in one transaction; a finished message is left as it is.
        Deliveries PostgreSQL can't hold (NUL in text, a lone surrogate) fail it with
        :class:`~dripcore.errors.RecordRejected` naming them."""
        check_records(deliveries, Delivery, "deliveries")
        owner = check_opt_id(owner, "owner")
        if not deliveries:
            return
        try:
            self._settle(deliveries)
        except (UnicodeError, OverflowError, ValueError, PostgresStoreError) as exc:
            if isinstance(exc, PostgresStoreError) and not is_data_error(exc):
                raise
            raise rejected_deliveries(deliveries, exc) from exc

    def _settle(self, deliveries: Seq[Delivery]) -> None:
        keys = sorted({d.key for d in deliveries})
        if len(keys) == len(deliveries):
            self._settle_once(deliveries)
            return

        def work(cur: psycopg.Cursor[Any]) -> None:
            attempts = dict(
                cur.execute(
                    f"SELECT key, attempts FROM {self._s}.outbox WHERE key = ANY(%s::text[]) "
                    "AND status = 'pending' ORDER BY key FOR UPDATE",
                    (text_array(keys),),
                ).fetchall()
            )
            final: dict[str, list[Any]] = {}
            totals: dict[tuple[str, int, str], int] = {}
            wake_at: datetime | None = None
            for d in deliveries:
                if d.key not in attempts:
                    continue  # unknown, or already delivered or given up on
                finished = d.status is not OutboxStatus.PENDING
                attempts[d.key] += 1
                next_attempt = None if finished else d.next_attempt_at
                final[d.key] = [
                    d.key, d.status.value, attempts[d.key], iso(next_attempt), d.error,
                    to_utc(d.at, "delivery.at").isoformat() if finished else None, d.provider_id,
                ]  # fmt: skip
                if finished:
                    del attempts[d.key]
                elif next_attempt is not None:
                    wake_at = _earliest(wake_at, next_attempt)
                sum_counters(d.counters, totals)
            if final:
                unblocked = _one(cur.execute(_SETTLE.format(s=self._s), (dumps(list(final.values())),)))
                wake_at = _earliest(wake_at, unblocked)
            self._write_counters(cur, totals)
            self._notify(cur, wake_at)

        # Replaying a settle is a no-op: finished messages are left as they are.
        self._run("settle deliveries", work, replay_safe=True)

    def _settle_once(self, deliveries: Seq[Delivery]) -> None:
        """:meth:`settle` when each key comes once: one statement settles what is still pending."""
        ordered = sorted(deliveries, key=lambda d: d.key)  # lock order
        rows = dumps(
            [
                [
                    d.key,
                    d.status.value,
                    None if d.status is not OutboxStatus.PENDING else iso(d.next_attempt_at),
                    d.error,
                    to_utc(d.at, "delivery.at").isoformat() if d.status is not OutboxStatus.PENDING else None,
                    d.provider_id,
                ]
                for d in ordered
            ]
        )

        def work(cur: psycopg.Cursor[Any]) -> None:
            row = cur.execute(_SETTLE_ONCE.format(s=self._s), (rows,)).fetchone()
            settled = set(row[0] or ()) if row else set()
            wake_at: datetime | None = row[1] if row else None
            totals: dict[tuple[str, int, str], int] = {}
            for d in ordered:
                if d.key in settled:
                    sum_counters(d.counters, totals)
                    if d.status is OutboxStatus.PENDING:
                        wake_at = _earliest(wake_at, d.next_attempt_at)
            self._write_counters(cur, totals)
            self._notify(cur, wake_at)

        self._run("settle deliveries", work, replay_safe=True)

    def requeue_message(self, message: OutboxMessage) -> bool:
        """Replace a FAILED message with ``message`` (PENDING), in one transaction."""
        check_record(message, OutboxMessage, "message")
        if message.status is not OutboxStatus.PENDING:
            raise InvalidArgument("message.status", message.status.value, "a requeued message is pending")

        def work(cur: psycopg.Cursor[Any]) -> bool:
            cur.execute(f"DELETE FROM {self._s}.outbox WHERE key = %s AND status = 'failed'", (message.key,))
            if not cur.rowcount:
                return False
            cur.execute(_INSERT_MESSAGES.format(s=self._s), (dumps([message_doc(message, None, None)]),))
            self._notify(cur, message.next_attempt_at)
            return True

        return self._run("requeue a message", work, replay_safe=False)

    def count_messages(self, contact_id: str, since: datetime, until: datetime) -> int:
        """Emails queued for the contact (PENDING or DELIVERED) with ``since <= created_at < until``."""
        contact_id = check_id(contact_id, "contact_id")
        since, until = check_instant(since, "since"), check_instant(until, "until")
        start, end = to_utc(since, "since"), to_utc(until, "until")
        sql = (
            f"SELECT count(*) FROM {self._s}.outbox WHERE contact_id = %s AND created_at >= %s AND created_at < %s "
            "AND status <> 'failed'"
        )
        return self._run(
            "count messages",
            lambda cur: int(_one(cur.execute(sql, (contact_id, start, end)))),
            replay_safe=True,
            single=True,
        )

    def next_message_at(self) -> datetime | None:
        """The earliest next attempt of a pending message no pause holds (or its lease's end, if later)."""
        base = (
            f"SELECT next_attempt_at, lease_until, key FROM {self._s}.outbox AS m WHERE status = 'pending' "
            f"AND next_attempt_at IS NOT NULL AND {_NOT_HELD.format(s=self._s)}"
        )
        return self._run(
            "find the next message time",
            lambda cur: _earliest_claimable(cur, base, "next_attempt_at, key"),
            replay_safe=True,
            single=True,
        )

    # ------------------------------------------------------------------ counters

    def _write_counters(self, cur: psycopg.Cursor[Any], totals: Mapping[tuple[str, int, str], int]) -> None:
        rows = sorted((*k, v) for k, v in totals.items() if v)
        if not rows:
            return
        cur.execute(
            f"INSERT INTO {self._s}.counters (sequence_id, position, name, shard, value) "
            "SELECT r->>0, (r->>1)::int, r->>2, %s, (r->>3)::bigint FROM jsonb_array_elements(%s::jsonb) AS r "
            "ON CONFLICT (sequence_id, position, name, shard) DO UPDATE SET value = counters.value + excluded.value",
            (random.randrange(_COUNTER_SHARDS), dumps(rows)),
        )

    def counters(self, sequence_id: str) -> Mapping[tuple[int, str], int]:
        """Every non-zero counter of a sequence (its shard rows summed)."""
        sequence_id = check_id(sequence_id, "sequence_id")
        sql = (
            f"SELECT position, name, sum(value) FROM {self._s}.counters WHERE sequence_id = %s "
            "GROUP BY position, name HAVING sum(value) <> 0"
        )
        rows = self._run(
            "read counters", lambda cur: cur.execute(sql, (sequence_id,)).fetchall(), replay_safe=True, single=True
        )
        return {(position, name): int(value) for position, name, value in rows}


# --------------------------------------------------------------------------- statements and helpers

# A pause holds a pending message (alias ``m``): its enrollment is PAUSED, or ACTIVE in a
# sequence that is not (seq_live, as claims read it). Messages of finished or deleted
# enrollments are not held: the engine takes them to drop them unsent.
_NOT_HELD = (
    "NOT EXISTS (SELECT 1 FROM {s}.enrollments AS e WHERE e.id = m.enrollment_id "
    "AND (e.status = 'paused' OR (e.status = 'active' AND NOT e.seq_live)))"
)

_SET_ENROLLMENT = (
    "sequence_id = r->>1, contact_id = r->>2, dedupe_key = r->>3, status = r->>4, "
    "enrolled_at = (r->>5)::timestamptz, next_due = (r->>6)::timestamptz, last_step_sent = (r->>7)::int, "
    "last_step_sent_at = (r->>8)::timestamptz, exit_reason = r->>9, paused_at = (r->>10)::timestamptz, "
    "ended_at = (r->>11)::timestamptz, variables = nullif(r->12, 'null'), opened = nullif(r->13, 'null'), "
    "clicked = nullif(r->14, 'null'), skipped = nullif(r->15, 'null'), version = (r->>16)::int, "
    "lease_owner = NULL, lease_until = NULL, seq_live = CASE WHEN r->>1 = e.sequence_id THEN e.seq_live ELSE "
    "coalesce((SELECT s.status = 'active' FROM {s}.sequences AS s WHERE s.id = r->>1), false) END"
)

_UPDATE_ENROLLMENTS = (
    f"UPDATE {{s}}.enrollments AS e SET {_SET_ENROLLMENT} FROM jsonb_array_elements(%s::jsonb) AS r WHERE e.id = r->>0"
)

_INSERT_MESSAGES = (
    "INSERT INTO {s}.outbox (key, enrollment_id, sequence_id, contact_id, position, status, created_at, "
    "next_attempt_at, attempts, last_error, settled_at, provider_id, email, lease_owner, lease_until) "
    "SELECT r->>0, r->>1, r->>2, r->>3, (r->>4)::int, r->>5, (r->>6)::timestamptz, (r->>7)::timestamptz, "
    "(r->>8)::int, r->>9, (r->>10)::timestamptz, r->>11, nullif(r->12, 'null'), r->>13, (r->>14)::timestamptz "
    "FROM jsonb_array_elements(%s::jsonb) AS r ON CONFLICT (key) DO NOTHING"
)

# The usual settle (each message once): finish what is still pending; return the keys
# settled and when the enrollments it unblocks are due (to wake idle workers).
_SETTLE_ONCE = (
    "WITH settled AS (UPDATE {s}.outbox AS o SET status = r->>1, attempts = o.attempts + 1, "
    "next_attempt_at = (r->>2)::timestamptz, last_error = r->>3, settled_at = (r->>4)::timestamptz, "
    "provider_id = r->>5, lease_owner = NULL, lease_until = NULL FROM jsonb_array_elements(%s::jsonb) AS r "
    "WHERE o.key = r->>0 AND o.status = 'pending' RETURNING o.key, o.enrollment_id, o.status) "
    "SELECT (SELECT array_agg(key) FROM settled), (SELECT min(e.next_due) FROM {s}.enrollments AS e "
    "WHERE e.id IN (SELECT enrollment_id FROM settled WHERE status <> 'pending') AND e.status = 'active' "
    "AND e.seq_live)"
)

# Settle a batch (one key may come several times; attempts are computed by the caller).
_SETTLE = (
    "WITH settled AS (UPDATE {s}.outbox AS o SET status = r->>1, attempts = (r->>2)::int, "
    "next_attempt_at = (r->>3)::timestamptz, last_error = r->>4, settled_at = (r->>5)::timestamptz, "
    "provider_id = r->>6, lease_owner = NULL, lease_until = NULL FROM jsonb_array_elements(%s::jsonb) AS r "
    "WHERE o.key = r->>0 RETURNING o.enrollment_id, o.status) "
    "SELECT min(e.next_due) FROM {s}.enrollments AS e WHERE e.id IN (SELECT enrollment_id FROM settled "
    "WHERE status <> 'pending') AND e.status = 'active' AND e.seq_live"
)


def _qualified(columns: str, alias: str) -> str:
    """``"a, b::text"`` as ``"x.a, x.b::text"``."""
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))


def _one(cur: psycopg.Cursor[Any]) -> Any:
    row = cur.fetchone()
    return None if row is None else row[0]


def _earliest(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate < current else current


def _due_order(row: Seq[Any]) -> tuple[datetime, str]:
    due = row[5]
    return (due if isinstance(due, datetime) else EPOCH, str(row[0]))


def _seconds_until(payload: str) -> float:
    """Seconds from now until the instant a notification carries (0 for an unreadable payload)."""
    try:
        at = int(payload)
    except ValueError:
        return 0.0
    return at / 1_000_000 - time.time()


def _earliest_claimable(cur: psycopg.Cursor[Any], base: str, order: str) -> datetime | None:
    """The least ``max(time, lease_until)`` over the rows of ``base``, read in ``time`` order.

    Reading stops at the first row whose time is not earlier than the best so
    far, so the cost is the number of leased rows at the front, not the table.
    """
    best: datetime | None = None
    last: tuple[Any, Any] | None = None
    page = 256
    while True:
        if last is None:
            rows = cur.execute(f"{base} ORDER BY {order} LIMIT %s", (page,)).fetchall()
        else:
            rows = cur.execute(f"{base} AND ({order}) > (%s, %s) ORDER BY {order} LIMIT %s", (*last, page)).fetchall()
        for at, until, key in rows:
            if best is not None and at >= best:
                return best
            candidate = at if until is None or until < at else until
            if best is None or candidate < best:
                best = candidate
            last = (at, key)
        if len(rows) < page:
            return best
