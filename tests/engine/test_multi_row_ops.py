"""Operations over many enrollments (activate with enroll_existing, archive, resume, an edit's
replan) either apply completely or can be called again to finish, idempotently, after a store
error injected half-way, on the memory store and a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from dripcore import (
    Contact,
    Delay,
    Drip,
    EnrollmentStatus,
    PausePolicy,
    Sequence,
    SequenceStatus,
    Step,
    StoreError,
    Trigger,
    TriggerType,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Change, Store
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender
from tests.builders import T0

PEOPLE = 1_200


class Injected(StoreError):
    """The store error this module injects."""


class FailingMemoryStore(MemoryStore):
    """Raises on the ``fail_on``-th call of a write method (counting from 1), once."""

    fail_on: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.fail_on = {}
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.fail_on.get(method) == self.calls[method]:
            raise Injected(f"injected failure of {method} call {self.calls[method]}")

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        self._maybe_fail("commit")
        return super().commit(changes, owner=owner)

    def add_enrollment(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("add_enrollment")
        return super().add_enrollment(*args, **kwargs)


class FailingSQLiteStore(SQLiteStore):
    """The same injection on a real SQLite file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail_on: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    _maybe_fail = FailingMemoryStore._maybe_fail

    def commit(self, changes: Seq[Change], *, owner: str | None = None) -> list[str]:
        self._maybe_fail("commit")
        return super().commit(changes, owner=owner)

    def add_enrollment(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("add_enrollment")
        return super().add_enrollment(*args, **kwargs)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = FailingMemoryStore() if request.param == "memory" else FailingSQLiteStore(tmp_path / "drip.db")
    yield made
    made.close()


def tips(**changes: Any) -> Sequence:
    return attrs.evolve(
        Sequence(
            id="tips",
            name="Tips",
            trigger=Trigger(type=TriggerType.LIST_ADDED, value="newsletter"),
            steps=(
                Step(position=1, delay=Delay.days(1), subject="One", text="1"),
                Step(position=2, delay=Delay.days(3), subject="Two", text="2"),
            ),
        ),
        **changes,
    )


def world(store: Store) -> tuple[Drip, FakeClock]:
    contacts = MemoryContacts(Contact(id=f"c{i:04d}", email=f"c{i:04d}@example.com") for i in range(PEOPLE))
    for i in range(PEOPLE):
        contacts.join(f"c{i:04d}", TriggerType.LIST_ADDED, "newsletter")
    clock = FakeClock(T0)
    drip = Drip(store=store, sender=RecordingSender(), contacts=contacts, clock=clock)
    return drip, clock


def live(store: Store, sequence_id: str = "tips") -> list[Any]:
    return store.find_enrollments(sequence_id=sequence_id, statuses=[EnrollmentStatus.ACTIVE], limit=PEOPLE * 2)


def enroll_everyone(drip: Drip) -> None:
    drip.save_sequence(tips(status=SequenceStatus.ACTIVE))
    for i in range(PEOPLE):
        drip.enroll("tips", f"c{i:04d}")


def test_activate_with_enroll_existing_interrupted_half_way_finishes_when_called_again(store: Store) -> None:
    """A failure after 600 of 1,200 enrollments leaves a draft; activating again enrolls the rest, once each."""
    drip, _ = world(store)
    drip.save_sequence(tips())
    store.fail_on["add_enrollment"] = 601  # type: ignore[attr-defined]
    with pytest.raises(Injected):
        drip.activate("tips", enroll_existing=True)
    assert drip.get_sequence("tips").status is SequenceStatus.DRAFT, "nothing goes out before it is active"
    assert len(live(store)) == 600
    assert store.claim_due(T0 + timedelta(days=30), limit=10, lease=timedelta(minutes=5), owner="w") == []

    activated = drip.activate("tips", enroll_existing=True)

    assert activated.status is SequenceStatus.ACTIVE
    enrollments = live(store)
    assert len(enrollments) == PEOPLE
    assert len({e.contact_id for e in enrollments}) == PEOPLE, "nobody enrolled twice"
    assert drip.stats("tips").recipients == PEOPLE


def test_archive_interrupted_half_way_finishes_when_called_again(store: Store) -> None:
    """700 enrollments left active by a failed archive exit when archive() is called again; then it can be deleted."""
    drip, _ = world(store)
    enroll_everyone(drip)
    store.fail_on["commit"] = 2  # type: ignore[attr-defined]  # the second page of 500
    with pytest.raises(Injected):
        drip.archive("tips")
    assert drip.get_sequence("tips").status is SequenceStatus.ARCHIVED
    assert len(live(store)) == PEOPLE - 500

    drip.archive("tips")

    assert live(store) == []
    stats = drip.stats("tips")
    assert stats.exited == PEOPLE
    assert stats.exited_by_reason == {"archived": PEOPLE}
    drip.delete_sequence("tips")


def test_resume_extend_is_all_or_nothing_and_a_retry_shifts_once(store: Store) -> None:
    """A resume that fails changes nothing; the retry moves every due time by the pause, once."""
    drip, clock = world(store)
    enroll_everyone(drip)
    due_before = {e.id: e.next_step_due_at for e in live(store)}
    drip.pause("tips")
    clock.advance(timedelta(hours=10))

    original = store.resume_sequence

    def failing(*args: Any, **kwargs: Any) -> int:
        if isinstance(store, SQLiteStore):  # a real failure mid-statement: a trigger aborts row 700's update
            conn = sqlite3.connect(store.path)
            conn.execute(
                "CREATE TRIGGER boom BEFORE UPDATE OF next_due ON enrollments WHEN NEW.id = "
                f"'{sorted(due_before)[700]}' BEGIN SELECT RAISE(ABORT, 'injected'); END"
            )
            conn.commit()
            conn.close()
            try:
                return original(*args, **kwargs)
            finally:
                conn = sqlite3.connect(store.path)
                conn.execute("DROP TRIGGER boom")
                conn.commit()
                conn.close()
        raise Injected("injected failure of resume_sequence")

    store.resume_sequence = failing  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        drip.resume("tips", policy=PausePolicy.EXTEND)
    store.resume_sequence = original  # type: ignore[method-assign]
    assert drip.get_sequence("tips").status is SequenceStatus.PAUSED
    assert {e.id: e.next_step_due_at for e in live(store)} == due_before, "a failed resume changed nothing"

    clock.advance(timedelta(hours=10))
    drip.resume("tips", policy=PausePolicy.EXTEND)

    assert drip.get_sequence("tips").status is SequenceStatus.ACTIVE
    shifted = {e.id: e.next_step_due_at for e in live(store)}
    assert shifted == {i: due + timedelta(hours=20) for i, due in due_before.items()}, "shifted by the pause, once"


def test_resume_extend_on_a_store_without_resume_sequence_still_shifts(tmp_path: Path) -> None:
    """A third-party store without resume_sequence gets the page-by-page shift."""

    class OldStore(MemoryStore):
        def resume_sequence(self, *args: Any, **kwargs: Any) -> int:
            raise NotImplementedError

    store = OldStore()
    drip, clock = world(store)
    enroll_everyone(drip)
    due_before = {e.id: e.next_step_due_at for e in live(store)}
    drip.pause("tips")
    clock.advance(timedelta(hours=10))
    drip.resume("tips", policy=PausePolicy.EXTEND)
    assert {e.id: e.next_step_due_at for e in live(store)} == {
        i: d + timedelta(hours=10) for i, d in due_before.items()
    }


def test_an_edit_whose_replan_fails_is_stored_and_saving_it_again_replans_everyone(store: Store) -> None:
    """The edit is stored first (ticks read the new steps at once); when its replan fails half-way,
    saving it again replans every enrollment, including those the failure left on the old plan."""
    drip, _ = world(store)
    enroll_everyone(drip)
    current = drip.get_sequence("tips")
    sooner = Step(position=1, delay=Delay.hours(2), subject="One", text="1")
    edit = attrs.evolve(current, steps=(sooner, current.steps[1]))
    store.fail_on["commit"] = 2  # type: ignore[attr-defined]
    with pytest.raises(Injected):
        drip.save_sequence(edit)
    assert drip.get_sequence("tips").steps == edit.steps, "the edit is stored before its replan"
    due = sorted(e.next_step_due_at for e in live(store))
    assert due.count(T0 + timedelta(hours=2)) == 500
    assert due.count(T0 + timedelta(days=1)) == PEOPLE - 500

    saved = drip.save_sequence(edit)

    # The same definition again writes no new version, and finishes the replan it left pending.
    assert drip.get_sequence("tips").version == saved.version == current.version + 1
    assert {e.next_step_due_at for e in live(store)} == {T0 + timedelta(hours=2)}, "everyone on the new plan"
    # And once finished, saving it again changes no enrollment.
    before = {e.id: (e.next_step_due_at, e.version) for e in live(store)}
    drip.save_sequence(attrs.evolve(edit, version=saved.version))
    assert {e.id: (e.next_step_due_at, e.version) for e in live(store)} == before


def test_saving_an_unchanged_sequence_keeps_an_extend_shift(store: Store) -> None:
    """With no replan pending, re-saving the same steps (a deploy of sequences kept as code) leaves every
    enrollment as it is, EXTEND shifts included."""
    drip, clock = world(store)
    enroll_everyone(drip)
    drip.pause("tips")
    clock.advance(timedelta(hours=10))
    drip.resume("tips", policy=PausePolicy.EXTEND)
    before = {e.id: e.next_step_due_at for e in live(store)}
    drip.save_sequence(drip.get_sequence("tips"))
    assert {e.id: e.next_step_due_at for e in live(store)} == before
