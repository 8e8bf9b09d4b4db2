"""Checks a sequence must pass when it is saved: a new ACTIVE sequence goes through activate()'s
checks, and the sender rules refuse steps sent from an address the host has not authorized."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from dripcore import (
    AuthorizedDomains,
    Drip,
    SenderIdentity,
    SenderNotAllowed,
    SenderRuleFailed,
    Sequence,
    SequenceStatus,
    Trigger,
    TriggerType,
)
from dripcore.errors import InvalidArgument, SequenceStateError
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


def _sequence_from(step_senders: dict[int, str], *, sender: str | None = None, **kw: Any) -> Sequence:
    steps = tuple(
        step(position, name=f"Step {position}", sender=SenderIdentity(from_email=address))
        for position, address in step_senders.items()
    )
    return welcome(steps=steps, sender=None if sender is None else SenderIdentity(from_email=sender), **kw)


def _world(*rules: Any) -> World:
    return World(sender_rules=list(rules))


class TestSenderRules:
    def test_an_authorized_domain_is_saved(self) -> None:
        """Senders on an authorized domain (any case) pass; a step without a sender is not checked."""
        w = _world(AuthorizedDomains({"example.com"}))
        sequence = _sequence_from({1: "hello@example.com", 2: "News@EXAMPLE.com"}, sender="team@example.com")
        sequence = attrs.evolve(sequence, steps=(*sequence.steps, step(3)))
        assert w.drip.save_sequence(sequence).version == 1

    def test_a_step_on_an_unauthorized_domain_is_refused_naming_the_step_and_address(self) -> None:
        """The error names the step's position and name and the address; nothing is stored."""
        w = _world(AuthorizedDomains({"example.com"}))
        with pytest.raises(SenderNotAllowed) as caught:
            w.drip.save_sequence(_sequence_from({1: "hello@example.com", 2: "hello@elsewhere.test"}))
        error = caught.value
        assert (error.sequence_id, error.position, error.step_name, error.address) == (
            "welcome", 2, "Step 2", "hello@elsewhere.test",
        )  # fmt: skip
        assert "elsewhere.test" in error.reason
        assert "step 2" in str(error)
        assert w.store.get_sequence("welcome") is None

    def test_the_sequence_sender_is_checked_too(self) -> None:
        """The sequence's own sender is refused with position None."""
        w = _world(AuthorizedDomains({"example.com"}))
        with pytest.raises(SenderNotAllowed) as caught:
            w.drip.save_sequence(_sequence_from({}, sender="team@elsewhere.test", status=SequenceStatus.DRAFT))
        assert (caught.value.position, caught.value.address) == (None, "team@elsewhere.test")

    def test_an_edit_to_an_unauthorized_sender_is_refused_and_the_stored_version_kept(self) -> None:
        """Editing a saved sequence is checked as well: the stored one stays as it was."""
        w = _world(AuthorizedDomains({"example.com"}))
        saved = w.drip.save_sequence(_sequence_from({1: "hello@example.com"}))
        with pytest.raises(SenderNotAllowed):
            w.drip.save_sequence(_sequence_from({1: "hello@elsewhere.test"}))
        assert w.drip.get_sequence("welcome") == saved

    def test_activate_checks_the_senders_again(self) -> None:
        """A draft saved before the rule was installed is refused at activation and stays a draft."""
        first = World()
        draft = _sequence_from({1: "hello@elsewhere.test"}, status=SequenceStatus.DRAFT)
        first.drip.save_sequence(draft)
        strict = Drip(
            store=first.store, sender=first.recorder, clock=first.clock, contacts=first.contacts,
            sender_rules=[AuthorizedDomains({"example.com"})],
        )  # fmt: skip
        with pytest.raises(SenderNotAllowed) as caught:
            strict.activate("welcome")
        assert caught.value.position == 1
        assert strict.get_sequence("welcome").status is SequenceStatus.DRAFT

    def test_a_host_callable_rule_refuses_with_its_reason(self) -> None:
        """Any callable is a rule: None allows, a text refuses with that reason."""

        def no_noreply(sender: SenderIdentity) -> str | None:
            return "no-reply senders are not allowed" if sender.from_email.startswith("noreply@") else None

        w = _world(no_noreply)
        with pytest.raises(SenderNotAllowed, match="no-reply senders are not allowed") as caught:
            w.drip.save_sequence(_sequence_from({1: "hello@example.com", 2: "noreply@example.com"}))
        assert caught.value.position == 2

    def test_a_rule_that_raises_is_a_typed_error_naming_it_and_nothing_is_saved(self) -> None:
        """A rule's own failure is SenderRuleFailed naming the rule (its exception the cause); unsaved."""

        def lookup_domains(sender: SenderIdentity) -> str | None:
            raise ConnectionError("the domain registry is down")

        w = _world(lookup_domains)
        with pytest.raises(SenderRuleFailed) as caught:
            w.drip.save_sequence(_sequence_from({1: "hello@example.com"}))
        assert "lookup_domains" in caught.value.rule
        assert (caught.value.sequence_id, caught.value.position) == ("welcome", 1)
        assert isinstance(caught.value.__cause__, ConnectionError)
        assert w.store.get_sequence("welcome") is None

    @pytest.mark.parametrize(
        ("keyword", "value"),
        [("sender_rules", "example.com"), ("sender_rules", [42]), ("sender_rules", AuthorizedDomains({"x.test"}))],
    )
    def test_bad_sender_rules_are_refused_by_name(self, keyword: str, value: Any) -> None:
        """Drip(sender_rules=...) takes a list of callables."""
        with pytest.raises(InvalidArgument) as caught:
            World(**{keyword: value})
        assert caught.value.field == "sender_rules"

    @pytest.mark.parametrize("domains", ["example.com", [], ["a@example.com"], [""], [3]])
    def test_bad_authorized_domains_are_refused(self, domains: Any) -> None:
        """AuthorizedDomains takes a non-empty collection of domain names."""
        with pytest.raises(InvalidArgument) as caught:
            AuthorizedDomains(domains)
        assert caught.value.field == "domains"

    def test_a_yes_or_no_rule_is_taken_as_such(self) -> None:
        """A rule answering True allows; False refuses, the reason naming the rule."""

        def only_example(sender: SenderIdentity) -> bool:
            return sender.from_email.endswith("@example.com")

        w = _world(only_example)
        w.drip.save_sequence(_sequence_from({1: "hello@example.com"}))
        with pytest.raises(SenderNotAllowed, match=r"refused by .*only_example"):
            w.drip.save_sequence(_sequence_from({1: "hello@elsewhere.test"}, id="second"))
