"""PostgresStore: a :class:`~dripcore.ports.Store` on PostgreSQL, for many workers on many machines.

When one machine is not enough, every worker process, on any number of
machines, opens a store on the same database and runs :meth:`Drip.tick
<dripcore.engine.Drip.tick>` (or :meth:`~dripcore.engine.Drip.run`)::

    from dripcore import Drip
    from dripcore.adapters.postgres import PostgresStore

    store = PostgresStore("postgresql://drip@db.internal/campaigns")  # or PostgresStore(pool)
    drip = Drip(store=store, sender=..., contacts=...)

Install it with ``pip install 'dripcore[postgres]'`` (psycopg 3 and psycopg-pool).

Which store when
----------------

:class:`~dripcore.adapters.sqlite.SQLiteStore` for one machine (no server to
run; several processes may share its file); :class:`PostgresStore` when workers
run on several machines, or the campaign database must be the host's existing,
backed-up, replicated PostgreSQL. Both pass the same storage contract. This
store is synchronous, like the engine: in an asyncio application run the
engine in a worker thread (``asyncio.to_thread(drip.tick)``) rather than on
the event loop.

How it keeps its promises
-------------------------

- **Claims never overlap.** :meth:`PostgresStore.claim_due` picks the earliest
  due rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` and leases them (owner and
  lease end) in the same statement: concurrent claimers skip each other's rows
  instead of waiting, and a lease that expires (a worker was killed) makes the
  rows claimable again by anyone.
- **Atomic batches.** Every write method is one transaction; states, outbox
  messages and counters of a batch commit together or not at all. Rows are
  locked in id order so concurrent batches do not deadlock (a deadlock or
  serialization failure that still happens is retried).
- **O(due), not O(total).** A partial index holds only ACTIVE enrollments of
  ACTIVE sequences, in due order; pending outbox messages have their own. A
  claim, :meth:`~PostgresStore.count_due` and :meth:`~PostgresStore.next_due_at`
  read the due rows only.
- **Idle workers wake on work.** Writes that make work due soon (within
  ``notify_within``) send a ``NOTIFY`` on the store's channel, carrying the due
  instant; :meth:`PostgresStore.wait_for_work` blocks on ``LISTEN`` until one
  arrives that is due before its timeout. A worker loop of its own can use it
  between ticks::

      while not stopping:
          report = drip.tick()
          if not report.busy:
              wake_at = drip.next_wake_at()
              wait = 30.0 if wake_at is None else (wake_at - datetime.now(UTC)).total_seconds()
              store.wait_for_work(min(max(wait, 0.0), 30.0))
- **A pause holds retries.** A pending message whose enrollment is PAUSED, or
  ACTIVE in a sequence that is not, is not claimed until both are active again
  (resuming wakes listeners).
- **Counters do not serialise workers.** Each counter is split over a few
  shard rows, summed when read, so concurrent commits rarely touch the same row.
- **Bulk and housekeeping.** :meth:`~PostgresStore.add_enrollments` imports
  through ``COPY`` with :meth:`~PostgresStore.add_enrollment`'s rules;
  :meth:`~PostgresStore.prune_messages` deletes old settled outbox rows.
- **Versioned schema.** Tables live in their own PostgreSQL schema (``dripcore``
  by default); ``<schema>.dripcore_migrations`` records each migration applied.
  An older schema is upgraded when a store opens it (under an advisory lock, so
  concurrent starts migrate once; pass ``migrate=False`` to refuse instead:
  :class:`SchemaOutdated`); a newer one is refused with :class:`SchemaTooNew`.

Errors and retries
------------------

Every failure is a :class:`PostgresStoreError` (a
:class:`~dripcore.errors.StoreError`) naming the server (never the password),
the schema and the operation: :class:`DatabaseUnavailable`,
:class:`AuthenticationFailed`, :class:`ConnectionLost`,
:class:`StatementTimeout`, :class:`SchemaTooNew`, :class:`SchemaOutdated`,
:class:`NotADripcoreSchema`, :class:`CorruptRecord`.

A dropped connection, a server restart, a deadlock or a serialization failure
is retried on a fresh connection for up to ``retry_for`` seconds when that is
safe: always if the failure came before the transaction's ``COMMIT`` (the
server rolled it back), and also during the ``COMMIT`` for operations that may
safely run twice (reads, claims, :meth:`~PostgresStore.release`,
:meth:`~PostgresStore.settle`, and :meth:`~PostgresStore.commit`, whose
version check refuses a replay). Otherwise :class:`ConnectionLost` says the
outcome is unknown. A statement timeout is not retried. Whatever happens, a
batch is never half-applied.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta
from typing import Any, TypeVar

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dripcore.adapters.postgres needs psycopg 3 and psycopg-pool: pip install 'dripcore[postgres]'"
    ) from exc

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
from ..model import UTC, Enrollment, EnrollmentStatus, SenderIdentity, Sequence, SequenceStatus, to_utc
from ..ports import BrokenRecord, Change, Counter, Delivery, Email, OutboxMessage, OutboxStatus, Store
from ..serialization import make_converter

# Small codec helpers shared with the SQLite store: JSON text, counter sums, error text.
from ._common import describe, dumps, rejected_changes, rejected_deliveries, sum_counters

__all__ = [
    "AuthenticationFailed",
    "ConnectionLost",
    "CorruptRecord",
    "DatabaseUnavailable",
    "NotADripcoreSchema",
    "PostgresStore",
    "PostgresStoreError",
    "SCHEMA_VERSION",
    "SchemaOutdated",
    "SchemaTooNew",
    "StatementTimeout",
]

log = logging.getLogger("dripcore.postgres")

_T = TypeVar("_T")
Pool = ConnectionPool[psycopg.Connection[Any]]


# --------------------------------------------------------------------------- errors


class PostgresStoreError(StoreError):
    """A :class:`PostgresStore` failure; ``server`` names the database (never the password)."""

    def __init__(self, server: str, message: str) -> None:
        self.server = server
        super().__init__(f"{server}: {message}")


class DatabaseUnavailable(PostgresStoreError):
    """The server can't be reached (down, wrong host or port, a firewall) or refuses connections."""


class AuthenticationFailed(PostgresStoreError):
    """The server rejected the credentials (wrong user or password, no ``pg_hba.conf`` entry)."""


class ConnectionLost(PostgresStoreError):
    """The connection dropped mid-operation and could not be retried safely.

    ``outcome_unknown`` is True when it dropped during ``COMMIT``: the
    transaction may or may not have been applied (all of it, or none of it).
    """

    def __init__(self, server: str, message: str, *, outcome_unknown: bool) -> None:
        self.outcome_unknown = outcome_unknown
        super().__init__(server, message)


class StatementTimeout(PostgresStoreError):
    """A statement ran (or waited for a lock) longer than the server's ``statement_timeout`` or
    ``lock_timeout``; its transaction was rolled back."""


class SchemaTooNew(PostgresStoreError):
    """The schema was migrated by a newer dripcore whose version this code does not know."""

    def __init__(self, server: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            server,
            f"schema version {found} was written by a newer dripcore; this version knows schema versions up to "
            f"{supported}. Upgrade dripcore on this worker (the database is left untouched)",
        )


class SchemaOutdated(PostgresStoreError):
    """The schema is older than this code and the store was opened with ``migrate=False``."""

    def __init__(self, server: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            server,
            f"schema version {found} is older than this dripcore's {supported} and migrate=False; "
            "open one store with migrate=True (or run PostgresStore(..., migrate=True).close()) to upgrade it",
        )


class NotADripcoreSchema(PostgresStoreError):
    """The PostgreSQL schema holds tables that are not dripcore's; nothing is written into it."""


class CorruptRecord(PostgresStoreError, UnreadableRecord):
    """A stored row can't be read back (an unknown enum value, JSON of the wrong shape)."""

    def __init__(self, server: str, table: str, id: str, error: str) -> None:
        self.table = table
        self.id = id
        self.error = error
        super().__init__(server, f"{table} row {id!r} is corrupt and can't be read: {error}")


# --------------------------------------------------------------------------- schema

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
)

#: The schema version this code writes; older schemas are migrated up to it.
SCHEMA_VERSION = _MIGRATIONS[-1][0]

_COUNTER_SHARDS = 16
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_RETRYABLE_STATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})
_TIMEOUT_STATES = frozenset({"57014", "55P03"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EMPTY: frozenset[Any] = frozenset()


def _lock_key(*parts: str | None) -> int:
    """A signed 64-bit advisory-lock key for ``parts`` (collisions only serialise unrelated work)."""
    text = "\0".join("\1" if p is None else p for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


# --------------------------------------------------------------------------- encoding

_ENROLLMENT_COLUMNS = (
    "id, sequence_id, contact_id, status, enrolled_at, next_due, last_step_sent, last_step_sent_at, "
    "exit_reason, paused_at, ended_at, variables::text, opened::text, clicked::text, skipped::text, dedupe_key, version"
)
_OUTBOX_COLUMNS = (
    "key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts, "
    "last_error, settled_at, provider_id, email::text"
)


def _enrollment_from_row(row: Seq[Any]) -> Enrollment:
    (
        id_, sequence_id, contact_id, status, enrolled_at, due, last, last_at,
        reason, paused_at, ended_at, variables, opened, clicked, skipped, key, version,
    ) = row  # fmt: skip
    return Enrollment(
        id=id_,
        sequence_id=sequence_id,
        contact_id=contact_id,
        status=status,
        enrolled_at=enrolled_at,
        next_step_due_at=due,
        last_step_sent=last,
        last_step_sent_at=last_at,
        exit_reason=reason,
        paused_at=paused_at,
        ended_at=ended_at,
        variables=json.loads(variables) if variables else {},
        opened=json.loads(opened) if opened else _EMPTY,
        clicked=json.loads(clicked) if clicked else _EMPTY,
        skipped=json.loads(skipped) if skipped else _EMPTY,
        key=key,
        version=version,
    )


def _enrollment_columns(e: Enrollment) -> tuple[Any, ...]:
    """Every stored column of ``e`` but the version, as statement parameters (JSON columns as text)."""
    return (
        e.id,
        e.sequence_id,
        e.contact_id,
        e.key,
        e.status.value,
        e.enrolled_at,
        e.next_step_due_at,
        e.last_step_sent,
        e.last_step_sent_at,
        None if e.exit_reason is None else e.exit_reason.value,
        e.paused_at,
        e.ended_at,
        dumps(dict(e.variables)) if e.variables else None,
        dumps(sorted(e.opened)) if e.opened else None,
        dumps(sorted(e.clicked)) if e.clicked else None,
        dumps(sorted(e.skipped)) if e.skipped else None,
    )


# A batch travels to the server as one JSON document (an array of rows, each an
# array of columns) that the statement unpacks with jsonb_array_elements: one
# C-speed json.dumps instead of psycopg's per-element array dumping, which
# dominated a commit's client time.


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _enrollment_doc(e: Enrollment, version: int) -> list[Any]:
    """``e`` as a JSON row for ``_UPDATE_ENROLLMENTS``."""
    return [
        e.id, e.sequence_id, e.contact_id, e.key, e.status.value, e.enrolled_at.isoformat(),
        _iso(e.next_step_due_at), e.last_step_sent, _iso(e.last_step_sent_at),
        None if e.exit_reason is None else e.exit_reason.value, _iso(e.paused_at), _iso(e.ended_at),
        e.variables or None, sorted(e.opened) if e.opened else None, sorted(e.clicked) if e.clicked else None,
        sorted(e.skipped) if e.skipped else None, version,
    ]  # fmt: skip


def _text_array(values: Iterable[str]) -> str:
    """A PostgreSQL ``text[]`` literal (psycopg's list dumping is slow for long lists)."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _email_doc(m: OutboxMessage) -> dict[str, Any] | None:
    email = m.email
    if email is None:
        return None
    document: dict[str, Any] = {"to": email.to, "subject": email.subject}
    if email.html is not None:
        document["html"] = email.html
    if email.text is not None:
        document["text"] = email.text
    if email.sender is not None:
        sender = email.sender
        document["sender"] = {
            "from_email": sender.from_email,
            "from_name": sender.from_name,
            "reply_to": sender.reply_to,
        }
    if email.headers:
        document["headers"] = dict(email.headers)
    identity = [email.idempotency_key, email.enrollment_id, email.sequence_id, email.contact_id, email.position]
    if identity != [m.key, m.enrollment_id, m.sequence_id, m.contact_id, m.position]:
        document["identity"] = identity
    return document


def _message_doc(m: OutboxMessage, lease_owner: str | None, lease_until: datetime | None) -> list[Any]:
    """``m`` as a JSON row for ``_INSERT_MESSAGES``."""
    return [
        m.key, m.enrollment_id, m.sequence_id, m.contact_id, m.position, m.status.value, m.created_at.isoformat(),
        _iso(m.next_attempt_at), m.attempts, m.last_error, _iso(m.settled_at), m.provider_id, _email_doc(m),
        lease_owner, _iso(lease_until),
    ]  # fmt: skip


def _message_from_row(row: Seq[Any]) -> OutboxMessage:
    (
        key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts,
        last_error, settled_at, provider_id, email_text,
    ) = row  # fmt: skip
    email = None
    if email_text is not None:
        doc = json.loads(email_text)
        ident = doc.get("identity") or (key, enrollment_id, sequence_id, contact_id, position)
        sender = doc.get("sender")
        email = Email(
            idempotency_key=ident[0],
            enrollment_id=ident[1],
            sequence_id=ident[2],
            contact_id=ident[3],
            position=ident[4],
            to=doc["to"],
            subject=doc["subject"],
            html=doc.get("html"),
            text=doc.get("text"),
            sender=None if sender is None else SenderIdentity(**sender),
            headers=doc.get("headers") or {},
        )
    return OutboxMessage(
        key=key,
        enrollment_id=enrollment_id,
        sequence_id=sequence_id,
        contact_id=contact_id,
        position=position,
        email=email,
        status=OutboxStatus(status),
        created_at=created_at,
        next_attempt_at=next_attempt_at,
        attempts=attempts,
        last_error=last_error,
        settled_at=settled_at,
        provider_id=provider_id,
    )


def _server_name(conninfo: str) -> str:
    """``postgresql://user@host:port/dbname`` from a DSN, without the password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "postgresql://<unparseable DSN>"
    host = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    user = str(params.get("user") or os.environ.get("PGUSER") or "")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user or "")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"


def _is_data_error(exc: BaseException) -> bool:
    """Whether a store error comes from the data written (SQLSTATE class 22: NUL in text,
    an untranslatable character, a number out of range) rather than from the server."""
    cause = exc.__cause__
    return isinstance(cause, psycopg.Error) and (cause.sqlstate or "").startswith("22")


def _is_connection_problem(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout | pg_errors.ConnectionException | pg_errors.AdminShutdown):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _RETRYABLE_STATES
    return False


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.Error) and exc.sqlstate in _RETRYABLE_STATES:
        return True
    return _is_connection_problem(exc)


class _Outcome:
    """Where a transaction failed: before its COMMIT was sent, or during it."""

    __slots__ = ("committing",)

    def __init__(self) -> None:
        self.committing = False


# --------------------------------------------------------------------------- the store


class PostgresStore(Store):
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
        self.server = f"{_server_name(self._conninfo)} (schema {schema})"
        self._converter = make_converter()
        self._sequence_cache: dict[str, Sequence] = {}
        self._lock = threading.Lock()
        self._prepared: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._listener: psycopg.Connection[Any] | None = None
        self._closed = False
        self._pid = os.getpid()
        # Open and check (or migrate) the schema on one direct connection, so a
        # wrong DSN, password or schema fails here with a precise error.
        with self._direct_connection("open the store") as conn:
            self._check_schema(conn, migrate)
        self._pool: Pool = self._open_pool() if isinstance(target, str) else target

    def __repr__(self) -> str:
        return f"PostgresStore({self.server!r})"

    # ------------------------------------------------------------------ connections

    def _connect_kwargs(self) -> dict[str, Any]:
        """Connection parameters added to the DSN's (whose own ``options`` are kept)."""
        given = conninfo_to_dict(self._conninfo)
        options = [str(given["options"])] if given.get("options") else []
        options.append("-c TimeZone=UTC")
        if self.statement_timeout is not None:
            options.append(f"-c statement_timeout={max(1, round(self.statement_timeout * 1000))}")
        kwargs: dict[str, Any] = {"connect_timeout": max(1, round(self.connect_timeout)), "options": " ".join(options)}
        if not given.get("application_name"):
            kwargs["application_name"] = self._application_name
        return kwargs

    @contextlib.contextmanager
    def _direct_connection(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = psycopg.connect(make_conninfo(self._conninfo, **self._connect_kwargs()), autocommit=True)
        except psycopg.Error as exc:
            raise self._connect_error(exc, action) from exc
        try:
            yield conn
        except psycopg.Error as exc:
            raise self._translate(exc, action, _Outcome()) from exc
        finally:
            conn.close()

    def _open_pool(self) -> Pool:
        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.autocommit = True

        pool: Pool = ConnectionPool(
            make_conninfo(self._conninfo, **self._connect_kwargs()),
            min_size=1,
            max_size=self._max_connections,
            open=False,
            configure=configure,
            timeout=self.connect_timeout,
            name=f"dripcore-{self.schema}",
        )
        pool.open(wait=False)
        return pool

    def _current_pool(self) -> Pool:
        if self._closed:
            raise PostgresStoreError(self.server, "the store is closed")
        if os.getpid() != self._pid:
            if not self._own_pool:
                raise PostgresStoreError(
                    self.server, "this store's connection pool belongs to the parent process; open a store per process"
                )
            # The parent's connections are abandoned, never closed: closing them here
            # would end the parent's sessions.
            self._pool = self._open_pool()
            self._listener = None
            self._prepared = weakref.WeakSet()
            self._pid = os.getpid()
        return self._pool

    def _connect_error(self, exc: psycopg.Error, action: str) -> PostgresStoreError:
        text = str(exc).strip()
        lowered = text.lower()
        rejected = ("password authentication failed", "no password supplied", "no pg_hba.conf entry")
        if exc.sqlstate in ("28P01", "28000") or any(marker in lowered for marker in rejected):
            return AuthenticationFailed(
                self.server,
                f"{action}: the server rejected the credentials ({text}). Check the user and password in the "
                "DSN (or PGPASSWORD / .pgpass) and the server's pg_hba.conf",
            )
        if "does not exist" in lowered and "database" in lowered:
            return DatabaseUnavailable(self.server, f"{action}: {text}. Create the database first (createdb)")
        return DatabaseUnavailable(
            self.server,
            f"{action}: can't connect ({text}). Check that the server is running, the host and port are right, "
            "and it accepts connections from this machine",
        )

    def _translate(self, exc: BaseException, action: str, outcome: _Outcome) -> PostgresStoreError:
        """Translate a psycopg (or pool) error into the dripcore error that says what to do."""
        if isinstance(exc, PostgresStoreError):
            return exc
        if isinstance(exc, PoolTimeout):
            return DatabaseUnavailable(
                self.server,
                f"{action}: the pool gave no connection within {self.connect_timeout:g}s (all in use, or still "
                "reconnecting after an outage); raise max_connections or the pool's size",
            )
        state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
        text = str(exc).strip()
        if state in _TIMEOUT_STATES:
            what = "waited for a lock longer than lock_timeout" if state == "55P03" else "ran past statement_timeout"
            return StatementTimeout(
                self.server,
                f"{action}: a statement {what} and was cancelled ({text}); nothing of it was applied. Look for "
                "long transactions holding locks (pg_stat_activity), or raise the timeout",
            )
        if _is_connection_problem(exc):
            if outcome.committing:
                return ConnectionLost(
                    self.server,
                    f"{action}: the connection dropped during COMMIT ({text}); the transaction was applied "
                    "entirely or not at all, and which is unknown",
                    outcome_unknown=True,
                )
            return ConnectionLost(
                self.server,
                f"{action}: the connection dropped ({text}) and did not come back within {self.retry_for:g}s; "
                "the transaction was rolled back",
                outcome_unknown=False,
            )
        if state == "42P01":
            return PostgresStoreError(
                self.server, f"{action}: a dripcore table is missing ({text}); was the schema dropped?"
            )
        if state == "25006":
            return PostgresStoreError(
                self.server, f"{action}: the server is read-only ({text}); point the store at the primary"
            )
        if state == "42501":
            return PostgresStoreError(
                self.server, f"{action}: permission denied ({text}); grant the role rights on schema {self.schema}"
            )
        if state is not None and state.startswith("53"):
            return PostgresStoreError(self.server, f"{action}: the server is out of resources ({text})")
        return PostgresStoreError(self.server, f"{action} failed: {text}")

    def _diagnose_pool_timeout(self, action: str) -> PostgresStoreError | None:
        """Why the pool gave no connection: the server's error, or None if the server is reachable.

        After an outage the pool retries with exponential backoff and may still
        be waiting when the server is back; a pool the store owns is then
        replaced, so the next attempt connects at once.
        """
        try:
            psycopg.connect(make_conninfo(self._conninfo, **self._connect_kwargs())).close()
        except psycopg.Error as direct:
            return self._connect_error(direct, action)
        if self._own_pool:
            with self._lock:
                stale, self._pool = self._pool, self._open_pool()
                self._prepared = weakref.WeakSet()
            stale.close(timeout=0)
        return None

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Give a borrowed connection what the store relies on: UTC timestamps."""
        if conn in self._prepared:
            return
        if conn.info.parameter_status("TimeZone") not in ("UTC", "Etc/UTC"):
            with conn.transaction():
                conn.execute("SET TIME ZONE 'UTC'")
        self._prepared.add(conn)

    def _run(
        self, action: str, work: Callable[[psycopg.Cursor[Any]], _T], *, replay_safe: bool, single: bool = False
    ) -> _T:
        """Run ``work`` in one transaction, retrying transient failures where that is safe.

        ``replay_safe``: running the operation twice does no harm, so a failure
        during COMMIT (outcome unknown) may be retried too. ``single``: ``work``
        runs exactly one statement, which is a transaction by itself on an
        autocommit connection (no BEGIN/COMMIT round trips); it must be replay-safe.
        """
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        pool_replaced = False
        while True:
            outcome = _Outcome()
            try:
                with self._current_pool().connection() as conn:
                    self._prepare(conn)
                    if single and conn.autocommit:
                        outcome.committing = True  # the statement commits as it ends
                        with conn.cursor() as cur:
                            return work(cur)
                    with conn.transaction():
                        with conn.cursor() as cur:
                            result = work(cur)
                        outcome.committing = True
                return result
            except PoolTimeout as exc:
                # No connection at all, so nothing was sent: always safe to retry.
                diagnosis = self._diagnose_pool_timeout(action)
                if diagnosis is None and not pool_replaced:
                    pool_replaced = True  # the server is back and the pool was renewed: try again at once
                    continue
                if time.monotonic() + delay > deadline:
                    raise (diagnosis or self._translate(exc, action, outcome)) from exc
                failure: BaseException = exc
            except psycopg.Error as exc:
                can_retry = _retryable(exc) and (replay_safe or not outcome.committing)
                if not can_retry or time.monotonic() + delay > deadline:
                    raise self._translate(exc, action, outcome) from exc
                failure = exc
            log.warning("%s: %s failed (%s); retrying", self.server, action, describe(failure))
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        """Close the listener and, if the store owns it, the pool (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            forked = os.getpid() != self._pid
            listener, self._listener = self._listener, None
            if forked:
                return
            if listener is not None:
                listener.close()
            if self._own_pool:
                self._pool.close()

    # ------------------------------------------------------------------ schema

    def _check_schema(self, conn: psycopg.Connection[Any], migrate: bool) -> None:
        version = self._schema_version(conn)
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaTooNew(self.server, version, SCHEMA_VERSION)
        if not migrate:
            raise SchemaOutdated(self.server, version or 0, SCHEMA_VERSION)
        with conn.transaction():
            # Concurrent first starts migrate once: the others wait here, then find it done.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("dripcore-migrate", self.schema),))
            if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone():
                conn.execute(f"CREATE SCHEMA {self._s}")
            version = self._schema_version(conn)
            if version is not None and version > SCHEMA_VERSION:
                raise SchemaTooNew(self.server, version, SCHEMA_VERSION)
            if version is None:
                foreign = [
                    r[0]
                    for r in conn.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (self.schema,)
                    )
                ]
                if foreign:
                    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                    raise NotADripcoreSchema(
                        self.server,
                        f"schema {self.schema!r} already holds tables that are not dripcore's ({shown}) and no "
                        "dripcore_migrations table; dripcore will not write into it. Choose another schema=",
                    )
                conn.execute(
                    f"CREATE TABLE {self._s}.dripcore_migrations (version integer PRIMARY KEY, "
                    "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            for number, description, statements in _MIGRATIONS:
                if number <= (version or 0):
                    continue
                for statement in statements:
                    conn.execute(statement.replace("{s}", self._s))
                conn.execute(
                    f"INSERT INTO {self._s}.dripcore_migrations (version, description) VALUES (%s, %s)",
                    (number, description),
                )
                log.info("%s: migrated the schema to version %d (%s)", self.server, number, description)

    def _schema_version(self, conn: psycopg.Connection[Any]) -> int | None:
        """The schema's version, or None when it has no dripcore_migrations table."""
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{self._s}.dripcore_migrations",)).fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {self._s}.dripcore_migrations").fetchone()
        return int(row[0]) if row else 0

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
        cur.execute("SELECT pg_notify(%s, %s)", (self.channel, str(_micros(at))))

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

    def _listen(self) -> psycopg.Connection[Any] | None:
        with self._lock:
            if self._closed:
                return None
            self._current_pool()
            if self._listener is not None and not self._listener.closed:
                return self._listener
            try:
                conn = psycopg.connect(make_conninfo(self._conninfo, **self._connect_kwargs()), autocommit=True)
                conn.execute(f'LISTEN "{self.channel}"')
            except psycopg.Error as exc:
                log.warning("%s: can't LISTEN (%s); waiting without wake-ups", self.server, exc)
                return None
            self._listener = conn
            return conn

    def _drop_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(psycopg.Error):  # already broken; nothing more to release
                listener.close()

    # ------------------------------------------------------------------ sequences

    def _decode_sequence(self, sequence_id: str, body: str) -> Sequence:
        cached = self._sequence_cache.get(body)
        if cached is not None:
            return cached
        try:
            sequence = self._converter.structure(json.loads(body), Sequence)
        except Exception as exc:
            raise CorruptRecord(self.server, "sequences", sequence_id, describe(exc)) from exc
        if len(self._sequence_cache) >= 256:
            self._sequence_cache.clear()
        self._sequence_cache[body] = sequence
        return sequence

    def get_sequence(self, sequence_id: str) -> Sequence | None:
        """The sequence, or None; :class:`CorruptRecord` if its row can't be read."""
        sequence_id = check_id(sequence_id, "sequence_id")
        row = self._run(
            "get a sequence",
            lambda cur: cur.execute(
                f"SELECT body::text FROM {self._s}.sequences WHERE id = %s", (sequence_id,)
            ).fetchone(),
            replay_safe=True,
            single=True,
        )
        return None if row is None else self._decode_sequence(sequence_id, row[0])

    def list_sequences(self, status: SequenceStatus | None = None) -> list[Sequence]:
        """All sequences (of one status), ordered by id; unreadable rows are logged and left out."""
        status = check_opt_enum(status, SequenceStatus, "status")
        if status is None:
            sql, params = f"SELECT id, body::text FROM {self._s}.sequences ORDER BY id", ()
        else:
            sql = f"SELECT id, body::text FROM {self._s}.sequences WHERE status = %s ORDER BY id"
            params = (status.value,)  # type: ignore[assignment]
        rows = self._run(
            "list sequences", lambda cur: cur.execute(sql, params).fetchall(), replay_safe=True, single=True
        )
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

    def _decode_enrollment(self, row: Seq[Any]) -> Enrollment:
        try:
            return _enrollment_from_row(row)
        except Exception as exc:
            raise CorruptRecord(self.server, "enrollments", str(row[0]), describe(exc)) from exc

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
                (self._bulk_key, _lock_key(self.schema, e.sequence_id, e.contact_id, e.key)),
            )
            rows = cur.execute(
                f"SELECT {_ENROLLMENT_COLUMNS} FROM {self._s}.enrollments WHERE contact_id = %s "
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
                (*_enrollment_columns(e), e.version, e.sequence_id),
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
        return _lock_key("dripcore-bulk", self.schema)

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
                copy.write_row((ordinal, *_enrollment_columns(e), e.version))
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

    def get_enrollment(self, enrollment_id: str) -> Enrollment | None:
        """The enrollment, or None; :class:`CorruptRecord` if its row can't be read."""
        enrollment_id = check_id(enrollment_id, "enrollment_id")
        row = self._run(
            "get an enrollment",
            lambda cur: cur.execute(
                f"SELECT {_ENROLLMENT_COLUMNS} FROM {self._s}.enrollments WHERE id = %s", (enrollment_id,)
            ).fetchone(),
            replay_safe=True,
            single=True,
        )
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
            where.append("sequence_id = %s")
            params.append(sequence_id)
        if contact_id is not None:
            where.append("contact_id = %s")
            params.append(contact_id)
        if statuses is not None:
            values = sorted({s.value for s in statuses})
            if not values:
                return []
            where.append("status = ANY(%s::text[])")
            params.append(_text_array(values))
        if after is not None:
            where.append("id > %s")
            params.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.extend((max(limit, 0), max(offset, 0)))
        sql = f"SELECT {_ENROLLMENT_COLUMNS} FROM {self._s}.enrollments {clause} ORDER BY id LIMIT %s OFFSET %s"
        rows = self._run(
            "find enrollments", lambda cur: cur.execute(sql, params).fetchall(), replay_safe=True, single=True
        )
        found = []
        for row in rows:
            try:
                found.append(self._decode_enrollment(row))
            except CorruptRecord as exc:
                log.error("%s", exc)
        return found

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
            f"WHERE e.ctid = ANY(ARRAY(SELECT ctid FROM due)) RETURNING {_qualified(_ENROLLMENT_COLUMNS, 'e')}"
        )
        params = {"at": at, "until": until, "limit": max(limit, 0), "owner": owner}
        rows = self._run(
            "claim due enrollments", lambda cur: cur.execute(sql, params).fetchall(), replay_safe=True, single=True
        )
        rows.sort(key=_due_order)
        claimed: list[Enrollment | BrokenRecord] = []
        for row in rows:
            try:
                claimed.append(_enrollment_from_row(row))
            except Exception as exc:
                claimed.append(BrokenRecord(id=str(row[0]), error=describe(exc)))
        return claimed

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
            lambda cur: cur.execute(sql, (owner_after, end, _text_array(ids), owner)),
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
                    (_text_array(ids),),
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
                    messages[m.key] = _message_doc(m, owner if leased else None, lease_until if leased else None)
                    waiting = waiting or pending
                    if pending and not leased and m.next_attempt_at is not None:
                        wake_at = _earliest(wake_at, m.next_attempt_at)
                # An enrollment waiting for its message is announced when the message settles.
                if new.status is EnrollmentStatus.ACTIVE and not waiting:
                    wake_at = _earliest(wake_at, new.next_step_due_at)
                sum_counters(change.counters, totals)
            if final:
                rows = [_enrollment_doc(e, e.version + 1) for e in final.values()]
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
            if isinstance(exc, PostgresStoreError) and not _is_data_error(exc):
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
            f"RETURNING {_qualified(_OUTBOX_COLUMNS, 'o')}"
        )
        params = {"at": at, "until": at + lease, "limit": max(limit, 0), "owner": owner}
        rows = self._run(
            "claim outbox messages", lambda cur: cur.execute(sql, params).fetchall(), replay_safe=True, single=True
        )
        rows.sort(key=lambda r: (r[7], r[0]))
        claimed = []
        for row in rows:
            try:
                claimed.append(_message_from_row(row))
            except Exception as exc:
                log.error("%s", CorruptRecord(self.server, "outbox", str(row[0]), describe(exc)))
        return claimed

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
            if isinstance(exc, PostgresStoreError) and not _is_data_error(exc):
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
                    (_text_array(keys),),
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
                    d.key, d.status.value, attempts[d.key], _iso(next_attempt), d.error,
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
                    None if d.status is not OutboxStatus.PENDING else _iso(d.next_attempt_at),
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
            cur.execute(_INSERT_MESSAGES.format(s=self._s), (dumps([_message_doc(message, None, None)]),))
            self._notify(cur, message.next_attempt_at)
            return True

        return self._run("requeue a message", work, replay_safe=False)

    def get_message(self, key: str) -> OutboxMessage | None:
        """The outbox message with that key, or None; :class:`CorruptRecord` if its row can't be read."""
        key = check_key(key)
        row = self._run(
            "get an outbox message",
            lambda cur: cur.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM {self._s}.outbox WHERE key = %s", (key,)
            ).fetchone(),
            replay_safe=True,
            single=True,
        )
        if row is None:
            return None
        try:
            return _message_from_row(row)
        except Exception as exc:
            raise CorruptRecord(self.server, "outbox", key, describe(exc)) from exc

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
            where.append("status = %s")
            params.append(status.value)
        if enrollment_id is not None:
            where.append("enrollment_id = %s")
            params.append(enrollment_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.extend((max(limit, 0), max(offset, 0)))
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM {self._s}.outbox {clause} ORDER BY created_at, key LIMIT %s OFFSET %s"
        rows = self._run(
            "find outbox messages", lambda cur: cur.execute(sql, params).fetchall(), replay_safe=True, single=True
        )
        found = []
        for row in rows:
            try:
                found.append(_message_from_row(row))
            except Exception as exc:
                log.error("%s", CorruptRecord(self.server, "outbox", str(row[0]), describe(exc)))
        return found

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

    def prune_messages(self, settled_before: datetime, *, batch_size: int = 10_000) -> int:
        """Delete DELIVERED and FAILED outbox messages settled before ``settled_before``; return how many.

        The outbox otherwise grows by one row per email. Keep at least as much
        history as the longest frequency-cap window (``count_messages`` counts
        what is left). Deletes in batches, one transaction each.
        """
        settled_before = check_instant(settled_before, "settled_before")
        batch_size = check_count(batch_size, "batch_size", minimum=1)
        cutoff = to_utc(settled_before, "settled_before")
        sql = (
            f"DELETE FROM {self._s}.outbox WHERE key IN (SELECT key FROM {self._s}.outbox WHERE status <> 'pending' "
            "AND settled_at < %s LIMIT %s)"
        )
        total = 0
        while True:
            deleted = self._run(
                "prune outbox messages",
                lambda cur: cur.execute(sql, (cutoff, batch_size)).rowcount,
                replay_safe=True,
                single=True,
            )
            total += max(deleted, 0)
            if deleted < batch_size:
                return total

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

    def bump(self, counters: Seq[Counter]) -> None:
        """Apply counter increments in one transaction."""
        counters = check_counters(counters)
        totals: dict[tuple[str, int, str], int] = {}
        sum_counters(counters, totals)
        if any(totals.values()):
            self._run("bump counters", lambda cur: self._write_counters(cur, totals), replay_safe=False)

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
    return (due if isinstance(due, datetime) else _EPOCH, str(row[0]))


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
