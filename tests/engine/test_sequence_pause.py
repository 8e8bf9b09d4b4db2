"""A sequence's pause shows on its enrollments: while it is paused, ``enrollments()``,
``get_enrollment()``, ``stats()`` and ``overview()`` report every live enrollment as paused; resume
gives them back as active under the resume policy, and one paused on its own stays paused. On the
memory store and a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dripcore import (
    Contact,
    Delay,
    Drip,
    EnrollmentStatus,
    PausePolicy,
    Sequence,
    SequenceStateError,
    SequenceStatus,
    Step,
    StoreError,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Store
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender
from tests.builders import T0

READERS = 620  # more than one page (500) of enrollments


class Injected(StoreError):
    """The store error this module injects."""


class FailingMemoryStore(MemoryStore):
    """Raises on the next ``save_sequence`` once ``fail_next_save`` is set."""

    fail_next_save = False

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        if self.fail_next_save:
            self.fail_next_save = False
            raise Injected(f"injected failure saving {sequence.id}")
        super().save_sequence(sequence, expected_version=expected_version)


class FailingSQLiteStore(SQLiteStore):
    """The same injection on a real SQLite file."""

    fail_next_save = False

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        if self.fail_next_save:
            self.fail_next_save = False
            raise Injected(f"injected failure saving {sequence.id}")
        super().save_sequence(sequence, expected_version=expected_version)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = FailingMemoryStore() if request.param == "memory" else FailingSQLiteStore(tmp_path / "drip.db")
    yield made
    made.close()


def newsletter() -> Sequence:
    return Sequence(
        id="newsletter",
        name="Newsletter course",
        status=SequenceStatus.ACTIVE,
        steps=(
            Step(position=1, subject="Lesson 1", text="1"),
            Step(position=2, delay=Delay.days(1), subject="Lesson 2", text="2"),
            Step(position=3, delay=Delay.days(1), subject="Lesson 3", text="3"),
        ),
    )


def reader(i: int) -> str:
    return f"reader{i:04d}"


class Course:
    """A newsletter course with ``READERS`` readers enrolled; Lesson 1 went to everyone at T0."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = FakeClock(T0)
        self.sender = RecordingSender()
        contacts = MemoryContacts(Contact(id=reader(i), email=f"{reader(i)}@example.com") for i in range(READERS))
        self.drip = Drip(store=store, sender=self.sender, contacts=contacts, clock=self.clock)
        self.drip.save_sequence(newsletter())
        for i in range(READERS):
            self.drip.enroll("newsletter", reader(i))
        while self.drip.tick().sent:
            pass
        self.everyone = self.all_enrollments()

    def all_enrollments(self, status: EnrollmentStatus | None = None) -> list[Any]:
        return self.drip.enrollments("newsletter", status=status, limit=READERS * 2)

    def stored(self, status: EnrollmentStatus) -> list[Any]:
        return self.store.find_enrollments(sequence_id="newsletter", statuses=[status], limit=READERS * 2)

    def first(self) -> Any:
        return self.everyone[0]


@pytest.fixture
def course(store: Store) -> Course:
    return Course(store)


def test_pausing_a_sequence_shows_every_live_enrollment_as_paused(course: Course) -> None:
    """stats().paused is the live count, enrollments(status=PAUSED) lists them all, none is active."""
    drip = course.drip
    assert drip.stats("newsletter").active == READERS

    paused = drip.pause("newsletter")

    stats = drip.stats("newsletter")
    assert (stats.active, stats.paused) == (0, READERS)
    listed = course.all_enrollments(EnrollmentStatus.PAUSED)
    assert sorted(e.id for e in listed) == sorted(e.id for e in course.everyone)
    assert {(e.status, e.paused_at) for e in listed} == {(EnrollmentStatus.PAUSED, paused.paused_at)}
    assert course.all_enrollments(EnrollmentStatus.ACTIVE) == []
    assert {e.status for e in course.all_enrollments()} == {EnrollmentStatus.PAUSED}
    assert drip.get_enrollment(course.first().id).status is EnrollmentStatus.PAUSED
    (summary,) = drip.overview()
    assert (summary.active_enrollments, summary.paused_enrollments) == (0, READERS)


def test_paused_list_pages_through_held_and_individually_paused_together(course: Course) -> None:
    """limit/offset walk the held and the one-by-one paused enrollments as one id-ordered list."""
    drip = course.drip
    for e in course.everyone[::7]:
        drip.pause_enrollment(e.id)
    drip.pause("newsletter")

    pages = [drip.enrollments("newsletter", status=EnrollmentStatus.PAUSED, limit=100, offset=o)
             for o in range(0, READERS, 100)]  # fmt: skip

    ids = [e.id for page in pages for e in page]
    assert ids == sorted(e.id for e in course.everyone)


def test_pausing_writes_no_enrollment_and_the_tick_sends_nothing(course: Course) -> None:
    """The pause is one write of the sequence: enrollments stay stored ACTIVE, and nothing is claimed."""
    drip = course.drip
    drip.pause("newsletter")
    course.clock.advance(timedelta(days=5))

    report = drip.tick()

    assert report.sent == 0
    assert len(course.stored(EnrollmentStatus.ACTIVE)) == READERS
    assert len(course.sender.sent) == READERS


def test_resume_bump_gives_them_back_as_active_with_their_due_times(course: Course) -> None:
    """BUMP: every held enrollment is active again, due as before; the overdue lesson goes once, now."""
    drip = course.drip
    due = {e.id: e.next_step_due_at for e in course.everyone}
    drip.pause("newsletter")
    course.clock.advance(timedelta(days=5))

    drip.resume("newsletter", policy=PausePolicy.BUMP)

    stats = drip.stats("newsletter")
    assert (stats.active, stats.paused) == (READERS, 0)
    back = course.all_enrollments(EnrollmentStatus.ACTIVE)
    assert {e.id: e.next_step_due_at for e in back} == due
    assert {e.paused_at for e in back} == {None}
    while drip.tick().sent:
        pass
    assert [e.subject for e in course.sender.to(f"{reader(0)}@example.com")] == ["Lesson 1", "Lesson 2"]


def test_resume_extend_moves_their_due_times_by_the_pause(course: Course) -> None:
    """EXTEND: every held enrollment is active again, due later by the length of the pause."""
    drip = course.drip
    due = {e.id: e.next_step_due_at for e in course.everyone}
    drip.pause("newsletter")
    course.clock.advance(timedelta(hours=6))

    drip.resume("newsletter", policy=PausePolicy.EXTEND)

    back = course.all_enrollments(EnrollmentStatus.ACTIVE)
    assert {e.id: e.next_step_due_at for e in back} == {i: d + timedelta(hours=6) for i, d in due.items()}


def test_an_enrollment_paused_on_its_own_stays_paused_after_the_sequence_resumes(course: Course) -> None:
    """The operator's pause outlives the sequence's: resume gives back only what the sequence held."""
    drip = course.drip
    ana = course.first()
    drip.pause_enrollment(ana.id)
    own_pause = drip.get_enrollment(ana.id).paused_at
    drip.pause("newsletter")
    course.clock.advance(timedelta(hours=3))
    assert drip.get_enrollment(ana.id).paused_at == own_pause, "it shows its own pause, not the sequence's"

    drip.resume("newsletter", policy=PausePolicy.EXTEND)

    assert drip.get_enrollment(ana.id).status is EnrollmentStatus.PAUSED
    assert drip.get_enrollment(ana.id).next_step_due_at == ana.next_step_due_at
    stats = drip.stats("newsletter")
    assert (stats.active, stats.paused) == (READERS - 1, 1)
    assert [e.id for e in course.all_enrollments(EnrollmentStatus.PAUSED)] == [ana.id]
    assert drip.resume_enrollment(ana.id).status is EnrollmentStatus.ACTIVE


def test_an_enrollment_paused_during_the_sequence_pause_stays_paused_after_it(course: Course) -> None:
    """Pausing one held enrollment makes it the operator's: the sequence's resume leaves it paused."""
    drip = course.drip
    ana = course.first()
    drip.pause("newsletter")
    held_since = drip.get_sequence("newsletter").paused_at
    course.clock.advance(timedelta(hours=2))

    drip.pause_enrollment(ana.id)
    drip.resume("newsletter")

    assert drip.get_enrollment(ana.id).status is EnrollmentStatus.PAUSED
    assert drip.get_enrollment(ana.id).paused_at == held_since, "held since the sequence's pause, for EXTEND"


def test_an_enrollment_held_only_by_the_sequence_resumes_with_it(course: Course) -> None:
    """resume_enrollment refuses one the sequence holds: resuming the sequence is what releases it."""
    drip = course.drip
    ana = course.first()
    drip.pause("newsletter")

    with pytest.raises(SequenceStateError, match="resume the sequence"):
        drip.resume_enrollment(ana.id)

    assert drip.get_enrollment(ana.id).status is EnrollmentStatus.PAUSED


def test_a_pause_that_fails_changes_nothing_and_pausing_again_finishes(course: Course) -> None:
    """A store error during the pause leaves the sequence and its figures as they were; pause again works."""
    drip = course.drip
    course.store.fail_next_save = True  # type: ignore[attr-defined]

    with pytest.raises(Injected):
        drip.pause("newsletter")

    assert drip.get_sequence("newsletter").status is SequenceStatus.ACTIVE
    assert (drip.stats("newsletter").active, drip.stats("newsletter").paused) == (READERS, 0)
    assert course.all_enrollments(EnrollmentStatus.PAUSED) == []

    drip.pause("newsletter")

    assert (drip.stats("newsletter").active, drip.stats("newsletter").paused) == (0, READERS)
    assert len(course.all_enrollments(EnrollmentStatus.PAUSED)) == READERS


def test_archiving_a_paused_sequence_leaves_nothing_paused(course: Course) -> None:
    """Archive exits the held enrollments too: nothing is shown paused or active afterwards."""
    drip = course.drip
    drip.pause_enrollment(course.first().id)
    drip.pause("newsletter")

    drip.archive("newsletter")

    stats = drip.stats("newsletter")
    assert (stats.active, stats.paused, stats.exited) == (0, 0, READERS)
