"""SQLite connection handling: opening and configuring a connection, translating sqlite3 errors,
background WAL checkpoints, and staying safe across :func:`os.fork`."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path

from .errors import (
    DatabaseLocked,
    InvalidStorePath,
    NotADripcoreDatabase,
    SQLiteStoreError,
    StoreFull,
    StoreReadOnly,
)
from .schema import SCHEMA_VERSION, check_schema, migrate

__all__ = ["Checkpointer", "abandon", "check_path", "open_connection", "sqlite_code", "translate_error"]

log = logging.getLogger("dripcore.sqlite")

# With background checkpoints, the writer's own automatic checkpoint only kicks
# in if the WAL grows this large (the checkpointer fell behind or is stopped).
SAFETY_NET_CHECKPOINT_PAGES = 16_384

_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


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


class Checkpointer:
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
        abandon(self._conn)


# Connections inherited across a fork are kept referenced, never closed: closing
# one in the child could release locks or checkpoint under the parent's feet.
_ABANDONED: list[sqlite3.Connection] = []


def abandon(conn: sqlite3.Connection) -> None:
    """Keep ``conn``, inherited across a fork, referenced and unclosed for the life of the process."""
    _ABANDONED.append(conn)


def sqlite_code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``exc`` (``SQLITE_BUSY``...), or None."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def translate_error(exc: sqlite3.Error, path: str, action: str, busy_timeout: float) -> SQLiteStoreError:
    """Translate a sqlite3 error into the dripcore error that says what to do."""
    code = sqlite_code(exc)
    text = str(exc)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
        return DatabaseLocked(path, busy_timeout)
    if code == _SQLITE_FULL or "database or disk is full" in text:
        return StoreFull(
            path,
            f"{action} failed because the disk (or quota) is full; nothing of it was written. "
            "Free some space and retry",
        )
    if code in (_SQLITE_READONLY, _SQLITE_PERM) or "readonly" in text:
        return StoreReadOnly(path, f"{action} failed: the database is read-only ({text}); fix the file's permissions")
    if code == _SQLITE_NOTADB:
        return NotADripcoreDatabase(path, f"{action} failed: the file is not a database ({text})")
    if code == _SQLITE_CORRUPT:
        return SQLiteStoreError(
            path,
            f"{action} failed: the database file is damaged ({text}); restore it from a backup, or salvage "
            "it with the sqlite3 shell's .recover command",
        )
    if code == _SQLITE_CANTOPEN:
        return InvalidStorePath(path, f"{action} failed: SQLite can't open the file ({text})")
    if code == _SQLITE_IOERR:
        return SQLiteStoreError(path, f"{action} failed with an I/O error ({text}); check the disk")
    return SQLiteStoreError(path, f"{action} failed: {text}")


def check_path(path: str) -> None:
    """Refuse, before SQLite is asked, a path that can't hold a database this process may write."""
    p = Path(path)
    if p.is_dir():
        raise InvalidStorePath(path, "is a directory; give the path of a database file inside it")
    directory = p.parent if str(p.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidStorePath(
            path, f"directory {str(directory)!r} does not exist; create it first (dripcore creates the file)"
        )
    if p.exists() and not os.access(p, os.R_OK | os.W_OK):
        raise StoreReadOnly(path, "the file is not readable and writable by this process; fix its permissions or owner")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreReadOnly(
            path,
            f"directory {str(directory)!r} is not writable; SQLite keeps its -wal and -shm files next to "
            "the database, so the directory must be writable too",
        )


def open_connection(
    path: str,
    *,
    busy_timeout: float,
    synchronous: str,
    cache_size_kib: int,
    pragmas: Mapping[str, str | int],
    background_checkpoints: bool,
) -> sqlite3.Connection:
    """A connection to ``path``, checked to be a dripcore database (or a new one), configured
    (WAL, ``synchronous``, cache, ``pragmas``) and migrated to :data:`SCHEMA_VERSION`."""
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False, cached_statements=256
        )
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "open", busy_timeout) from exc
    try:
        _prepare(conn, path, busy_timeout, synchronous, cache_size_kib, pragmas, background_checkpoints)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(
    conn: sqlite3.Connection,
    path: str,
    busy_timeout: float,
    synchronous: str,
    cache_size_kib: int,
    pragmas: Mapping[str, str | int],
    background_checkpoints: bool,
) -> None:
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and sqlite_code(exc) not in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            raise translate_error(exc, path, "open", busy_timeout) from exc
        raise NotADripcoreDatabase(
            path,
            f"the file is not a SQLite database ({exc}); point the store at a new path or at a database "
            "dripcore created",
        ) from exc
    check_schema(path, application_id, version, tables)
    try:
        if path != ":memory:":
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SQLiteStoreError(path, f"could not switch to WAL journaling (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA cache_size = -{cache_size_kib}")
        if background_checkpoints:
            conn.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_NET_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {64 * 2**20}")  # a WAL that grew is cut back after use
        conn.execute("PRAGMA temp_store = MEMORY")
        for name, value in pragmas.items():
            conn.execute(f"PRAGMA {name} = {int(value) if isinstance(value, int) else repr(str(value))}")
        if version < SCHEMA_VERSION:
            migrate(conn, path)
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "open", busy_timeout) from exc
