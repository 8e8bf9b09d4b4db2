"""The errors of :class:`~dripcore.adapters.sqlite.SQLiteStore`: each names the database file and what to do.

:class:`~dripcore.errors.SchemaTooNew` and :class:`~dripcore.errors.CorruptRecord` are
shared with the PostgreSQL store and defined in :mod:`dripcore.errors`; they are
re-exported here under their old names.
"""

from __future__ import annotations

from ...errors import CorruptRecord, SchemaTooNew, StoreError

__all__ = [
    "CorruptRecord",
    "DatabaseLocked",
    "InvalidStorePath",
    "NotADripcoreDatabase",
    "SQLiteStoreError",
    "SchemaTooNew",
    "StoreFull",
    "StoreReadOnly",
]


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
