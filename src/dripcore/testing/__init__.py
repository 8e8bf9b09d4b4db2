"""Test support that ships with dripcore: fakes for your tests, and (for adapter
authors) the storage contract kit.

>>> from dripcore.testing import FakeClock, RecordingSender, MemoryContacts, RecordingEvents

The contract kit (:class:`StoreContract`, :class:`StoreStateMachine`) lives in
:mod:`dripcore.testing.contract` and needs pytest and Hypothesis; it is loaded
only when first asked for, so importing the fakes needs neither::

    from dripcore.testing import StoreContract            # or
    from dripcore.testing.contract import StoreContract, StoreStateMachine
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fakes import DailyCap, FakeClock, FlakySender, MemoryContacts, NullSender, RecordingEvents, RecordingSender

if TYPE_CHECKING:
    from .contract import StoreContract, StoreStateMachine

__all__ = [
    "DailyCap",
    "FakeClock",
    "FlakySender",
    "MemoryContacts",
    "NullSender",
    "RecordingEvents",
    "RecordingSender",
    "StoreContract",
    "StoreStateMachine",
]

_CONTRACT_NAMES = frozenset({"StoreContract", "StoreStateMachine"})


def __getattr__(name: str) -> Any:
    """Load the contract kit (which imports pytest and Hypothesis) on first use."""
    if name in _CONTRACT_NAMES:
        from . import contract

        return getattr(contract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
