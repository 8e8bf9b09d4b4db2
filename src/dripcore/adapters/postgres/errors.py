"""The errors of :class:`~dripcore.adapters.postgres.PostgresStore`: each names the server and what to do.

:class:`~dripcore.errors.SchemaTooNew` and :class:`~dripcore.errors.CorruptRecord` are
shared with the SQLite store and defined in :mod:`dripcore.errors`; they are re-exported
here under their old names.
"""

from __future__ import annotations

from ...errors import CorruptRecord, SchemaTooNew, StoreError

__all__ = [
    "AuthenticationFailed",
    "ConnectionLost",
    "CorruptRecord",
    "DatabaseUnavailable",
    "NotADripcoreSchema",
    "PostgresStoreError",
    "SchemaOutdated",
    "SchemaTooNew",
    "StatementTimeout",
]


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
