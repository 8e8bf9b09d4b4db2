"""PostgresStore passes the storage contract kit, agrees with MemoryStore, and fails clearly on bad input.

Needs a real PostgreSQL (see ``tests/postgres_fixtures.py``): skipped, with the
reason shown, when there is none.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import attrs
import psycopg
import pytest
from hypothesis import settings

from dripcore.adapters.postgres import (
    SCHEMA_VERSION,
    AuthenticationFailed,
    ConnectionLost,
    DatabaseUnavailable,
    NotADripcoreSchema,
    PostgresStore,
    SchemaOutdated,
    SchemaTooNew,
    StatementTimeout,
)
from dripcore.errors import StoreError
from dripcore.model import UTC, EnrollmentStatus
from dripcore.ports import Change, OutboxStatus, Store
from dripcore.testing.contract import (
    HOUR,
    T0,
    StoreContract,
    StoreFactory,
    StoreStateMachine,
    message,
    sample_enrollment,
    sample_sequence,
    sent,
)
from tests.pg_cluster import PostgresCluster, drop_schema, unique_schema

pytest_plugins = ["tests.postgres_fixtures"]


def corrupt_variables(store: Store, enrollment_id: str) -> None:
    """Store JSON of the wrong shape in an enrollment row, behind the store's back."""
    assert isinstance(store, PostgresStore)
    assert store.dsn is not None
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{store.schema}\".enrollments SET variables = '[1, 2]' WHERE id = %s", (enrollment_id,))


class TestPostgresStore(StoreContract):
    """Every contract test, the multiprocess and broken-row ones included."""

    @pytest.fixture
    def store_factory(self, postgres_dsn: str, new_schema: Callable[[], str]) -> StoreFactory:
        return functools.partial(PostgresStore, postgres_dsn, schema=new_schema())

    @pytest.fixture
    def break_enrollment(self) -> object:
        return corrupt_variables


class PostgresAgreesWithMemory(StoreStateMachine):
    """Random operations, including closing and reopening the store, against the reference."""

    dsn = ""

    def make_store(self) -> Store:
        self.schema = unique_schema("sm")
        return PostgresStore(self.dsn, schema=self.schema)

    def reopen_store(self, store: Store) -> Store:
        store.close()
        return PostgresStore(self.dsn, schema=self.schema)

    def close_store(self, store: Store) -> None:
        store.close()
        drop_schema(self.dsn, self.schema)


@pytest.fixture
def _machine_dsn(postgres_dsn: str) -> None:
    PostgresAgreesWithMemory.dsn = postgres_dsn


TestPostgresStateMachine = pytest.mark.usefixtures("_machine_dsn")(PostgresAgreesWithMemory.TestCase)
# Each example is a schema of its own on a real server: cap the thorough profile's count (50 runs of
# 30 steps keeps the whole suite well inside its ten minutes on a loaded 2-core machine).
TestPostgresStateMachine.settings = settings(
    max_examples=min(settings.default.max_examples, 50), stateful_step_count=30, deadline=None
)


# --------------------------------------------------------------------------- Postgres specifics


@pytest.fixture
def schema(new_schema: Callable[[], str]) -> str:
    return new_schema()


@pytest.fixture
def store(postgres_dsn: str, schema: str) -> PostgresStore:
    with PostgresStore(postgres_dsn, schema=schema, retry_for=5) as store:
        yield store  # type: ignore[misc]


def _admin(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True)


class TestSchema:
    """Versioned migrations: created once, upgraded, a future schema refused."""

    def test_a_new_schema_is_created_and_versioned(self, postgres_dsn: str, schema: str) -> None:
        """Opening an empty schema creates the tables and records each migration."""
        with PostgresStore(postgres_dsn, schema=schema) as store:
            assert store.schema_version() == SCHEMA_VERSION
        with _admin(postgres_dsn) as conn:
            rows = conn.execute(f'SELECT version FROM "{schema}".dripcore_migrations ORDER BY version').fetchall()
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))

    def test_a_schema_from_the_future_is_refused_and_left_alone(self, postgres_dsn: str, schema: str) -> None:
        """A schema version this code does not know raises SchemaTooNew naming both versions."""
        PostgresStore(postgres_dsn, schema=schema).close()
        with _admin(postgres_dsn) as conn:
            conn.execute(
                f"INSERT INTO \"{schema}\".dripcore_migrations (version, description) VALUES (999, 'from the future')"
            )
        with pytest.raises(SchemaTooNew) as caught:
            PostgresStore(postgres_dsn, schema=schema)
        assert (caught.value.found, caught.value.supported) == (999, SCHEMA_VERSION)
        assert "newer dripcore" in str(caught.value)
        assert "password" not in str(caught.value)
        with _admin(postgres_dsn) as conn:
            assert conn.execute(f'SELECT max(version) FROM "{schema}".dripcore_migrations').fetchone() == (999,)

    def test_migrate_false_refuses_an_empty_schema(self, postgres_dsn: str, schema: str) -> None:
        """With migrate=False nothing is created: SchemaOutdated says how to upgrade."""
        with pytest.raises(SchemaOutdated, match="migrate=True"):
            PostgresStore(postgres_dsn, schema=schema, migrate=False)
        with _admin(postgres_dsn) as conn:
            assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None

    def test_a_schema_holding_foreign_tables_is_refused(self, postgres_dsn: str, schema: str) -> None:
        """dripcore never writes into a schema that holds someone else's tables."""
        with _admin(postgres_dsn) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            conn.execute(f'CREATE TABLE "{schema}".enrollments (id int)')
        with pytest.raises(NotADripcoreSchema, match="not dripcore's"):
            PostgresStore(postgres_dsn, schema=schema)

    def test_concurrent_first_opens_migrate_once(self, postgres_dsn: str, schema: str) -> None:
        """Several workers starting at once on an empty schema all succeed; it is migrated once."""
        errors: list[BaseException] = []

        def open_store() -> None:
            try:
                PostgresStore(postgres_dsn, schema=schema).close()
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with _admin(postgres_dsn) as conn:
            assert conn.execute(f'SELECT count(*) FROM "{schema}".dripcore_migrations').fetchone() == (SCHEMA_VERSION,)

    def test_a_bad_schema_name_is_refused(self, postgres_dsn: str) -> None:
        with pytest.raises(ValueError, match="schema="):
            PostgresStore(postgres_dsn, schema='bad"; DROP TABLE x; --')


class TestConnectionErrors:
    """Unreachable servers and wrong credentials fail at once with a clear StoreError."""

    def test_an_unreachable_server_is_a_clear_error(self) -> None:
        """Nothing listens on the port: DatabaseUnavailable names host and port, and what to check."""
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as caught:
            PostgresStore(f"host=127.0.0.1 port={port} dbname=x user=u password=hunter2", connect_timeout=2)
        assert time.monotonic() - started < 10
        text = str(caught.value)
        assert f"127.0.0.1:{port}" in text
        assert "server is running" in text
        assert "hunter2" not in text
        assert isinstance(caught.value, StoreError)

    def test_a_wrong_password_is_an_authentication_error(self, postgres_dsn: str) -> None:
        """A role that exists, with the wrong password: AuthenticationFailed, without the password."""
        role = unique_schema("role")
        with _admin(postgres_dsn) as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-one'")
        try:
            params = psycopg.conninfo.conninfo_to_dict(postgres_dsn)
            params.update(user=role, password="wrong-one")
            bad = psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
            try:
                psycopg.connect(bad).close()
            except psycopg.OperationalError:
                pass
            else:
                pytest.skip("this server does not check passwords (trust authentication)")
            with pytest.raises(AuthenticationFailed) as caught:
                PostgresStore(bad)
            assert role in str(caught.value)
            assert "wrong-one" not in str(caught.value)
            assert "pg_hba.conf" in str(caught.value)
        finally:
            with _admin(postgres_dsn) as conn:
                conn.execute(f"DROP ROLE {role}")

    def test_a_missing_database_is_named(self, postgres_dsn: str) -> None:
        params = psycopg.conninfo.conninfo_to_dict(postgres_dsn)
        params["dbname"] = "no_such_database_here"
        with pytest.raises(DatabaseUnavailable, match="createdb"):
            PostgresStore(psycopg.conninfo.make_conninfo(**params))  # type: ignore[arg-type]


def _batch(store: PostgresStore, count: int) -> list[Change]:
    """Due enrollments e0..e{count-1} set up, and a change sending step 1 of each."""
    store.save_sequence(sample_sequence())
    changes = []
    for i in range(count):
        e = sample_enrollment(f"e{i}")
        store.add_enrollment(e, allow_reentry=True)
        changes.append(
            Change(enrollment=sent(e, 1, T0, T0 + HOUR), outbox=(message(e, 1),), counters=(("seq", 1, "sent", 1),))
        )
    return changes


def _assert_untouched(store: PostgresStore, count: int) -> None:
    for i in range(count):
        stored = store.get_enrollment(f"e{i}")
        assert stored is not None
        assert (stored.version, stored.last_step_sent) == (0, 0)
    assert store.find_messages() == []
    assert store.counters("seq") == {}


def _assert_applied_once(store: PostgresStore, count: int) -> None:
    for i in range(count):
        stored = store.get_enrollment(f"e{i}")
        assert stored is not None
        assert (stored.version, stored.last_step_sent) == (1, 1)
    assert len(store.find_messages(limit=1000)) == count
    assert store.counters("seq") == {(1, "sent"): count}


def _backend_waiting_on_a_lock(dsn: str, schema: str, timeout: float = 10) -> int:
    """The pid of the backend blocked on a lock while working in ``schema``."""
    deadline = time.monotonic() + timeout
    with _admin(dsn) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                (f'%"{schema}".enrollments%',),
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.02)
    raise AssertionError("no backend of the store waited on the lock")


class TestMidBatchFailures:
    """A dropped connection or a timeout mid-batch never leaves a batch half-applied."""

    def _hold_row_lock(self, dsn: str, schema: str, enrollment_id: str) -> psycopg.Connection[tuple[object, ...]]:
        blocker = psycopg.connect(dsn)
        blocker.execute(f'SELECT 1 FROM "{schema}".enrollments WHERE id = %s FOR UPDATE', (enrollment_id,))
        return blocker

    def test_a_terminated_backend_mid_batch_is_retried_and_applied_once(self, postgres_dsn: str, schema: str) -> None:
        """pg_terminate_backend while the commit waits inside its transaction: the store retries on a new
        connection and the whole batch is applied exactly once."""
        store = PostgresStore(postgres_dsn, schema=schema, retry_for=30)
        changes = _batch(store, 20)
        blocker = self._hold_row_lock(postgres_dsn, schema, "e13")
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(store.commit(changes)))
        worker.start()
        try:
            victim = _backend_waiting_on_a_lock(postgres_dsn, schema)
            with _admin(postgres_dsn) as conn:
                assert conn.execute("SELECT pg_terminate_backend(%s)", (victim,)).fetchone() == (True,)
            # The retry waits on the same lock, on another backend.
            assert _backend_waiting_on_a_lock(postgres_dsn, schema) != victim
        finally:
            blocker.rollback()
            blocker.close()
            worker.join(30)
        assert result == [[]]
        _assert_applied_once(store, 20)
        store.close()

    def test_a_terminated_backend_without_retries_is_connection_lost_and_nothing_applied(
        self, postgres_dsn: str, schema: str
    ) -> None:
        """retry_for=0: the caller gets ConnectionLost (outcome known: rolled back); nothing of the batch stays."""
        store = PostgresStore(postgres_dsn, schema=schema, retry_for=0)
        changes = _batch(store, 20)
        blocker = self._hold_row_lock(postgres_dsn, schema, "e7")
        errors: list[BaseException] = []

        def commit() -> None:
            try:
                store.commit(changes)
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)

        worker = threading.Thread(target=commit)
        worker.start()
        try:
            victim = _backend_waiting_on_a_lock(postgres_dsn, schema)
            with _admin(postgres_dsn) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (victim,))
            worker.join(30)
        finally:
            blocker.rollback()
            blocker.close()
        assert len(errors) == 1
        assert isinstance(errors[0], ConnectionLost)
        assert errors[0].outcome_unknown is False
        assert "rolled back" in str(errors[0])
        _assert_untouched(store, 20)
        # The store keeps working on a fresh connection.
        assert store.commit(changes) == []
        _assert_applied_once(store, 20)
        store.close()

    def test_a_statement_timeout_mid_batch_rolls_the_batch_back(self, postgres_dsn: str, schema: str) -> None:
        """SET statement_timeout: a commit stuck behind a lock is cancelled; StatementTimeout, nothing applied."""
        store = PostgresStore(postgres_dsn, schema=schema, statement_timeout=0.3)
        changes = _batch(store, 20)
        blocker = self._hold_row_lock(postgres_dsn, schema, "e11")
        try:
            started = time.monotonic()
            with pytest.raises(StatementTimeout, match="statement_timeout") as caught:
                store.commit(changes)
            assert time.monotonic() - started < 5, "a statement timeout is not retried"
            assert "nothing of it was applied" in str(caught.value)
        finally:
            blocker.rollback()
            blocker.close()
        _assert_untouched(store, 20)
        assert store.commit(changes) == []
        _assert_applied_once(store, 20)
        store.close()

    def test_a_role_level_statement_timeout_is_reported_too(self, postgres_dsn: str, schema: str) -> None:
        """A timeout set on the server (here with SET on a borrowed pool connection) is a StatementTimeout."""
        from psycopg_pool import ConnectionPool

        def configure(conn: psycopg.Connection[tuple[object, ...]]) -> None:
            conn.autocommit = True
            conn.execute("SET statement_timeout = '50ms'")

        with ConnectionPool(postgres_dsn, min_size=1, max_size=2, configure=configure, open=True) as pool:
            store = PostgresStore(pool, schema=schema)
            with pytest.raises(StatementTimeout):
                # store._run: the one way to run arbitrary SQL through the store's own error mapping (no public seam).
                store._run("sleep", lambda cur: cur.execute("SELECT pg_sleep(1)"), replay_safe=True)
            store.save_sequence(sample_sequence())
            assert store.get_sequence("seq") == sample_sequence()
            store.close()
            assert not pool.closed, "a borrowed pool is the host's to close"


class TestServerOutage:
    """The server goes away and comes back: clear errors meanwhile, then the store works again."""

    def test_a_killed_server_is_unavailable_then_the_store_recovers(self, private_cluster: PostgresCluster) -> None:
        """SIGKILL the postmaster: calls raise a StoreError naming the server; after a restart they succeed."""
        dsn = private_cluster.dsn()
        store = PostgresStore(dsn, schema="outage", retry_for=1, connect_timeout=2)
        store.save_sequence(sample_sequence())
        private_cluster.kill()
        started = time.monotonic()
        with pytest.raises((DatabaseUnavailable, ConnectionLost)) as caught:
            store.get_sequence("seq")
        assert time.monotonic() - started < 15
        assert f"127.0.0.1:{private_cluster.port}" in str(caught.value)
        assert private_cluster.password not in str(caught.value)
        with pytest.raises(StoreError):
            store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
        private_cluster.start()
        assert store.get_sequence("seq") == sample_sequence()
        store.close()

    def test_a_restart_between_calls_is_invisible(self, private_cluster: PostgresCluster) -> None:
        """A fast restart while the store is idle: the next call reconnects by itself (no error)."""
        store = PostgresStore(private_cluster.dsn(), schema="restart", retry_for=15)
        store.save_sequence(sample_sequence())
        store.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
        private_cluster.stop("fast")
        private_cluster.start()
        assert [e.id for e in store.claim_due(T0, limit=10, lease=HOUR, owner="w1")] == ["e1"]
        store.close()


class TestWorkerThroughAnOutage:
    """The engine on this store: a tick during an outage raises a StoreError; once the server is back,
    ticking again delivers everything once."""

    def test_ticks_fail_clearly_while_the_server_is_down_then_deliver_once(
        self, private_cluster: PostgresCluster
    ) -> None:
        from dripcore import Drip
        from dripcore.model import Contact, Sequence, SequenceStatus, Step
        from dripcore.testing.fakes import FakeClock, MemoryContacts, RecordingSender

        store = PostgresStore(private_cluster.dsn(), schema="worker", retry_for=1, connect_timeout=2)
        sender = RecordingSender()
        clock = FakeClock(T0)
        contacts = MemoryContacts([Contact(id=f"c{i}", email=f"c{i}@example.com") for i in range(30)])
        drip = Drip(store=store, sender=sender, contacts=contacts, clock=clock, batch_size=10)
        drip.save_sequence(
            Sequence(id="s", name="S", status=SequenceStatus.ACTIVE,
                     steps=(Step(position=1, subject="Hi", text="Hello"),))
        )  # fmt: skip
        for i in range(30):
            drip.enroll("s", f"c{i}")
        assert drip.tick().sent == 10
        private_cluster.kill()
        with pytest.raises(StoreError):
            drip.tick()
        private_cluster.start()
        while drip.tick().claimed:
            pass
        clock.advance(timedelta(hours=1))  # past any lease taken before the outage
        while (report := drip.tick()).claimed or report.messages:
            pass
        assert sorted(e.to for e in sender.sent) == sorted(f"c{i}@example.com" for i in range(30))
        assert sender.duplicate_attempts == 0
        store.close()


class TestWakeUps:
    """LISTEN/NOTIFY: an idle worker wakes when another process makes work due."""

    def test_a_new_due_enrollment_wakes_a_waiting_worker(self, postgres_dsn: str, schema: str) -> None:
        """wait_for_work returns True soon after another store adds a due enrollment."""
        waiter = PostgresStore(postgres_dsn, schema=schema)
        writer = PostgresStore(postgres_dsn, schema=schema)
        writer.save_sequence(sample_sequence())
        assert waiter.wait_for_work(0.05) is False  # starts listening
        now = datetime.now(UTC)
        timer = threading.Timer(
            0.3, lambda: writer.add_enrollment(sample_enrollment("e1", due=now), allow_reentry=False)
        )
        timer.start()
        assert waiter.wait_for_work(20) is True  # True: signalled, not timed out
        timer.join()
        waiter.close()
        writer.close()

    def test_work_due_later_than_the_timeout_does_not_wake(self, postgres_dsn: str, schema: str) -> None:
        """A notification for work due after the wait's deadline is ignored; one due soon wakes at its time."""
        waiter = PostgresStore(postgres_dsn, schema=schema)
        writer = PostgresStore(postgres_dsn, schema=schema)
        writer.save_sequence(sample_sequence())
        waiter.wait_for_work(0.05)
        now = datetime.now(UTC)
        writer.add_enrollment(sample_enrollment("later", due=now + timedelta(minutes=2)), allow_reentry=False)
        assert waiter.wait_for_work(0.5) is False
        soon = datetime.now(UTC) + timedelta(seconds=1)
        writer.add_enrollment(sample_enrollment("soon", due=soon), allow_reentry=False)
        assert waiter.wait_for_work(10) is True
        assert datetime.now(UTC) >= soon  # woke when that work fell due, not at the notification
        waiter.close()
        writer.close()

    def test_the_wake_event_ends_the_wait(self, store: PostgresStore) -> None:
        wake = threading.Event()
        threading.Timer(0.2, wake.set).start()
        assert store.wait_for_work(20, wake) is True

    def test_an_idle_worker_wakes_for_an_enrollment_made_by_another_process(
        self, postgres_dsn: str, schema: str
    ) -> None:
        """Drip.run on PostgresStore sleeps up to idle=120 s, yet delivers a new enrollment at once."""
        from dripcore import Contact, Drip
        from dripcore.testing import MemoryContacts, RecordingSender

        contacts = MemoryContacts([Contact(id="ana", email="ana@example.com")])
        delivered = threading.Event()

        class Signalling(RecordingSender):
            def send(self, email):  # type: ignore[no-untyped-def]
                result = super().send(email)
                delivered.set()
                return result

        worker_store, api_store = PostgresStore(postgres_dsn, schema=schema), PostgresStore(postgres_dsn, schema=schema)
        worker = Drip(store=worker_store, sender=Signalling(), contacts=contacts)
        api = Drip(store=api_store, sender=RecordingSender(), contacts=contacts)  # "another process"
        api.save_sequence(sample_sequence())
        thread = threading.Thread(target=worker.run, kwargs={"idle": 120.0})
        thread.start()
        try:
            time.sleep(0.5)  # let the worker go idle
            api.enroll(sample_sequence().id, "ana")
            assert delivered.wait(30), "the idle worker was not woken by LISTEN/NOTIFY"
        finally:
            worker.stop()
            thread.join(30)
            worker_store.close()
            api_store.close()

    def test_settling_unblocks_a_due_enrollment_and_wakes(self, postgres_dsn: str, schema: str) -> None:
        """The next step of an enrollment waiting for its email is announced once the email settles."""
        from dripcore.ports import Delivery

        waiter = PostgresStore(postgres_dsn, schema=schema)
        writer = PostgresStore(postgres_dsn, schema=schema)
        writer.save_sequence(sample_sequence())
        now = datetime.now(UTC)
        e = sample_enrollment("e1", due=now + timedelta(hours=3))
        writer.add_enrollment(e, allow_reentry=False)
        writer.commit([Change(enrollment=sent(e, 1, now, now), outbox=(message(e, 1, at=now),))], owner="w1")
        waiter.wait_for_work(0.05)
        assert waiter.wait_for_work(0.3) is False, "a step waiting for its email is not announced"
        writer.settle([Delivery(key="e1:1", status=OutboxStatus.DELIVERED, at=now)])
        assert waiter.wait_for_work(10) is True
        waiter.close()
        writer.close()

    def test_a_broken_listener_degrades_to_a_timed_wait(self, postgres_dsn: str, schema: str) -> None:
        """Killing the LISTEN connection never raises: the wait times out, then listening resumes."""
        store = PostgresStore(postgres_dsn, schema=schema)
        store.wait_for_work(0.05)
        listener = store._listener  # the LISTEN connection is private; the test must kill that very backend
        assert listener is not None
        with _admin(postgres_dsn) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (listener.info.backend_pid,))
        assert store.wait_for_work(0.5) is False
        assert store.wait_for_work(0.1) is False
        assert store._listener is not None
        assert not store._listener.closed
        store.close()


class TestPoolAndProcesses:
    """A host's own pool is borrowed, never closed; bulk imports follow add_enrollment's rules."""

    def test_a_borrowed_pool_serves_the_store(self, postgres_dsn: str, schema: str) -> None:
        from psycopg_pool import ConnectionPool

        with ConnectionPool(postgres_dsn, min_size=1, max_size=2, open=True) as pool:
            with PostgresStore(pool, schema=schema) as store:
                store.save_sequence(sample_sequence())
                store.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
                claimed = store.claim_due(T0, limit=5, lease=HOUR, owner="w1")
                assert [e.id for e in claimed] == ["e1"]
                assert claimed[0].next_step_due_at is not None
                assert claimed[0].next_step_due_at.utcoffset() == timedelta(0)
            assert not pool.closed

    def test_the_dsns_own_options_are_kept(self, postgres_dsn: str, schema: str) -> None:
        """Session options given in the DSN survive the store's own (time zone, statement timeout)."""
        dsn = f"{postgres_dsn} options='-c work_mem=7MB' application_name=my-worker"
        with PostgresStore(dsn, schema=schema, statement_timeout=30) as store:
            settings = store._run(  # the session's settings are visible only on the store's own connection
                "show settings",
                lambda cur: cur.execute(
                    "SELECT current_setting('work_mem'), current_setting('TimeZone'), "
                    "current_setting('statement_timeout'), current_setting('application_name')"
                ).fetchone(),
                replay_safe=True,
                single=True,
            )
        assert settings == ("7MB", "UTC", "30s", "my-worker")

    def test_bulk_import_applies_the_dedupe_rules(self, store: PostgresStore) -> None:
        """add_enrollments skips live duplicates (and, without re-entry, finished ones), first wins."""
        store.save_sequence(sample_sequence())
        store.add_enrollment(sample_enrollment("live", contact_id="ana"), allow_reentry=False)
        batch = [
            sample_enrollment("dup-of-live", contact_id="ana"),
            sample_enrollment("b1", contact_id="bob"),
            sample_enrollment("b2", contact_id="bob"),
            sample_enrollment("c1", contact_id="cy", key="order-1"),
            sample_enrollment("c2", contact_id="cy", key="order-2"),
        ]
        created = store.add_enrollments(batch, allow_reentry=False, counters=lambda e: [("seq", 0, "recipients", 1)])
        assert created == 3
        assert [e.id for e in store.find_enrollments(limit=10)] == ["b1", "c1", "c2", "live"]
        assert store.counters("seq") == {(0, "recipients"): 3}
        assert store.count_due(T0) == 4

    def test_bulk_import_of_an_existing_id_rolls_the_batch_back(self, store: PostgresStore) -> None:
        from dripcore.errors import ConcurrencyConflict

        store.save_sequence(sample_sequence())
        store.add_enrollment(sample_enrollment("e1", contact_id="ana"), allow_reentry=False)
        with pytest.raises(ConcurrencyConflict):
            store.add_enrollments(
                [sample_enrollment("e2", contact_id="bob"), sample_enrollment("e1", contact_id="cy")],
                allow_reentry=False,
            )
        assert [e.id for e in store.find_enrollments(limit=10)] == ["e1"]

    def test_prune_removes_old_settled_messages_only(self, store: PostgresStore) -> None:
        from dripcore.ports import Delivery

        changes = _batch(store, 3)
        store.commit(changes)
        store.settle([
            Delivery(key="e0:1", status=OutboxStatus.DELIVERED, at=T0),
            Delivery(key="e1:1", status=OutboxStatus.FAILED, at=T0 + 2 * HOUR, error="x"),
        ])  # fmt: skip
        assert store.prune_messages(T0 + HOUR, batch_size=1) == 1
        assert sorted(m.key for m in store.find_messages()) == ["e1:1", "e2:1"]

    def test_a_store_is_reopened_in_a_forked_child(self, postgres_dsn: str, schema: str) -> None:
        """A store that owns its pool opens a fresh one after fork instead of sharing the parent's sockets."""
        import multiprocessing

        store = PostgresStore(postgres_dsn, schema=schema)
        store.save_sequence(sample_sequence())
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()

        def child() -> None:
            queue.put(store.get_sequence("seq") == sample_sequence())
            store.close()

        process = ctx.Process(target=child)
        process.start()
        assert queue.get(timeout=30) is True
        process.join(10)
        assert store.get_sequence("seq") == sample_sequence()
        store.close()


def test_changes_in_a_batch_keep_the_claims_lease_for_their_messages(store: PostgresStore) -> None:
    """Messages committed by the claim owner keep the claim's lease end, to the microsecond."""
    changes = _batch(store, 2)
    lease = timedelta(minutes=7, microseconds=5)
    store.claim_due(T0, limit=10, lease=lease, owner="w1")
    store.commit(changes, owner="w1")
    assert store.next_message_at() == T0 + lease
    assert store.claim_messages(T0 + lease - timedelta(microseconds=1), limit=10, lease=HOUR, owner="w2") == []
    assert len(store.claim_messages(T0 + lease, limit=10, lease=HOUR, owner="w2")) == 2
    assert attrs.evolve(changes[0].enrollment, version=1) == store.get_enrollment("e0")


def test_ids_and_keys_with_quotes_braces_and_backslashes_round_trip(store: PostgresStore) -> None:
    """Batch statements carry ids as array literals and JSON: any text survives them."""
    from dripcore.ports import Delivery

    store.save_sequence(sample_sequence())
    weird = ['a"b', "c\\d", "{e,f}", "g h", "ünï'cødé", "NULL"]
    enrollments = [sample_enrollment(i, contact_id=f"contact {i}") for i in weird]
    for e in enrollments:
        store.add_enrollment(e, allow_reentry=False)
    claimed = store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
    assert sorted(e.id for e in claimed) == sorted(weird)
    store.release(weird[:2], owner="w1")
    assert sorted(e.id for e in store.claim_due(T0, limit=10, lease=HOUR, owner="w2")) == sorted(weird[:2])
    changes = [Change(enrollment=sent(e, 1, T0, None), outbox=(message(e, 1),)) for e in enrollments]
    assert store.commit(changes) == []
    assert store.find_enrollments(statuses=[EnrollmentStatus.COMPLETED], limit=10) == sorted(
        (attrs.evolve(sent(e, 1, T0, None), version=1) for e in enrollments), key=lambda e: e.id
    )
    store.settle([Delivery(key=f"{i}:1", status=OutboxStatus.DELIVERED, at=T0) for i in weird])
    assert {m.key for m in store.find_messages(status=OutboxStatus.DELIVERED, limit=10)} == {f"{i}:1" for i in weird}
