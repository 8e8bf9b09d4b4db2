"""Checks a sequence must pass when it is saved: a new ACTIVE sequence goes through activate()'s
checks, and the sender rules refuse steps sent from an address the host has not authorized."""

from __future__ import annotations

import pytest

from dripcore import Sequence, SequenceStatus, Trigger, TriggerType
from dripcore.errors import SequenceStateError
from tests.builders import World, step, welcome


class TestSavingANewActiveSequence:
    def test_a_new_active_sequence_enrolls_the_existing_members(self) -> None:
        """enroll_existing=True is honoured when the sequence is created ACTIVE, as activate() does."""
        w = World()
        w.contacts.join("ana", TriggerType.LIST_ADDED, "newsletter")
        w.contacts.join("bo", TriggerType.LIST_ADDED, "newsletter")
        w.contacts.join("cy", TriggerType.LIST_ADDED, "other")
        stored = w.drip.save_sequence(
            welcome(trigger=Trigger(type=TriggerType.LIST_ADDED, value="newsletter"), enroll_existing=True)
        )
        assert stored.status is SequenceStatus.ACTIVE
        assert w.drip.get_sequence("welcome") == stored
        assert sorted(e.contact_id for e in w.store.find_enrollments()) == ["ana", "bo"]

    def test_a_new_active_sequence_without_an_active_step_is_refused_and_not_stored(self) -> None:
        """No step, or only inactive steps: refused like activate(), and nothing is stored."""
        w = World()
        for steps in ((), (step(1, active=False),)):
            with pytest.raises(SequenceStateError, match="no active step") as caught:
                w.drip.save_sequence(Sequence(id="empty", name="Empty", status=SequenceStatus.ACTIVE, steps=steps))
            assert caught.value.sequence_id == "empty"
            assert w.store.get_sequence("empty") is None

    def test_a_new_active_sequence_without_enroll_existing_is_stored_as_version_1(self) -> None:
        """The usual case is unchanged: one write, version 1, no member enrolled."""
        w = World()
        w.contacts.join("ana", TriggerType.TAG_ADDED, "vip")
        stored = w.drip.save_sequence(welcome())
        assert (stored.status, stored.version) == (SequenceStatus.ACTIVE, 1)
        assert list(w.store.find_enrollments()) == []

    def test_a_new_draft_without_steps_is_still_accepted(self) -> None:
        """Drafts are work in progress: the active-step check waits for activation."""
        w = World()
        assert w.drip.save_sequence(Sequence(id="empty", name="Empty")).status is SequenceStatus.DRAFT
