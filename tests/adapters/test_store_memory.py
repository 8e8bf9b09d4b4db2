"""MemoryStore, the reference, passes the storage contract kit it defines the meaning of."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from dripcore.adapters.memory import MemoryStore
from dripcore.ports import Store
from dripcore.testing.contract import StoreContract, StoreStateMachine


class TestMemoryStore(StoreContract):
    """Every contract test; the multiprocess ones skip visibly (memory is one process)."""

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        with MemoryStore() as store:
            yield store


class MemoryAgreesWithMemory(StoreStateMachine):
    """The state machine itself is sound: two memory stores never disagree."""

    def make_store(self) -> Store:
        return MemoryStore()


TestMemoryStateMachine = MemoryAgreesWithMemory.TestCase
TestMemoryStateMachine.settings = settings(
    max_examples=min(settings.default.max_examples, 200), stateful_step_count=30, deadline=None
)
