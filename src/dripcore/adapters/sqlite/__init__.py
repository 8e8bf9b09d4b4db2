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

How the package is laid out
---------------------------

:mod:`~dripcore.adapters.sqlite.store` (the store: transactions, claims, commits,
settles), :mod:`~dripcore.adapters.sqlite.schema` (the schema and its migrations),
:mod:`~dripcore.adapters.sqlite.codec` (rows to records and back),
:mod:`~dripcore.adapters.sqlite.connection` (opening, error translation, background
checkpoints, forks) and :mod:`~dripcore.adapters.sqlite.errors`, over the shared
base of both SQL stores (``dripcore.adapters._base``).
"""

from __future__ import annotations

from .errors import (
    CorruptRecord,
    DatabaseLocked,
    InvalidStorePath,
    NotADripcoreDatabase,
    SchemaTooNew,
    SQLiteStoreError,
    StoreFull,
    StoreReadOnly,
)
from .schema import APPLICATION_ID, SCHEMA_VERSION
from .store import SQLiteStore

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
