"""Sequences kept as code: saving a definition is idempotent and keeps the lifecycle; sync_sequences reports."""

from __future__ import annotations

from collections.abc import Sequence as CollectionSequence
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dripcore import (
    ConcurrencyConflict,
    Contact,
    Delay,
    Drip,
    EnrollmentStatus,
    InvalidArgument,
    Sequence,
    SequenceStateError,
    SequenceStatus,
    SequenceSync,
    StoreError,
    Trigger,
    TriggerEvent,
    TriggerType,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Change, CounterName
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender
from tests.builders import T0, World, step, welcome
from tests.strategies import steps_lists


def tips(**kw: object) -> Sequence:
    """A definition as it is kept in code: no status (a draft when first created), on the "news" tag."""
    fields: dict[str, object] = {
        "id": "tips",
        "name": "Tips",
        "trigger": Trigger(type=TriggerType.TAG_ADDED, value="news"),
        "steps": (step(1), step(2, Delay.days(2)), step(3, Delay.days(4))),
    }
    fields.update(kw)
    return Sequence(**fields)  # type: ignore[arg-type]


@pytest.fixture
def world() -> World:
    w = World()
    w.drip.save_sequence(welcome())
    return w


# --------------------------------------------------------------------------- save_sequence


def test_saving_the_same_definition_again_writes_nothing(world: World) -> None:
    first = world.drip.save_sequence(tips(status=SequenceStatus.ACTIVE))
    world.clock.advance(timedelta(hours=1))
    again = world.drip.save_sequence(tips(status=SequenceStatus.ACTIVE))
    assert again == first == world.drip.get_sequence("tips")
    assert (again.version, again.updated_at) == (1, T0)


def test_editing_a_running_sequence_the_obvious_way_replans_its_enrollments(world: World) -> None:
    world.drip.save_sequence(tips(status=SequenceStatus.ACTIVE))
    enrollment, _ = world.drip.enroll("tips", "ana")
    world.drip.tick()
    edited = world.drip.save_sequence(tips(steps=(step(1), step(2, Delay.hours(3)), step(3, Delay.days(4)))))
    assert (edited.status, edited.version) == (SequenceStatus.ACTIVE, 2)
    assert world.drip.get_enrollment(enrollment.id).next_step_due_at == T0 + timedelta(hours=3)
    world.run_for(timedelta(hours=4))
    assert world.subjects("ana@example.com") == ["Step 1 for Ana", "Step 2 for Ana"]


def test_a_redeploy_keeps_an_operators_pause(world: World) -> None:
    world.drip.save_sequence(tips(status=SequenceStatus.ACTIVE))
    world.drip.enroll("tips", "ana")
    world.drip.tick()
    paused = world.drip.pause("tips")
    new_steps = (step(1), step(2, Delay.hours(1)))
    for status in (SequenceStatus.DRAFT, SequenceStatus.ACTIVE):  # left out, or written as ACTIVE in code
        saved = world.drip.save_sequence(tips(status=status, steps=new_steps))
        assert (saved.status, saved.paused_at, saved.steps) == (SequenceStatus.PAUSED, paused.paused_at, new_steps)
    world.run_for(timedelta(days=3))
    assert world.subjects("ana@example.com") == ["Step 1 for Ana"], "nothing is sent while it is paused"
    world.drip.resume("tips")
    world.drip.tick()
    assert world.subjects("ana@example.com") == ["Step 1 for Ana", "Step 2 for Ana"]


def test_a_definition_given_as_active_activates_a_stored_draft(world: World) -> None:
    assert world.drip.save_sequence(tips()).status is SequenceStatus.DRAFT
    live = world.drip.save_sequence(tips(status=SequenceStatus.ACTIVE))
    assert live.status is SequenceStatus.ACTIVE
    world.drip.notify(TriggerEvent.tag_added("bo", "news"))
    world.drip.tick()
    assert [(e.sequence_id, e.subject) for e in world.recorder.to("bo@example.com")] == [
        ("tips", "Step 1 for Bo"), ("welcome", "Step 1 for Bo"),
    ]  # fmt: skip


def test_a_definition_cannot_pause_or_archive(world: World) -> None:
    with pytest.raises(SequenceStateError, match="use pause"):
        world.drip.save_sequence(welcome(status=SequenceStatus.PAUSED, paused_at=T0))
    with pytest.raises(SequenceStateError, match="archive"):
        world.drip.save_sequence(welcome(status=SequenceStatus.ARCHIVED))
    assert world.drip.get_sequence("welcome").status is SequenceStatus.ACTIVE


def test_an_archived_sequence_is_not_edited(world: World) -> None:
    world.drip.archive("welcome")
    with pytest.raises(SequenceStateError, match="status=archived"):
        world.drip.save_sequence(welcome(name="Revived"))
    assert world.drip.get_sequence("welcome").name == "Welcome series"


def test_activating_an_active_sequence_changes_nothing(world: World) -> None:
    before = world.drip.get_sequence("welcome")
    world.clock.advance(timedelta(hours=1))
    assert world.drip.activate("welcome") == before == world.drip.get_sequence("welcome")


# --------------------------------------------------------------------------- sync_sequences


def test_sync_reports_what_it_created_updated_activated_and_left_alone(world: World) -> None:
    world.drip.save_sequence(tips())  # a draft, to be activated by its definition
    world.drip.save_sequence(welcome(id="legacy", name="Legacy"))  # in the store, no longer in code
    world.drip.save_sequence(welcome(id="old"))
    world.drip.archive("old")
    report = world.drip.sync_sequences(
        [
            welcome(name="Welcome, renamed"),
            tips(status=SequenceStatus.ACTIVE),
            tips(id="new", name="New"),
            welcome(id="old", name="Old, edited"),
        ]
    )
    assert report == SequenceSync(
        created=["new"], updated=["welcome"], activated=["tips"], unchanged=[], archived=["old"], undefined=["legacy"]
    )
    assert report.changed
    assert str(report) == ("sequences: 1 created, 1 updated, 1 activated, 1 archived (left alone); not in code: legacy")
    assert world.drip.get_sequence("old").name == "Welcome series", "an archived sequence is left alone"
    assert world.drip.get_sequence("welcome").name == "Welcome, renamed"
    assert world.drip.get_sequence("tips").status is SequenceStatus.ACTIVE


def test_syncing_again_changes_nothing(world: World) -> None:
    definitions = [welcome(), tips(status=SequenceStatus.ACTIVE), tips(id="draft")]
    world.drip.sync_sequences(definitions)
    stored = world.drip.sequences()
    world.clock.advance(timedelta(days=1))
    report = world.drip.sync_sequences(definitions)
    assert report == SequenceSync(unchanged=["welcome", "tips", "draft"])
    assert not report.changed
    assert str(report) == "sequences: 3 unchanged"
    assert world.drip.sequences() == stored


@pytest.mark.parametrize(
    ("definitions", "field"),
    [
        (lambda: [tips(), tips(name="Twice")], "definitions"),
        (lambda: [tips(), "tips"], "definitions[1]"),
        (lambda: [tips(), welcome(status=SequenceStatus.PAUSED, paused_at=T0)], "definitions[1].status"),
        (lambda: tips(), "definitions"),
    ],
    ids=["duplicate-id", "not-a-sequence", "paused-in-code", "one-sequence-not-a-list"],
)
def test_sync_checks_every_definition_before_writing_anything(world: World, definitions, field: str) -> None:  # type: ignore[no-untyped-def]
    before = world.drip.sequences()
    with pytest.raises(InvalidArgument) as raised:
        world.drip.sync_sequences(definitions())
    assert raised.value.field == field
    assert world.drip.sequences() == before


def test_an_active_definition_without_an_active_step_is_refused_before_anything_is_written(world: World) -> None:
    nothing_active = tips(id="quiet", status=SequenceStatus.ACTIVE, steps=(step(1, active=False),))
    with pytest.raises(SequenceStateError, match="no active step"):
        world.drip.sync_sequences([tips(), nothing_active])
    assert [s.id for s in world.drip.sequences()] == ["welcome"]


class FailingSaves(MemoryStore):
    """A store whose ``fail_at``-th save_sequence raises (counting from 1), once."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.saves = fail_at, 0

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        self.saves += 1
        if self.saves == self.fail_at:
            raise StoreError("injected: the database went away")
        super().save_sequence(sequence, expected_version=expected_version)


def test_a_sync_that_fails_part_way_is_finished_by_running_it_again() -> None:
    store = FailingSaves(fail_at=2)
    contacts = MemoryContacts([Contact(id="ana", email="ana@example.com", first_name="Ana")])
    drip = Drip(store=store, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
    definitions = [welcome(), tips(status=SequenceStatus.ACTIVE), tips(id="later")]
    with pytest.raises(StoreError, match="injected"):
        drip.sync_sequences(definitions)
    assert [s.id for s in drip.sequences()] == ["welcome"], "the first was saved, the rest not"
    report = drip.sync_sequences(definitions)
    assert report == SequenceSync(created=["tips", "later"], unchanged=["welcome"])
    assert {s.id: s.status for s in drip.sequences()} == {
        "later": SequenceStatus.DRAFT, "tips": SequenceStatus.ACTIVE, "welcome": SequenceStatus.ACTIVE,
    }  # fmt: skip


class RacingStore(SQLiteStore):
    """Another worker (a second Drip on the same file) syncs the same definitions just before this one's insert."""

    other: Drip | None = None
    definitions: tuple[Sequence, ...] | list[Sequence] = ()

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        if expected_version is None and self.other is not None:
            other, self.other = self.other, None
            other.sync_sequences(self.definitions)
        super().save_sequence(sequence, expected_version=expected_version)


def test_two_workers_syncing_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "drip.db"
    contacts = MemoryContacts([Contact(id="ana", email="ana@example.com", first_name="Ana")])
    definitions = [tips(status=SequenceStatus.ACTIVE, steps=(step(1),))]
    with SQLiteStore(path) as plain, RacingStore(path) as racing:
        other = Drip(store=plain, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
        racing.other, racing.definitions = other, definitions
        drip = Drip(store=racing, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
        report = drip.sync_sequences(definitions)
        assert report == SequenceSync(created=["tips"]), "its insert lost the race: the definition was already there"
        assert drip.get_sequence("tips").version == 1
        assert drip.get_sequence("tips") == other.get_sequence("tips")


def test_a_definition_that_lost_the_race_to_a_different_one_is_stored_as_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "drip.db"
    contacts = MemoryContacts([Contact(id="ana", email="ana@example.com", first_name="Ana")])
    with SQLiteStore(path) as plain, RacingStore(path) as racing:
        racing.other = Drip(store=plain, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
        racing.definitions = [tips(name="Old deploy")]
        drip = Drip(store=racing, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
        saved = drip.save_sequence(tips(name="New deploy"))
    assert (saved.name, saved.version) == ("New deploy", 2)


def test_a_conflict_that_is_not_a_race_is_raised() -> None:
    class Refusing(MemoryStore):
        def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
            raise ConcurrencyConflict(kind="sequence", id=sequence.id, expected=0, actual=None)

    world = World()
    world.drip.store = Refusing()
    with pytest.raises(ConcurrencyConflict):
        world.drip.save_sequence(tips())


# --------------------------------------------------------------------------- properties

statuses_in_code = st.sampled_from([SequenceStatus.DRAFT, SequenceStatus.ACTIVE])
operator_acts = st.lists(st.sampled_from(["pause", "resume", "activate", "archive", "none"]), max_size=4)


@settings(max_examples=max(settings.default.max_examples // 4, 25), deadline=None)
@given(
    first=steps_lists(conditions=False), second=steps_lists(conditions=False),
    statuses=st.tuples(statuses_in_code, statuses_in_code), acts=operator_acts,
)  # fmt: skip
def test_a_deploy_keeps_the_lifecycle_an_operator_left_and_a_second_deploy_changes_nothing(
    first: tuple, second: tuple, statuses: tuple[SequenceStatus, SequenceStatus], acts: list[str]
) -> None:
    """Whatever an operator did between two deploys, the second deploy keeps its status and pause (except that a
    draft given as ACTIVE goes live), stores the new steps, and deploying it once more writes nothing."""
    world = World()
    if statuses[0] is SequenceStatus.ACTIVE and not any(s.active for s in first):
        with pytest.raises(SequenceStateError, match="no active step"):
            world.drip.sync_sequences([tips(steps=first, status=statuses[0])])
        return
    world.drip.sync_sequences([tips(steps=first, status=statuses[0])])
    for act in acts:
        current = world.drip.get_sequence("tips")
        try:
            if act == "pause":
                world.drip.pause("tips")
            elif act == "resume":
                world.drip.resume("tips")
            elif act == "activate":
                world.drip.activate("tips")
            elif act == "archive":
                world.drip.archive("tips")
        except SequenceStateError:
            assert world.drip.get_sequence("tips") == current
    operator_left = world.drip.get_sequence("tips")
    if operator_left.status is SequenceStatus.ARCHIVED or not any(s.active for s in second):
        return
    report = world.drip.sync_sequences([tips(steps=second, status=statuses[1])])
    deployed = world.drip.get_sequence("tips")
    expected = operator_left.status
    if expected is SequenceStatus.DRAFT and statuses[1] is SequenceStatus.ACTIVE:
        expected = SequenceStatus.ACTIVE
        assert report.activated == ("tips",)
    assert (deployed.status, deployed.steps) == (expected, second)
    if expected is SequenceStatus.PAUSED:
        assert deployed.paused_at == operator_left.paused_at
    again = world.drip.sync_sequences([tips(steps=second, status=statuses[1])])
    assert again == SequenceSync(unchanged=["tips"])
    assert world.drip.get_sequence("tips") == deployed


def test_an_enrollment_in_a_redeployed_sequence_goes_on_from_where_it_was(world: World) -> None:
    world.drip.save_sequence(tips(status=SequenceStatus.ACTIVE))
    enrollment, _ = world.drip.enroll("tips", "ana")
    world.run_for(timedelta(days=2, hours=1))
    assert world.subjects("ana@example.com") == ["Step 1 for Ana", "Step 2 for Ana"]
    world.drip.sync_sequences([tips(steps=(step(1), step(2, Delay.days(2)), step(3, Delay.days(1))))])
    world.run_for(timedelta(days=1))
    assert world.subjects("ana@example.com") == ["Step 1 for Ana", "Step 2 for Ana", "Step 3 for Ana"]
    assert world.drip.get_enrollment(enrollment.id).status is EnrollmentStatus.COMPLETED


# --------------------------------------------------------------------------- races and interruptions


def replan_marker(drip: Drip, sequence_id: str = "tips") -> int:
    return drip.store.counters(sequence_id).get((0, CounterName.REPLAN_PENDING.value), 0)


class EditRacingStore(SQLiteStore):
    """Another worker (a second Drip on the same file) syncs the same definitions just before this one's edit."""

    other: Drip | None = None
    definitions: tuple[Sequence, ...] | list[Sequence] = ()

    def save_sequence(self, sequence: Sequence, *, expected_version: int | None = None) -> None:
        if expected_version is not None and self.other is not None:
            other, self.other = self.other, None
            other.sync_sequences(self.definitions)
        super().save_sequence(sequence, expected_version=expected_version)


def test_two_workers_deploying_the_same_edit_at_once_both_start_and_replan_everyone(tmp_path: Path) -> None:
    path = tmp_path / "drip.db"
    contacts = MemoryContacts([Contact(id=n, email=f"{n}@example.com") for n in ("ana", "bo")])
    with SQLiteStore(path) as plain, EditRacingStore(path) as racing:
        other = Drip(store=plain, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
        drip = Drip(store=racing, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
        drip.sync_sequences([tips(status=SequenceStatus.ACTIVE)])
        enrolled = [drip.enroll("tips", n)[0].id for n in ("ana", "bo")]
        drip.tick()
        edit = [tips(status=SequenceStatus.ACTIVE, steps=(step(1), step(2, Delay.hours(5)), step(3, Delay.days(4))))]
        racing.other, racing.definitions = other, edit

        report = drip.sync_sequences(edit)  # its save finds the other's: it reads it and tries again

        assert report == SequenceSync(updated=["tips"])
        assert drip.get_sequence("tips").version == 2, "one edit stored, not two"
        assert [drip.get_enrollment(e).next_step_due_at for e in enrolled] == [T0 + timedelta(hours=5)] * 2
        assert replan_marker(drip) == 0, "nothing left pending, and never below zero"
        assert drip.sync_sequences(edit) == SequenceSync(unchanged=["tips"])


def test_a_replan_marker_below_zero_is_repaired_so_an_interrupted_replan_is_still_finished() -> None:
    """A marker pushed below zero (concurrent saves of an earlier version) no longer hides an interruption."""
    store = FailingCommits()
    contacts = MemoryContacts([Contact(id=f"c{i}", email=f"c{i}@example.com") for i in range(3)])
    drip = Drip(store=store, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
    drip.save_sequence(tips(status=SequenceStatus.ACTIVE))
    enrolled = [drip.enroll("tips", f"c{i}")[0].id for i in range(3)]
    drip.tick()
    store.bump([("tips", 0, CounterName.REPLAN_PENDING.value, -3)])
    edit = tips(steps=(step(1), step(2, Delay.hours(5)), step(3, Delay.days(4))))
    store.fail_next_commit = True
    with pytest.raises(StoreError, match="injected"):
        drip.save_sequence(edit)
    assert replan_marker(drip) == 1, "repaired to zero, then set by the interrupted edit"
    assert drip.sync_sequences([edit]) == SequenceSync(unchanged=["tips"])
    assert [drip.get_enrollment(e).next_step_due_at for e in enrolled] == [T0 + timedelta(hours=5)] * 3
    assert replan_marker(drip) == 0


class FailingCommits(MemoryStore):
    """Raises on the next commit once ``fail_next_commit`` is set (the replan's first page)."""

    fail_next_commit = False

    def commit(self, changes: CollectionSequence[Change], *, owner: str | None = None) -> list[str]:
        if self.fail_next_commit:
            self.fail_next_commit = False
            raise StoreError("injected: the database went away mid-replan")
        return super().commit(changes, owner=owner)


def test_a_draft_whose_member_cannot_be_looked_up_is_reported_and_the_others_are_synced() -> None:
    class Directory(MemoryContacts):
        def get_many(self, contact_ids):  # type: ignore[no-untyped-def]
            if "broken" in contact_ids:
                raise StoreError("the users table is unreadable for 'broken'")
            return super().get_many(contact_ids)

        def get(self, contact_id):  # type: ignore[no-untyped-def]
            if contact_id == "broken":
                raise StoreError("the users table is unreadable for 'broken'")
            return super().get(contact_id)

    contacts = Directory([Contact(id=n, email=f"{n}@example.com") for n in ("ana", "broken")])
    for name in ("ana", "broken"):
        contacts.join(name, TriggerType.LIST_ADDED, "members")
    drip = Drip(store=MemoryStore(), sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
    members = tips(
        id="members", status=SequenceStatus.ACTIVE, enroll_existing=True,
        trigger=Trigger(type=TriggerType.LIST_ADDED, value="members"),
    )  # fmt: skip
    report = drip.sync_sequences([members, tips()])
    assert (report.failed, report.created, report.ok) == (("members",), ("tips",), False)
    assert "broken" in report.errors["members"]
    assert str(report).startswith("sequences: 1 created, 1 failed; failed: members (")
    assert drip.get_sequence("members").status is SequenceStatus.DRAFT
    assert [e.contact_id for e in drip.enrollments("members")] == ["ana"], "the readable member is enrolled"


def test_activating_an_active_sequence_with_enroll_existing_backfills_its_members(world: World) -> None:
    world.drip.save_sequence(tips(id="news", status=SequenceStatus.ACTIVE,
                                  trigger=Trigger(type=TriggerType.LIST_ADDED, value="news")))  # fmt: skip
    world.contacts.join("bo", TriggerType.LIST_ADDED, "news")
    assert world.drip.enrollments("news") == []
    world.drip.activate("news", enroll_existing=True)
    world.drip.activate("news", enroll_existing=True)  # enrollment is idempotent
    assert [e.contact_id for e in world.drip.enrollments("news")] == ["bo"]
