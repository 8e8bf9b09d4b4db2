"""SQLiteStore passes the storage contract kit and agrees with MemoryStore under random operations."""

from __future__ import annotations

import functools
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Store
from dripcore.testing.contract import StoreContract, StoreFactory, StoreStateMachine


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
