"""PostgreSQL connection handling: the pool, the LISTEN connection, retries of transient
failures, and translating psycopg errors into the store's errors (never showing a password)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
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

from .._common import describe
from .errors import (
    AuthenticationFailed,
    ConnectionLost,
    DatabaseUnavailable,
    PostgresStoreError,
    StatementTimeout,
)

__all__ = ["Connections", "Outcome", "Pool", "is_data_error", "lock_key", "server_name"]

log = logging.getLogger("dripcore.postgres")

_T = TypeVar("_T")
#: The connection pool a store owns or borrows.
Pool = ConnectionPool[psycopg.Connection[Any]]

_RETRYABLE_STATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})
_TIMEOUT_STATES = frozenset({"57014", "55P03"})


def lock_key(*parts: str | None) -> int:
    """A signed 64-bit advisory-lock key for ``parts`` (collisions only serialise unrelated work)."""
    text = "\0".join("\1" if p is None else p for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def server_name(conninfo: str) -> str:
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


def is_data_error(exc: BaseException) -> bool:
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


class Outcome:
    """Where a transaction failed: before its COMMIT was sent, or during it."""

    __slots__ = ("committing",)

    def __init__(self) -> None:
        self.committing = False


class Connections:
    """The connection handling of :class:`~dripcore.adapters.postgres.PostgresStore`, as a base class:
    opening its pool (or borrowing the host's), running one transaction with retries
    (:meth:`_run`), the LISTEN connection, closing, and the errors that say what to do.

    The store sets the attributes declared here in its ``__init__``.
    """

    schema: str
    server: str
    channel: str
    connect_timeout: float
    statement_timeout: float | None
    retry_for: float
    _conninfo: str
    _application_name: str
    _max_connections: int
    _own_pool: bool
    _pool: Pool
    _lock: threading.Lock
    _prepared: weakref.WeakSet[psycopg.Connection[Any]]
    _listener: psycopg.Connection[Any] | None
    _closed: bool
    _pid: int

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
            raise self._translate(exc, action, Outcome()) from exc
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

    def _translate(self, exc: BaseException, action: str, outcome: Outcome) -> PostgresStoreError:
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
            outcome = Outcome()
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
