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

How the package is laid out
---------------------------

:mod:`~dripcore.adapters.postgres.store` (the store: transactions, claims, commits,
settles, wake-ups), :mod:`~dripcore.adapters.postgres.schema` (the schema and its
migrations), :mod:`~dripcore.adapters.postgres.codec` (rows and JSON batches to records
and back), :mod:`~dripcore.adapters.postgres.connection` (the pool, retries, LISTEN,
error translation) and :mod:`~dripcore.adapters.postgres.errors`, over the shared base
of both SQL stores (``dripcore.adapters._base``).
"""

from __future__ import annotations

from .errors import (
    AuthenticationFailed,
    ConnectionLost,
    CorruptRecord,
    DatabaseUnavailable,
    NotADripcoreSchema,
    PostgresStoreError,
    SchemaOutdated,
    SchemaTooNew,
    StatementTimeout,
)
from .schema import SCHEMA_VERSION
from .store import PostgresStore

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
