"""Listing: sequences carry when they were made and last changed; enrollments filter by step, order by due time."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import attrs
import pytest

from dripcore import Drip, Enrollment, EnrollmentOrder, EnrollmentStatus, InvalidArgument, Sequence, SequenceStatus
from dripcore.adapters.memory import MemoryStore
from dripcore.serialization import make_converter
from tests.builders import T0, World, welcome

HOUR = timedelta(hours=1)


def draft_welcome(**kw: object) -> Sequence:
    """The Welcome series as a draft (made active through ``activate``, as a user does)."""
    return welcome(status=SequenceStatus.DRAFT, **kw)


# --------------------------------------------------------------------------- sequence timestamps


def test_a_new_sequence_is_stamped_from_the_engines_clock() -> None:
    """Creating a sequence sets created_at and updated_at to the engine's clock, whatever the caller passed."""
    world = World()
    stored = world.drip.save_sequence(draft_welcome(created_at=T0 - 100 * HOUR, updated_at=T0 - 50 * HOUR))
    assert (stored.created_at, stored.updated_at) == (T0, T0)
    assert world.drip.get_sequence("welcome") == stored


def test_an_edit_keeps_created_at_and_moves_updated_at() -> None:
    """Saving an edit stamps updated_at; created_at stays the stored one even if the edit carries another."""
    world = World()
    world.drip.save_sequence(draft_welcome())
    world.clock.advance(3 * HOUR)
    edited = world.drip.save_sequence(
        attrs.evolve(world.drip.get_sequence("welcome"), name="Welcome, again", created_at=T0 + 99 * HOUR)
    )
    assert (edited.version, edited.created_at, edited.updated_at) == (2, T0, T0 + 3 * HOUR)
    assert world.drip.get_sequence("welcome") == edited


def test_every_status_change_stamps_updated_at() -> None:
    """activate, pause, resume and archive each move updated_at to the engine's clock, never created_at."""
    world = World()
    world.drip.save_sequence(draft_welcome())
    for hours, change in enumerate(
        (world.drip.activate, world.drip.pause, world.drip.resume, world.drip.archive), start=1
    ):
        world.clock.set(T0 + hours * HOUR)
        changed = change("welcome")
        assert (changed.created_at, changed.updated_at) == (T0, T0 + hours * HOUR), change.__name__
        assert world.drip.get_sequence("welcome") == changed
    assert world.drip.get_sequence("welcome").status is SequenceStatus.ARCHIVED


def test_the_overview_shows_when_each_sequence_was_created_and_last_changed() -> None:
    """Drip.overview() (the sequence list page) carries each sequence's created_at and updated_at."""
    world = World()
    world.drip.save_sequence(draft_welcome())
    world.clock.advance(2 * HOUR)
    world.drip.activate("welcome")
    [row] = world.drip.overview()
    assert (row.id, row.created_at, row.updated_at) == ("welcome", T0, T0 + 2 * HOUR)


def test_a_sequence_stored_without_timestamps_loads_with_none_and_gets_updated_at_on_its_next_save() -> None:
    """A sequence saved before dripcore kept timestamps (JSON without the keys) loads with both None;
    its next save stamps updated_at and leaves created_at unknown (None) rather than inventing one."""
    converter = make_converter()
    document = converter.unstructure(draft_welcome())
    del document["created_at"], document["updated_at"]
    legacy = converter.structure(document, Sequence)
    assert (legacy.created_at, legacy.updated_at) == (None, None)
    world = World()
    world.store.save_sequence(legacy)
    world.clock.advance(HOUR)
    edited = world.drip.save_sequence(attrs.evolve(legacy, description="now with timestamps"))
    assert (edited.created_at, edited.updated_at) == (None, T0 + HOUR)


def test_timestamps_round_trip_through_json() -> None:
    """created_at and updated_at survive unstructure/structure as UTC instants."""
    converter = make_converter()
    sequence = draft_welcome(created_at=T0, updated_at=T0 + HOUR)
    document = converter.unstructure(sequence)
    assert (document["created_at"], document["updated_at"]) == ("2026-03-02T09:00:00Z", "2026-03-02T10:00:00Z")
    assert converter.structure(document, Sequence) == sequence


# --------------------------------------------------------------------------- enrollments by step and due time


def _three_contacts_on_different_steps() -> World:
    """Ana enrolled at T0 and Bo an hour later, both sent step 1 by the tick at T0+1h (step 2 due a day
    later); then Cy enrolls starting at T0+7h, still on step 0."""
    world = World()
    world.drip.save_sequence(draft_welcome())
    world.drip.activate("welcome")
    world.drip.enroll("welcome", "ana")
    world.clock.advance(HOUR)
    world.drip.enroll("welcome", "bo")
    world.drip.tick()
    world.clock.advance(HOUR)
    world.drip.enroll("welcome", "cy", started_at=world.clock.now() + 5 * HOUR)
    return world


def test_enrollments_filter_by_the_step_each_contact_is_on() -> None:
    """``last_step_sent`` finds the contacts whose last sent step is at that position (0: none sent yet)."""
    world = _three_contacts_on_different_steps()
    on_step = {
        position: [e.contact_id for e in world.drip.enrollments("welcome", last_step_sent=position)]
        for position in (0, 1, 2)
    }
    assert on_step == {0: ["cy"], 1: ["ana", "bo"], 2: []}
    assert world.drip.enrollments("welcome", last_step_sent=1, contact_id="bo")[0].contact_id == "bo"
    assert world.drip.enrollments("welcome", last_step_sent=1, status=EnrollmentStatus.PAUSED) == []


def test_enrollments_order_by_next_due_with_finished_ones_last() -> None:
    """``order=NEXT_DUE`` lists the soonest due first and enrollments with nothing due (finished) last."""
    world = _three_contacts_on_different_steps()
    bo = world.drip.enrollments("welcome", contact_id="bo")[0]
    world.drip.cancel_enrollment(bo.id)
    listed = world.drip.enrollments("welcome", order=EnrollmentOrder.NEXT_DUE)
    assert [e.contact_id for e in listed] == ["cy", "ana", "bo"]
    assert [e.next_step_due_at for e in listed] == [T0 + 7 * HOUR, T0 + 25 * HOUR, None]
    second = world.drip.enrollments("welcome", order="next_due", limit=1, offset=1)  # type: ignore[arg-type]
    assert [e.contact_id for e in second] == ["ana"], "the order's value works too, and pages"


@pytest.mark.parametrize("bad", [-1, 2.0, "1", True])
def test_a_bad_step_position_is_refused_naming_it(bad: object) -> None:
    """A negative or non-integer ``last_step_sent`` raises InvalidArgument naming it, on the Drip and the store."""
    world = _three_contacts_on_different_steps()
    for call in (
        lambda: world.drip.enrollments("welcome", last_step_sent=bad),  # type: ignore[arg-type]
        lambda: MemoryStore().find_enrollments(last_step_sent=bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidArgument) as caught:
            call()
        assert (caught.value.field, caught.value.value) == ("last_step_sent", bad)


@pytest.mark.parametrize("bad", ["due", "created_at", "NEXT_DUE", None])
def test_an_unknown_order_is_refused_naming_it(bad: object) -> None:
    """An order that is neither an EnrollmentOrder nor one's value raises InvalidArgument naming it."""
    world = _three_contacts_on_different_steps()
    with pytest.raises(InvalidArgument) as caught:
        world.drip.enrollments("welcome", order=bad)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("order", bad)
    assert "next_due" in str(caught.value)


class StoreBeforeListing(MemoryStore):
    """A store written before find_enrollments took last_step_sent= and order=."""

    def find_enrollments(  # type: ignore[override]
        self,
        *,
        sequence_id: str | None = None,
        contact_id: str | None = None,
        statuses: Iterable[EnrollmentStatus] | None = None,
        limit: int = 50,
        offset: int = 0,
        after: str | None = None,
    ) -> list[Enrollment]:
        return super().find_enrollments(
            sequence_id=sequence_id, contact_id=contact_id, statuses=statuses, limit=limit, offset=offset, after=after
        )


def test_a_store_without_the_new_arguments_still_lists_by_id() -> None:
    """Drip.enrollments() passes last_step_sent= and order= only when asked, so an older store keeps working."""
    world = World()
    world.store = StoreBeforeListing()
    world.drip = Drip(store=world.store, sender=world.recorder, clock=world.clock, contacts=world.contacts)
    world.drip.save_sequence(draft_welcome())
    world.drip.activate("welcome")
    world.drip.enroll("welcome", "ana")
    assert [e.contact_id for e in world.drip.enrollments("welcome")] == ["ana"]
