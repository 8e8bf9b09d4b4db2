"""Suppression: Drip.contact_suppressed(contact_id, reason), and a sender reporting an invalid address."""

from __future__ import annotations

from typing import Any

import pytest

from dripcore import (
    Contact,
    EnrollmentStatus,
    ExitReason,
    StepFailed,
    Trigger,
    TriggerType,
)
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.errors import InvalidArgument
from dripcore.model import SUPPRESSION_REASONS
from dripcore.testing import FlakySender
from tests.builders import World, welcome


def _world_with_two_enrollments(**kw: Any) -> tuple[World, list[str]]:
    w = World(**kw)
    w.drip.save_sequence(welcome())
    w.drip.save_sequence(welcome(id="other", name="Other", trigger=Trigger(type=TriggerType.MANUAL)))
    ids = [w.drip.enroll(sequence_id, "ana")[0].id for sequence_id in ("welcome", "other")]
    return w, ids


@pytest.mark.parametrize("reason", sorted(SUPPRESSION_REASONS, key=lambda r: r.value))
def test_a_suppressed_contact_exits_everything_with_the_reason(reason: ExitReason) -> None:
    """Every suppression reason, as a member or as its value, suppresses the contact and exits all they are in."""
    for given in (reason, reason.value):
        w, ids = _world_with_two_enrollments()
        assert w.drip.contact_suppressed("ana", given) == 2
        for enrollment_id in ids:
            after = w.drip.get_enrollment(enrollment_id)
            assert (after.status, after.exit_reason) == (EnrollmentStatus.EXITED, reason)
        contact = w.contacts.get("ana")
        assert contact is not None
        assert contact.suppressed is reason


@pytest.mark.parametrize("reason", [ExitReason.MANUAL, ExitReason.GOAL_MET, "archived", "spam", "", None, 3, ["x"]])
def test_a_reason_that_is_not_a_suppression_is_refused_and_changes_nothing(reason: Any) -> None:
    """Only suppression reasons are accepted: the error names the field and the value."""
    w, ids = _world_with_two_enrollments()
    with pytest.raises(InvalidArgument) as caught:
        w.drip.contact_suppressed("ana", reason)
    assert caught.value.field == "reason"
    assert caught.value.value == (reason.value if isinstance(reason, ExitReason) else reason)
    assert all(w.drip.get_enrollment(i).status is EnrollmentStatus.ACTIVE for i in ids)
    contact = w.contacts.get("ana")
    assert contact is not None
    assert contact.suppressed is None


def test_the_named_special_cases_still_work() -> None:
    """contact_unsubscribed, contact_bounced and contact_complained are contact_suppressed with a fixed reason."""
    for method, reason in (
        ("contact_unsubscribed", ExitReason.UNSUBSCRIBED),
        ("contact_bounced", ExitReason.BOUNCED),
        ("contact_complained", ExitReason.COMPLAINED),
    ):
        w, ids = _world_with_two_enrollments()
        assert getattr(w.drip, method)("ana") == 2
        assert all(w.drip.get_enrollment(i).exit_reason is reason for i in ids)


def test_an_address_the_provider_rejects_as_invalid_exits_the_contact() -> None:
    """A PermanentSendError with reason "invalid_address": the step fails, the contact is suppressed with
    INVALID_ADDRESS and leaves every sequence; no enrollment is held for an operator."""
    flaky = FlakySender()
    w, ids = _world_with_two_enrollments(sender=flaky)
    flaky.fail_address("ana@example.com", reason="invalid_address")
    report = w.drip.tick()
    assert report.failed >= 1
    assert report.held == 0
    failed = w.events.of(StepFailed)
    assert failed[0].reason == "invalid_address"  # type: ignore[union-attr]
    for enrollment_id in ids:
        after = w.drip.get_enrollment(enrollment_id)
        assert (after.status, after.exit_reason) == (EnrollmentStatus.EXITED, ExitReason.INVALID_ADDRESS)
    contact = w.contacts.get("ana")
    assert contact is not None
    assert contact.suppressed is ExitReason.INVALID_ADDRESS
    assert w.drip.stats("welcome").steps[0].bounced == 0  # a validation reject is not a bounce


def test_an_invalid_address_exit_round_trips_through_a_store() -> None:
    """The new exit reason is stored and read back (SQLite), and a contact may carry it."""
    store = SQLiteStore(":memory:")
    w = World()
    w.drip.save_sequence(welcome())
    enrollment, _ = w.drip.enroll("welcome", "ana")
    w.drip.contact_suppressed("ana", ExitReason.INVALID_ADDRESS)
    exited = w.drip.get_enrollment(enrollment.id)
    store.save_sequence(w.drip.get_sequence("welcome"), expected_version=None)
    stored, _ = store.add_enrollment(exited, allow_reentry=False)
    got = store.get_enrollment(stored.id)
    assert got is not None
    assert got.exit_reason is ExitReason.INVALID_ADDRESS
    assert Contact(id="x", email="x@example.com", suppressed="invalid_address").suppressed is ExitReason.INVALID_ADDRESS
