"""SQLiteStore passes the storage contract kit, agrees with MemoryStore, and holds beyond the contract.

Beyond the contract: files, schema versions, bad input, faults, and O(due) claims.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import sqlite3
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dripcore import Contact, Delay, Drip, EnrollmentStatus, OutboxStatus, Sequence, SequenceStatus, Step

# Private on purpose: test_headers_json_is_the_json_encoders_exactly checks the adapters' hand-rolled header
# encoder against their JSON encoder; neither is public. The white-box tests below also reach the store's
# connection (store._conn, store._connection()) for pragmas, query plans and trace callbacks: SQL has no public seam.
from dripcore.adapters._common import dumps, dumps_text_map
from dripcore.adapters.sqlite import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    CorruptRecord,
    DatabaseLocked,
    InvalidStorePath,
    NotADripcoreDatabase,
    SchemaTooNew,
    SQLiteStore,
    SQLiteStoreError,
    StoreFull,
    StoreReadOnly,
)
from dripcore.model import UTC, PausePolicy
from dripcore.ports import BrokenRecord, Change, Delivery, Store
from dripcore.serialization import make_converter
from dripcore.testing import FakeClock, FlakySender, MemoryContacts, RecordingSender
from dripcore.testing.contract import (
    StoreContract,
    StoreFactory,
    StoreStateMachine,
    finished,
    message,
    sample_enrollment,
    sample_sequence,
    sent,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "drip.db"


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# --------------------------------------------------------------------------- the contract kit


def corrupt_variables(store: Store, enrollment_id: str) -> None:
    """Write broken JSON into an enrollment row, behind the store's back."""
    assert isinstance(store, SQLiteStore)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE enrollments SET variables = '{broken' WHERE id = ?", (enrollment_id,))
    conn.close()


class TestSQLiteStore(StoreContract):
    """Every contract test, the multiprocess and broken-row ones included."""

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return functools.partial(SQLiteStore, tmp_path / "drip.db")

    @pytest.fixture
    def break_enrollment(self) -> object:
        return corrupt_variables


class SQLiteAgreesWithMemory(StoreStateMachine):
    """Random operations, including closing and reopening the file, against the reference."""

    def make_store(self) -> Store:
        self.directory = tempfile.mkdtemp(prefix="dripcore-sm-")
        return SQLiteStore(Path(self.directory) / "drip.db")

    def reopen_store(self, store: Store) -> Store:
        assert isinstance(store, SQLiteStore)
        store.close()
        return SQLiteStore(store.path)

    def close_store(self, store: Store) -> None:
        store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestSQLiteStateMachine = SQLiteAgreesWithMemory.TestCase
# At most 80 runs of 30 steps under the thorough profile: each run is a real file with fsyncs, and the
# whole suite must stay well inside its ten minutes on a loaded 2-core machine.
TestSQLiteStateMachine.settings = settings(
    max_examples=min(settings.default.max_examples, 80), stateful_step_count=30, deadline=None
)


# --------------------------------------------------------------------------- a new file


def test_a_new_file_gets_the_current_schema_in_wal_mode(db: Path) -> None:
    """The file is created, marked as dripcore's, journaled in WAL, and its migrations recorded."""
    with SQLiteStore(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
    conn = _raw(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        versions = [r[0] for r in conn.execute("SELECT version FROM dripcore_migrations ORDER BY version")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    finally:
        conn.close()


def test_data_survives_closing_and_reopening(db: Path) -> None:
    """What one store committed, the next one opened on the file reads back."""
    e = sample_enrollment("e1", variables={"plan": "pro"})
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        store.add_enrollment(e, allow_reentry=False, counters=[("seq", 0, "recipients", 1)])
    with SQLiteStore(db) as store:
        assert store.get_enrollment("e1") == e
        assert store.counters("seq") == {(0, "recipients"): 1}


# --------------------------------------------------------------------------- schema versions

# Schema version 1, exactly as dripcore wrote it: the upgrade path from a real old file.
SCHEMA_V1 = """
CREATE TABLE dripcore_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL);
CREATE TABLE sequences (id TEXT PRIMARY KEY, status TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE enrollments (
    rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, sequence_id TEXT NOT NULL, contact_id TEXT NOT NULL,
    dedupe_key TEXT, status TEXT NOT NULL, enrolled_at INTEGER NOT NULL, next_due INTEGER,
    last_step_sent INTEGER NOT NULL, last_step_sent_at INTEGER, exit_reason TEXT, paused_at INTEGER,
    ended_at INTEGER, variables TEXT, opened TEXT, clicked TEXT, skipped TEXT, version INTEGER NOT NULL,
    lease_owner TEXT, lease_until INTEGER);
CREATE INDEX enrollments_by_sequence ON enrollments (sequence_id, id);
CREATE INDEX enrollments_by_contact ON enrollments (contact_id, sequence_id);
CREATE INDEX enrollments_active_due ON enrollments (next_due) WHERE status = 'active';
CREATE TABLE outbox (
    key TEXT PRIMARY KEY, enrollment_id TEXT NOT NULL, sequence_id TEXT NOT NULL, contact_id TEXT NOT NULL,
    position INTEGER NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL, next_attempt_at INTEGER,
    attempts INTEGER NOT NULL, last_error TEXT, settled_at INTEGER, provider_id TEXT, email_to TEXT,
    email_subject TEXT, email_html TEXT, email_text TEXT, email_sender TEXT, email_headers TEXT,
    email_identity TEXT, lease_owner TEXT, lease_until INTEGER) WITHOUT ROWID;
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, key) WHERE status = 'pending';
CREATE INDEX outbox_by_enrollment ON outbox (enrollment_id, status);
CREATE TABLE counters (sequence_id TEXT NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL,
    value INTEGER NOT NULL, PRIMARY KEY (sequence_id, position, name)) WITHOUT ROWID;
INSERT INTO dripcore_migrations VALUES (1, 'sequences, enrollments, outbox and counters', '2026-01-01T00:00:00+00:00');
"""


def _micros(instant: datetime) -> int:
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _write_v1_database(path: Path) -> None:
    converter = make_converter()
    conn = _raw(path)
    try:
        conn.executescript(SCHEMA_V1)
        for sequence in (sample_sequence("live"), sample_sequence("held", status=SequenceStatus.PAUSED)):
            conn.execute(
                "INSERT INTO sequences VALUES (?, ?, ?, ?)",
                (sequence.id, sequence.status.value, sequence.version, json.dumps(converter.unstructure(sequence))),
            )
        for enrollment_id, sequence_id in (("e-live", "live"), ("e-held", "held")):
            conn.execute(
                "INSERT INTO enrollments (id, sequence_id, contact_id, status, enrolled_at, next_due, "
                "last_step_sent, version) VALUES (?, ?, 'ana', 'active', ?, ?, 0, 0)",
                (enrollment_id, sequence_id, _micros(T0 - 2 * HOUR), _micros(T0)),
            )
        conn.execute("INSERT INTO counters VALUES ('live', 0, 'recipients', 1)")
        conn.execute(
            "INSERT INTO outbox (key, enrollment_id, sequence_id, contact_id, position, status, created_at, "
            "attempts, settled_at, provider_id, email_to, email_subject, email_text, email_headers) "
            "VALUES ('old:1', 'old', 'live', 'ana', 1, 'delivered', ?, 1, ?, 'p-1', 'ana@example.com', 'Hi', "
            "'Hello', '{\"X-Old\":\"yes\"}')",
            (_micros(T0 - 3 * HOUR), _micros(T0 - 3 * HOUR)),
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
    finally:
        conn.close()


def test_a_file_from_an_older_version_is_upgraded_in_place(db: Path) -> None:
    """A schema-1 file opens, migrates to the current version keeping its data, and works."""
    _write_v1_database(db)
    with SQLiteStore(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.get_enrollment("e-live") == sample_enrollment("e-live", sequence_id="live", contact_id="ana")
        assert store.counters("live") == {(0, "recipients"): 1}
        assert store.count_due(T0) == 1, "the paused sequence's enrollment is not due"
        assert [e.id for e in store.claim_due(T0, limit=10, lease=HOUR, owner="w1")] == ["e-live"]
        store.save_sequence(sample_sequence("held", version=2), expected_version=1)
        assert [e.id for e in store.claim_due(T0, limit=10, lease=HOUR, owner="w1")] == ["e-held"]
        # The upgrade drops the old table without zeroing its pages, then puts the setting back.
        fresh = sqlite3.connect(":memory:")
        default = fresh.execute("PRAGMA secure_delete").fetchone()
        fresh.close()
        assert store._connection().execute("PRAGMA secure_delete").fetchone() == default
        old = store.get_message("old:1")
        assert old is not None
        assert (old.status, old.provider_id, old.settled_at) == (OutboxStatus.DELIVERED, "p-1", T0 - 3 * HOUR)
        assert old.email is not None
        assert (old.email.subject, old.email.text, dict(old.email.headers)) == ("Hi", "Hello", {"X-Old": "yes"})
    conn = _raw(db)
    try:
        versions = [r[0] for r in conn.execute("SELECT version FROM dripcore_migrations ORDER BY version")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        # Since version 5 the outbox is a rowid table, and pending messages have an index of their own.
        assert conn.execute("SELECT rowid FROM outbox WHERE key = 'old:1'").fetchone() is not None
        named = conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'outbox' AND sql IS NOT NULL")
        indexes = {row[0] for row in named}
        assert indexes == {
            "outbox",
            "outbox_pending_due",
            "outbox_pending_by_enrollment",
            "outbox_by_enrollment",
            "outbox_by_contact",
        }
    finally:
        conn.close()


def test_an_upgrade_keeps_the_hosts_own_views_and_triggers_on_the_outbox(db: Path) -> None:
    """Schema 5 rebuilds the outbox table: a view over it still reads it, and a trigger on it is
    made again and still fires."""
    _write_v1_database(db)
    conn = _raw(db)
    try:
        conn.executescript(
            """
            CREATE VIEW delivered_per_contact AS SELECT contact_id, count(*) AS n FROM outbox
                WHERE status = 'delivered' GROUP BY contact_id;
            CREATE TABLE audit (key TEXT, status TEXT);
            CREATE TRIGGER outbox_audit AFTER UPDATE OF status ON outbox
                BEGIN INSERT INTO audit VALUES (new.key, new.status); END;
            """
        )
    finally:
        conn.close()
    with SQLiteStore(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        (claimed,) = store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
        assert not isinstance(claimed, BrokenRecord)
        assert store.commit([Change(enrollment=sent(claimed, 1, T0, T0 + HOUR), outbox=(message(claimed, 1),))]) == []
        store.settle([Delivery(key="e-live:1", status=OutboxStatus.DELIVERED, at=T0)])
    conn = _raw(db)
    try:
        assert conn.execute("SELECT * FROM delivered_per_contact").fetchall() == [("ana", 2)]
        assert conn.execute("SELECT * FROM audit").fetchall() == [("e-live:1", "delivered")]
    finally:
        conn.close()


def test_a_schema_from_the_future_is_refused_untouched(db: Path) -> None:
    """A file written by a newer dripcore raises SchemaTooNew naming the path and both versions."""
    SQLiteStore(db).close()
    conn = _raw(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(SchemaTooNew) as caught:
        SQLiteStore(db)
    assert (caught.value.found, caught.value.supported) == (SCHEMA_VERSION + 3, SCHEMA_VERSION)
    assert str(db) in str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 3}" in str(caught.value)
    assert "Upgrade dripcore" in str(caught.value)
    assert db.read_bytes() == before


# --------------------------------------------------------------------------- bad paths and files


def test_a_file_that_is_not_a_database_is_refused_untouched(db: Path) -> None:
    """A text file is not overwritten: NotADripcoreDatabase names it."""
    db.write_text("name,email\nana,ana@example.com\n" * 100)
    before = db.read_bytes()
    with pytest.raises(NotADripcoreDatabase, match="not a SQLite database") as caught:
        SQLiteStore(db)
    assert caught.value.path == str(db)
    assert db.read_bytes() == before


def test_another_applications_database_is_refused_untouched(db: Path) -> None:
    """A SQLite file with someone else's tables is never written into."""
    conn = _raw(db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(NotADripcoreDatabase, match=r"another application.*users"):
        SQLiteStore(db)
    assert db.read_bytes() == before


def test_a_directory_is_not_a_database_path(tmp_path: Path) -> None:
    """Giving a directory raises InvalidStorePath, saying to name a file inside it."""
    with pytest.raises(InvalidStorePath, match="is a directory") as caught:
        SQLiteStore(tmp_path)
    assert caught.value.path == str(tmp_path)


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    """The parent directory must exist; dripcore creates the file, not directories."""
    with pytest.raises(InvalidStorePath, match="does not exist; create it first"):
        SQLiteStore(tmp_path / "nope" / "drip.db")


def _as_nobody(check: Callable[[], str], queue: Any) -> None:
    """In a forked child: drop root (if we are root), run ``check``, report what it returned or raised."""
    try:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        queue.put(check())
    except BaseException as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


def _unprivileged(check: Callable[[], str]) -> str:
    """Run ``check`` in a process without root's power to write anything (permissions then mean something)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=_as_nobody, args=(check, queue))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: forking with threads (see the next test)
        process.start()
    result: str = queue.get(timeout=30)
    process.join(10)
    return result


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="dripcore-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.chmod(0o755)
        shutil.rmtree(path, ignore_errors=True)


def _open_and_write(path: Path) -> Callable[[], str]:
    def check() -> str:
        with SQLiteStore(path) as store:
            store.save_sequence(sample_sequence("new"))
        return "wrote"

    return check


def test_a_read_only_file_is_refused_with_what_to_do(shared_dir: Path) -> None:
    """An unwritable database file: StoreReadOnly naming the path and the fix."""
    path = shared_dir / "drip.db"
    SQLiteStore(path).close()
    path.chmod(0o444)
    outcome = _unprivileged(_open_and_write(path))
    assert outcome.startswith("StoreReadOnly"), outcome
    assert str(path) in outcome
    assert "permissions" in outcome


def test_a_read_only_directory_is_refused_with_what_to_do(shared_dir: Path) -> None:
    """SQLite needs to create -wal and -shm files next to the database: the directory must be writable."""
    path = shared_dir / "drip.db"
    SQLiteStore(path).close()
    path.chmod(0o666)
    shared_dir.chmod(0o555)
    outcome = _unprivileged(_open_and_write(path))
    assert outcome.startswith("StoreReadOnly"), outcome
    assert "directory" in outcome
    assert str(path) in outcome


def test_a_write_refused_by_sqlite_becomes_store_read_only(db: Path) -> None:
    """A database that turns read-only under the store (here: query_only) raises StoreReadOnly, applies nothing."""
    SQLiteStore(db).close()
    with SQLiteStore(db, pragmas={"query_only": 1}) as store:
        with pytest.raises(StoreReadOnly, match=str(db)):
            store.save_sequence(sample_sequence())
        assert store.list_sequences() == []


# --------------------------------------------------------------------------- locks


def test_a_writer_waiting_too_long_gets_a_clear_error(db: Path) -> None:
    """Another process holding the write lock past busy_timeout: DatabaseLocked, and nothing written."""
    with SQLiteStore(db) as setup:
        setup.save_sequence(sample_sequence())
        setup.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
    blocker = _raw(db)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with SQLiteStore(db, busy_timeout=0.2) as store:
            with pytest.raises(DatabaseLocked) as caught:
                store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
            assert caught.value.timeout == 0.2
            assert str(db) in str(caught.value)
            assert "busy_timeout" in str(caught.value)
            assert store.count_due(T0) == 1, "readers are not blocked by the writer (WAL)"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with SQLiteStore(db) as store:
        assert [e.id for e in store.claim_due(T0, limit=10, lease=HOUR, owner="w2")] == ["e1"]


# --------------------------------------------------------------------------- a full disk


def _engine(store: SQLiteStore, sender: RecordingSender, clock: FakeClock, contacts: int) -> Drip:
    directory = MemoryContacts([Contact(id=f"c{i}", email=f"c{i}@example.com") for i in range(contacts)])
    return Drip(store=store, sender=sender, clock=clock, contacts=directory, lease=timedelta(minutes=5))


def _three_step_sequence() -> Sequence:
    return Sequence(
        id="seq",
        name="Three",
        status=SequenceStatus.ACTIVE,
        steps=tuple(Step(position=p, delay=Delay.hours(p - 1), subject=f"S{p}", text="Hi") for p in (1, 2, 3)),
    )


def _fill(store_path: Path, store: SQLiteStore) -> None:
    """Use every page the store's max_page_count allows, from another connection (another process filling the disk)."""
    limit = store._conn.execute("PRAGMA max_page_count").fetchone()[0]
    page_size = store._conn.execute("PRAGMA page_size").fetchone()[0]
    conn = _raw(store_path)
    conn.execute("CREATE TABLE IF NOT EXISTS ballast (data BLOB)")
    while conn.execute("PRAGMA page_count").fetchone()[0] < limit:
        conn.execute("INSERT INTO ballast VALUES (zeroblob(?))", (page_size // 2,))
    conn.close()


def test_a_full_disk_fails_the_commit_whole_and_nothing_is_marked_sent(db: Path) -> None:
    """The disk fills before the commit: StoreFull, no state advanced, no message queued, nothing sent;
    with space again, every step goes exactly once."""
    clock, sender = FakeClock(T0), RecordingSender()
    with SQLiteStore(db) as store:
        store.save_sequence(_three_step_sequence())
        for i in range(40):
            store.add_enrollment(sample_enrollment(f"e{i:02d}", contact_id=f"c{i}"), allow_reentry=False)
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    with SQLiteStore(db, pragmas={"max_page_count": pages + 2}) as store:
        _fill(db, store)
        with pytest.raises(StoreFull, match="disk") as caught:
            _engine(store, sender, clock, 40).tick()
        assert str(db) in str(caught.value)
        assert sender.sent == []
        assert store.find_messages() == []
        assert all(e.version == 0 and e.last_step_sent == 0 for e in store.find_enrollments(limit=100))
    conn = _raw(db)
    conn.execute("DROP TABLE ballast")
    conn.close()
    clock.advance(timedelta(minutes=5))  # the failed tick's leases run out
    with SQLiteStore(db) as store:
        drip = _engine(store, sender, clock, 40)
        for _ in range(5):
            drip.tick()
            clock.advance(HOUR)
        assert len(sender.sent) == 120
        assert sender.duplicate_attempts == 0


def test_a_disk_turning_read_only_mid_delivery_marks_nothing_sent(db: Path) -> None:
    """The file system goes read-only while emails go out (as after an I/O error): the settle fails whole
    with StoreReadOnly, no message is marked DELIVERED; later they are offered again and a key-honouring
    sender sends each exactly once."""
    clock = FakeClock(T0)
    failing = SQLiteStore(db)
    failing.save_sequence(_three_step_sequence())
    for i in range(30):
        failing.add_enrollment(sample_enrollment(f"e{i:02d}", contact_id=f"c{i}"), allow_reentry=False)

    class SenderOnAFailingDisk(RecordingSender):
        broken: SQLiteStore | None = failing

        def send(self, email: Any) -> str | None:
            if self.broken is not None:
                self.broken._conn.execute("PRAGMA query_only = 1")
            return super().send(email)

    sender = SenderOnAFailingDisk()
    try:
        with pytest.raises(StoreReadOnly, match=str(db)):
            _engine(failing, sender, clock, 30).tick()
        assert len(sender.sent) == 30
        pending = failing.find_messages(limit=100)
        assert len(pending) == 30
        assert {m.status for m in pending} == {OutboxStatus.PENDING}, "nothing may be marked sent by a failed settle"
        assert all(m.attempts == 0 for m in pending)
    finally:
        failing.close()
    sender.broken = None
    clock.advance(timedelta(minutes=5))  # the dead tick's message leases run out
    with SQLiteStore(db) as store:
        report = _engine(store, sender, clock, 30).tick()
        assert report.messages == 30
        assert {m.status for m in store.find_messages(limit=100)} == {OutboxStatus.DELIVERED}
        assert all(m.attempts == 1 for m in store.find_messages(limit=100))
    assert len(sender.sent) == 30
    assert sender.duplicate_attempts == 30, "each was offered again, and the sender honoured its key"


# --------------------------------------------------------------------------- corrupt rows


def _corrupt(path: Path, sql: str, *params: Any) -> None:
    conn = _raw(path)
    conn.execute(sql, params)
    conn.close()


def test_a_tick_reports_corrupt_rows_and_goes_on_with_the_others(db: Path) -> None:
    """Broken JSON, an unknown enum value, a garbled time: each is reported by id; the others are sent."""
    clock, sender = FakeClock(T0), RecordingSender()
    with SQLiteStore(db) as store:
        store.save_sequence(_three_step_sequence())
        for i in range(6):
            store.add_enrollment(sample_enrollment(f"e{i}", contact_id=f"c{i}"), allow_reentry=False)
    _corrupt(db, "UPDATE enrollments SET variables = '{\"plan\": ' WHERE id = 'e1'")
    _corrupt(db, "UPDATE enrollments SET exit_reason = 'teleported' WHERE id = 'e3'")
    _corrupt(db, "UPDATE enrollments SET enrolled_at = 'yesterday' WHERE id = 'e4'")
    with SQLiteStore(db) as store:
        report = _engine(store, sender, clock, 6).tick()
        assert sorted(error.id for error in report.errors) == ["e1", "e3", "e4"]
        assert {error.kind for error in report.errors} == {"enrollment"}
        assert any("teleported" in error.error for error in report.errors)
        assert sorted(email.enrollment_id for email in sender.sent) == ["e0", "e2", "e5"]
        with pytest.raises(CorruptRecord, match="e1"):
            store.get_enrollment("e1")
        assert [e.id for e in store.find_enrollments(limit=10)] == ["e0", "e2", "e5"], "listings skip them"
        clock.advance(timedelta(minutes=30))
        assert _engine(store, sender, clock, 6).tick().errors == (), "set aside for a while, not retried at once"


def test_a_corrupt_sequence_row_is_named(db: Path) -> None:
    """A sequence whose JSON is broken raises CorruptRecord on get, and is left out of listings."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence("good"))
        store.save_sequence(sample_sequence("bad"))
    _corrupt(db, 'UPDATE sequences SET body = \'{"id": "bad", "steps": [\' WHERE id = \'bad\'')
    with SQLiteStore(db) as store:
        with pytest.raises(CorruptRecord, match="sequences row 'bad'") as caught:
            store.get_sequence("bad")
        assert caught.value.table == "sequences"
        assert [s.id for s in store.list_sequences()] == ["good"]


# --------------------------------------------------------------------------- O(due)


def _claim_cost(store: SQLiteStore, now: datetime) -> int:
    """SQLite virtual-machine steps one claim takes (a measure of work, not of time)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store._conn.set_progress_handler(count, 10)
    try:
        claimed = store.claim_due(now, limit=1_000, lease=HOUR, owner="w1")
    finally:
        store._conn.set_progress_handler(None, 0)
    assert len(claimed) == 50
    return steps


def _population(store: SQLiteStore, total: int) -> None:
    sequence = sample_sequence()
    store.save_sequence(sequence)
    store.add_enrollments(
        (
            sample_enrollment(f"e{i:07d}", due=T0 - HOUR if i < 50 else T0 + timedelta(days=1 + i % 7))
            for i in range(total)
        ),
        allow_reentry=False,
    )


def test_claiming_costs_the_due_rows_not_the_table(tmp_path: Path) -> None:
    """Claiming 50 due enrollments does the same work among 1,000 or 20,000 rows (the partial due index)."""
    with SQLiteStore(tmp_path / "small.db") as small, SQLiteStore(tmp_path / "large.db") as large:
        _population(small, 1_000)
        _population(large, 20_000)
        small_cost, large_cost = _claim_cost(small, T0), _claim_cost(large, T0)
        assert large_cost < small_cost * 1.5, (small_cost, large_cost)
        plan = " ".join(
            str(row[-1])
            for row in large._conn.execute(
                "EXPLAIN QUERY PLAN SELECT rid FROM enrollments WHERE status = 'active' AND seq_live = 1 "
                "AND next_due <= 0 ORDER BY next_due, id LIMIT 5"
            )
        )
        assert "enrollments_due" in plan, plan


def _plans_of(store: SQLiteStore, call: Callable[[], object], starts: str) -> str:
    """The query plans of the statements starting with ``starts`` that ``call`` ran, as the store ran them."""
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        store._conn.set_trace_callback(None)
    ran = [sql for sql in statements if sql.lstrip().startswith(starts)]
    assert ran, statements
    return " | ".join(str(row[-1]) for sql in ran for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}"))


def test_a_pause_holding_retries_keeps_claiming_messages_on_the_pending_index(db: Path) -> None:
    """claim_messages and next_message_at read the small index of pending messages in order and ask
    each candidate's enrollment (by id) whether a pause holds it: never a scan of either table."""
    with SQLiteStore(db) as store:
        _population(store, 200)
        e = sample_enrollment("e0000001", due=T0 - HOUR)
        assert store.commit([Change(enrollment=sent(e, 1, T0, T0 + HOUR), outbox=(message(e, 1),))]) == []
        for call, starts in (
            (lambda: store.claim_messages(T0, limit=10, lease=HOUR, owner="w1"), "SELECT"),
            (store.next_message_at, "SELECT"),
        ):
            plan = _plans_of(store, call, starts)
            assert "outbox_pending_due" in plan, plan
            assert "SEARCH e USING INDEX sqlite_autoindex_enrollments_1 (id=?)" in plan, plan
            assert "SCAN" not in plan, plan
            assert "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize(
    ("paused", "policy"),
    [("sequence", PausePolicy.BUMP), ("sequence", PausePolicy.EXTEND), ("enrollment", PausePolicy.BUMP)],
)
def test_a_retry_pending_at_a_pause_waits_for_the_resume(db: Path, paused: str, policy: PausePolicy) -> None:
    """End to end: a send fails for now, then the sequence (or the enrollment) is paused: nothing goes
    while it is, the retry included. After the resume the retry goes; under EXTEND only once the rest
    of its backoff has passed again."""
    clock, recorder = FakeClock(T0), RecordingSender()
    flaky = FlakySender(recorder)
    steps = (Step(position=1, subject="S1", text="Hi"), Step(position=2, delay=Delay.days(1), subject="S2", text="Hi"))
    with SQLiteStore(db) as store:
        store.save_sequence(Sequence(id="seq", name="Two", status=SequenceStatus.ACTIVE, steps=steps))
        contacts = MemoryContacts([Contact(id="c0", email="c0@example.com")])
        drip = Drip(store=store, sender=flaky, clock=clock, contacts=contacts, retry_base=timedelta(minutes=10))
        flaky.fail_next(1)
        enrollment, _ = drip.enroll("seq", "c0")
        assert drip.tick().retried == 1
        if paused == "sequence":
            drip.pause("seq")
        else:
            drip.pause_enrollment(enrollment.id)
        clock.advance(2 * HOUR)
        assert drip.tick().sent == 0
        assert recorder.sent == []
        if paused == "sequence":
            drip.resume("seq", policy=policy)
        else:
            drip.resume_enrollment(enrollment.id, policy=policy)
        if policy is PausePolicy.EXTEND:
            assert drip.tick().sent == 0, "ten minutes of backoff were left at the pause"
            clock.advance(timedelta(minutes=10))
        assert drip.tick().sent == 1
        assert [email.subject for email in recorder.sent] == ["S1"]


# --------------------------------------------------------------------------- processes and threads


def _child_claims(store: SQLiteStore, queue: Any) -> None:
    queue.put([e.id for e in store.claim_due(T0, limit=10, lease=HOUR, owner="child")])


def test_a_store_opened_before_fork_reconnects_in_the_child(db: Path) -> None:
    """A forked child using the parent's store gets its own connection; both keep working."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        store.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_claims, args=(store, queue))
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking with threads alive (the store's checkpointer): this test
            # is about exactly that, and the store holds its checkpoints back while a fork happens.
            warnings.simplefilter("ignore", DeprecationWarning)
            child.start()
        assert queue.get(timeout=30) == ["e1"]
        child.join(10)
        assert child.exitcode == 0
        assert store.claim_due(T0, limit=10, lease=HOUR, owner="parent") == []
        store.add_enrollment(sample_enrollment("e2"), allow_reentry=False)
        assert [e.id for e in store.claim_due(T0, limit=10, lease=HOUR, owner="parent")] == ["e2"]


def test_threads_sharing_a_store_take_turns(db: Path) -> None:
    """Eight threads claiming from one store: every due enrollment goes to exactly one of them."""
    with SQLiteStore(db) as store:
        _population(store, 400)
        claimed: list[str] = []
        lock = threading.Lock()

        def claim(owner: str) -> None:
            while batch := store.claim_due(T0, limit=3, lease=HOUR, owner=owner):
                with lock:
                    claimed.extend(e.id for e in batch)

        threads = [threading.Thread(target=claim, args=(f"t{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed) == [f"e{i:07d}" for i in range(50)]


def test_a_closed_store_says_so(db: Path) -> None:
    """Using a closed store raises a clear error naming the file; closing twice is fine."""
    store = SQLiteStore(db)
    store.close()
    store.close()
    with pytest.raises(SQLiteStoreError, match="closed"):
        store.list_sequences()


# --------------------------------------------------------------------------- bulk import


def test_bulk_add_follows_the_add_enrollment_rules(db: Path) -> None:
    """add_enrollments: the same dedupe as add_enrollment, counters per created enrollment."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        store.add_enrollment(sample_enrollment("old", contact_id="ana"), allow_reentry=False)
        batch = [
            sample_enrollment("e1", contact_id="ana"),
            sample_enrollment("e2", contact_id="bob"),
            sample_enrollment("e3", contact_id="bob"),
            sample_enrollment("e4", contact_id="bob", key="order-1"),
        ]
        created = store.add_enrollments(
            batch, allow_reentry=False, counters=lambda e: [(e.sequence_id, 0, "recipients", 1)], batch_size=2
        )
        assert created == 2
        assert [e.id for e in store.find_enrollments(limit=10)] == ["e2", "e4", "old"]
        assert store.counters("seq") == {(0, "recipients"): 2}
        finished = attrs.evolve(
            sample_enrollment("old", contact_id="ana"),
            status=EnrollmentStatus.COMPLETED,
            next_step_due_at=None,
            ended_at=T0,
        )
        assert store.commit([Change(enrollment=finished)]) == []
        assert store.add_enrollments([sample_enrollment("e5", contact_id="ana")], allow_reentry=True) == 1


def test_next_due_for_gives_a_sequences_earliest_active_due_time(db: Path) -> None:
    """For operators' overviews: per sequence, the earliest due ACTIVE enrollment (None without one)."""
    with SQLiteStore(db) as store:
        _setup_two_sequences(store)
        assert store.next_due_for("s1") == T0 - HOUR
        assert store.next_due_for("s2") == T0 + HOUR
        assert store.next_due_for("missing") is None


def _setup_two_sequences(store: SQLiteStore) -> None:
    store.save_sequence(sample_sequence("s1"))
    store.save_sequence(sample_sequence("s2", status=SequenceStatus.PAUSED))
    for enrollment_id, sequence_id, due in (("a", "s1", T0), ("b", "s1", T0 - HOUR), ("c", "s2", T0 + HOUR)):
        store.add_enrollment(sample_enrollment(enrollment_id, sequence_id=sequence_id, due=due), allow_reentry=False)


def _checkpoint_threads(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"dripcore-checkpoint:{path}"]


def test_background_checkpoints_run_on_their_own_thread_and_stop_with_the_store(db: Path) -> None:
    """By default one checkpoint thread per store, gone after close(); with the option off, none."""
    store = SQLiteStore(db)
    store.save_sequence(sample_sequence())
    assert len(_checkpoint_threads(db)) == 1
    store.close()
    assert _checkpoint_threads(db) == []
    with SQLiteStore(db, background_checkpoints=False) as plain:
        plain.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
        assert _checkpoint_threads(db) == []
        assert plain.count_due(T0) == 1


def test_prune_messages_deletes_old_settled_messages_only(db: Path) -> None:
    """Settled (delivered or failed) messages older than the cutoff go, in batches; pending ones stay."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        changes = []
        for i in range(7):
            e = sample_enrollment(f"e{i}", contact_id=f"c{i}")
            store.add_enrollment(e, allow_reentry=False)
            changes.append(Change(enrollment=sent(e, 1, T0, T0 + HOUR), outbox=(message(e, 1),)))
        store.commit(changes)
        store.settle([Delivery(key=f"e{i}:1", status=OutboxStatus.DELIVERED, at=T0 + i * HOUR) for i in range(5)])
        store.settle([Delivery(key="e5:1", status=OutboxStatus.FAILED, at=T0, error="bounced")])
        assert store.prune_messages(T0 + 3 * HOUR, batch_size=2) == 4
        assert sorted(m.key for m in store.find_messages(limit=10)) == ["e3:1", "e4:1", "e6:1"]


@given(st.dictionaries(st.text(), st.text(), max_size=6))
def test_headers_json_is_the_json_encoders_exactly(headers: dict[str, str]) -> None:
    """The outbox writes headers with a hand-rolled encoder for speed: same text as dumps(), and it reads back."""
    assert dumps_text_map(headers) == dumps(headers)
    assert json.loads(dumps_text_map(headers)) == headers


# --------------------------------------------------------------------------- commit of claimed enrollments


def _statements(store: SQLiteStore) -> list[str]:
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    return seen


def test_committing_what_was_just_claimed_writes_without_reading_back(db: Path) -> None:
    """The dispatch's commit of its own claims: no SELECT, the new state and message stored, leases ended."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        store.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
        (claimed,) = store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
        assert not isinstance(claimed, BrokenRecord)
        seen = _statements(store)
        refused = store.commit([Change(enrollment=sent(claimed, 1, T0, T0 + HOUR), outbox=(message(claimed, 1),))],
                               owner="w1")  # fmt: skip
        store._conn.set_trace_callback(None)
        assert refused == []
        assert not [s for s in seen if s.lstrip().upper().startswith("SELECT")], seen
        stored = store.get_enrollment("e1")
        assert stored is not None
        assert stored.last_step_sent == 1
        assert stored.version == claimed.version + 1
        # The message is leased to w1 (it delivers inline), and the enrollment waits for it.
        assert store.claim_messages(T0 + HOUR / 2, limit=10, lease=HOUR, owner="w2") == []
        assert store.claim_due(T0 + 2 * HOUR, limit=10, lease=HOUR, owner="w2") == []


def test_a_claim_changed_by_someone_else_is_refused_and_nothing_of_the_batch_is_lost(db: Path) -> None:
    """The fast path finds a version that moved on: it undoes itself and the checked path refuses
    just that enrollment, committing the others."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        for i in (1, 2):
            store.add_enrollment(sample_enrollment(f"e{i}", contact_id=f"c{i}"), allow_reentry=False)
        first, second = store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
        assert not isinstance(first, BrokenRecord)
        assert not isinstance(second, BrokenRecord)
        paused = attrs.evolve(first, status=EnrollmentStatus.PAUSED, paused_at=T0)
        assert store.commit([Change(enrollment=paused)]) == []  # an operator's change, no owner
        changes = [Change(enrollment=sent(e, 1, T0, T0 + HOUR), outbox=(message(e, 1),)) for e in (first, second)]
        assert store.commit(changes, owner="w1") == ["e1"]
        one, two = store.get_enrollment("e1"), store.get_enrollment("e2")
        assert one is not None
        assert one.status is EnrollmentStatus.PAUSED
        assert one.last_step_sent == 0
        assert two is not None
        assert two.last_step_sent == 1
        assert [m.key for m in store.find_messages(limit=10)] == ["e2:1"]


def test_two_changes_of_one_claimed_enrollment_apply_in_turn(db: Path) -> None:
    """A batch may carry an enrollment twice (its second change built on the first): both apply."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        store.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
        (claimed,) = store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
        assert not isinstance(claimed, BrokenRecord)
        step1 = sent(claimed, 1, T0, T0 + HOUR)
        step2 = attrs.evolve(sent(step1, 2, T0, T0 + 2 * HOUR), version=claimed.version + 1)
        assert store.commit([Change(enrollment=step1), Change(enrollment=step2)], owner="w1") == []
        stored = store.get_enrollment("e1")
        assert stored is not None
        assert stored.last_step_sent == 2
        assert stored.version == claimed.version + 2


def test_a_stale_commit_never_lands_on_a_new_enrollment_that_reused_the_row(db: Path) -> None:
    """A claimed enrollment is exited and its sequence deleted; a new enrollment gets the freed row
    id at version 0. The late commit of the old claim is refused and the new enrollment untouched."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence("keep"))
        store.save_sequence(sample_sequence("old"))
        store.add_enrollment(sample_enrollment("first", sequence_id="keep", due=T0 + 100 * HOUR), allow_reentry=False)
        store.add_enrollment(sample_enrollment("gone", sequence_id="old"), allow_reentry=False)
        (claimed,) = store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
        assert not isinstance(claimed, BrokenRecord)
        assert store.commit([Change(enrollment=finished(claimed, EnrollmentStatus.EXITED))]) == []
        store.delete_sequence("old")
        store.add_enrollment(sample_enrollment("new", sequence_id="keep", contact_id="ana"), allow_reentry=False)
        late = Change(enrollment=sent(claimed, 1, T0, T0 + 24 * HOUR), outbox=(message(claimed, 1),))
        assert store.commit([late], owner="w1") == ["gone"]
        new = store.get_enrollment("new")
        assert new is not None
        assert (new.last_step_sent, new.version) == (0, 0)
        assert store.find_messages(limit=10) == []


@pytest.mark.parametrize(
    ("column", "value"),
    [("contact_id", ""), ("contact_id", "   "), ("contact_id", "a\nb"), ("sequence_id", "x" * 300), ("id", "e\x00")],
)
def test_a_row_with_a_broken_id_field_is_still_reported_as_broken(db: Path, column: str, value: str) -> None:
    """The quick decoding of plain rows refuses what the model refuses: such a row is a BrokenRecord."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        store.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
    _corrupt(db, f"UPDATE enrollments SET {column} = ?", value)
    with SQLiteStore(db) as store:
        (claimed,) = store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
        assert isinstance(claimed, BrokenRecord)


@pytest.mark.parametrize("owner", ["w1", None], ids=["claimed", "checked"])
def test_a_batch_stores_its_messages_whatever_their_key_order_and_keeps_the_first_of_one_key(
    db: Path, owner: str | None
) -> None:
    """The outbox rows of a commit are inserted in key order: every message lands, and when a
    batch holds one key twice the first stays (the insert ignores a key it already has)."""
    with SQLiteStore(db) as store:
        store.save_sequence(sample_sequence())
        for name in ("e3", "e1", "e2"):
            store.add_enrollment(sample_enrollment(name, contact_id=f"c-{name}"), allow_reentry=False)
        claimed = store.claim_due(T0, limit=10, lease=HOUR, owner="w1")
        enrollments = {e.id: e for e in claimed if not isinstance(e, BrokenRecord)}
        assert sorted(enrollments) == ["e1", "e2", "e3"]
        first = message(enrollments["e2"], 1)
        again = attrs.evolve(first, email=attrs.evolve(first.email, subject="Second"))
        changes = [
            Change(enrollment=sent(enrollments[name], 1, T0, T0 + HOUR), outbox=outbox)
            for name, outbox in (("e3", (message(enrollments["e3"], 1),)), ("e2", (first, again)),
                                 ("e1", (message(enrollments["e1"], 1),)))
        ]  # fmt: skip
        assert store.commit(changes, owner=owner) == []
        assert sorted(m.key for m in store.find_messages(limit=10)) == ["e1:1", "e2:1", "e3:1"]
        kept = store.get_message("e2:1")
        assert kept is not None
        assert kept.email is not None
        assert kept.email.subject == "Step 1"


def test_both_sql_stores_raise_the_same_schema_and_corruption_errors() -> None:
    """CorruptRecord and SchemaTooNew are defined once (dripcore.errors): the adapters' names
    are the same classes, so one ``except`` or ``isinstance`` covers both stores."""
    from dripcore import errors

    assert CorruptRecord is errors.CorruptRecord
    assert SchemaTooNew is errors.SchemaTooNew
    assert issubclass(CorruptRecord, errors.UnreadableRecord)
    postgres = pytest.importorskip("dripcore.adapters.postgres")
    assert postgres.CorruptRecord is CorruptRecord
    assert postgres.SchemaTooNew is SchemaTooNew
