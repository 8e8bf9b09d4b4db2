"""One Drip ticked from several threads, and several Drips on one store: over thousands of steps,
nothing lost and nothing offered twice (no per-batch state lives on the Drip)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dripcore import Contact, Delay, Drip, EnrollmentStatus, Sequence, SequenceStatus, Step
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Store
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender
from tests.builders import T0

CONTACTS = 600
STEPS = 3
THREADS = 4


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "drip.db")
    yield made
    made.close()


def populate(drip: Drip) -> None:
    drip.save_sequence(
        Sequence(
            id="s", name="S", status=SequenceStatus.ACTIVE,
            steps=tuple(
                Step(position=p, delay=Delay.immediately(), subject=f"Step {p} for {{{{firstName}}}}", text="Hi")
                for p in range(1, STEPS + 1)
            ),
        )
    )  # fmt: skip
    for i in range(CONTACTS):
        drip.enroll("s", f"c{i:04d}")


def tick_until_done(drips: list[Drip], store: Store) -> list[BaseException]:
    """Tick every Drip from THREADS threads until nothing is left; the exceptions the threads met."""
    failures: list[BaseException] = []

    def work(drip: Drip) -> None:
        try:
            idle = 0
            while idle < 3:
                report = drip.tick()
                idle = 0 if (report.claimed or report.messages or report.sent) else idle + 1
        except BaseException as exc:  # reported to the test, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(drips[i % len(drips)],)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a ticking thread never finished"
    # A last tick in this thread mops up what a thread left under its own fresh claim.
    for drip in drips:
        while drip.tick().claimed:
            pass
    return failures


def assert_every_step_once(store: Store, sender: RecordingSender) -> None:
    keys = [email.idempotency_key for email in sender.sent]
    assert len(keys) == len(set(keys)) == CONTACTS * STEPS, "a step was lost"
    assert sender.duplicate_attempts == 0, f"{sender.duplicate_attempts} keys were offered twice"
    done = store.find_enrollments(statuses=[EnrollmentStatus.COMPLETED], limit=CONTACTS + 1)
    assert len(done) == CONTACTS
    for i in range(CONTACTS):
        subjects = [e.subject for e in sender.to(f"c{i:04d}@example.com")]
        assert subjects == [f"Step {p} for C{i:04d}" for p in range(1, STEPS + 1)], "steps out of order"


def contacts() -> MemoryContacts:
    return MemoryContacts(
        Contact(id=f"c{i:04d}", email=f"c{i:04d}@example.com", first_name=f"C{i:04d}") for i in range(CONTACTS)
    )


def test_one_drip_ticked_from_several_threads_loses_and_doubles_nothing(store: Store) -> None:
    """Four threads tick one Drip (its sender four sends in flight each) over 1,800 steps."""
    sender = RecordingSender(max_in_flight=4)
    drip = Drip(store=store, sender=sender, contacts=contacts(), clock=FakeClock(T0), batch_size=50)
    populate(drip)
    assert tick_until_done([drip], store) == []
    assert_every_step_once(store, sender)


def test_several_drips_on_one_store_lose_and_double_nothing(store: Store) -> None:
    """Four Drips (four workers) share one store and one sender, each ticked from its own thread."""
    sender = RecordingSender(max_in_flight=2)
    directory, clock = contacts(), FakeClock(T0)
    drips = [
        Drip(store=store, sender=sender, contacts=directory, clock=clock, batch_size=50, worker_id=f"w{i}")
        for i in range(THREADS)
    ]
    populate(drips[0])
    assert tick_until_done(drips, store) == []
    assert_every_step_once(store, sender)
