"""Test support that ships with dripcore: fakes for your tests, and (for adapter
authors) the storage contract kit.

>>> from dripcore.testing import FakeClock, RecordingSender, MemoryContacts, RecordingEvents
"""

from .fakes import DailyCap, FakeClock, FlakySender, MemoryContacts, NullSender, RecordingEvents, RecordingSender

__all__ = [
    "DailyCap",
    "FakeClock",
    "FlakySender",
    "MemoryContacts",
    "NullSender",
    "RecordingEvents",
    "RecordingSender",
]
