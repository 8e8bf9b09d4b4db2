"""The bodies of the contract kit's multi-process tests, in a module light enough for spawned children.

A child process started with the ``spawn`` method imports this module (not
:mod:`dripcore.testing.contract`, which needs pytest and Hypothesis), opens the
store with the adapter's picklable factory, waits at a barrier with its
siblings, then races them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ports import Change, Store
from ._samples import HOUR, T0, message, sample_enrollment, sent

StoreFactory = Callable[[], Store]


def claim_worker(factory: StoreFactory, owner: str, barrier: Any, results: Any) -> None:
    store = factory()
    try:
        barrier.wait(30)
        mine: list[str] = []
        while batch := store.claim_due(T0, limit=3, lease=HOUR, owner=owner):
            mine.extend(item.id for item in batch)
        results.put((owner, mine))
    finally:
        store.close()


def add_worker(factory: StoreFactory, index: int, barrier: Any, results: Any) -> None:
    store = factory()
    try:
        barrier.wait(30)
        e = sample_enrollment(f"race-{index}", contact_id="ana")
        stored, created = store.add_enrollment(e, allow_reentry=True, counters=[("seq", 0, "recipients", 1)])
        results.put((index, stored.id, created))
    finally:
        store.close()


def add_batch_worker(factory: StoreFactory, index: int, barrier: Any, results: Any) -> None:
    store = factory()
    try:
        barrier.wait(30)
        batch = [sample_enrollment(f"batch-{index}", contact_id="ana"), sample_enrollment(f"own-{index}")]
        counters = [("seq", 0, "recipients", 1)]
        (stored, created), _ = store.add_enrollment_batch(batch, allow_reentry=True, counters=lambda e: counters)
        results.put((index, stored.id, created))
    finally:
        store.close()


def commit_worker(factory: StoreFactory, index: int, barrier: Any, results: Any) -> None:
    store = factory()
    try:
        barrier.wait(30)
        e = sample_enrollment("e1")
        change = Change(
            enrollment=sent(e, 1, T0, T0 + HOUR),
            outbox=(message(e, 1, key=f"e1:1:{index}"),),
            counters=(("seq", 1, "sent", 1),),
        )
        results.put((index, store.commit([change], owner=f"w{index}")))
    finally:
        store.close()


def claim_worker_indexed(factory: StoreFactory, index: int, barrier: Any, results: Any) -> None:
    claim_worker(factory, f"w{index}", barrier, results)
