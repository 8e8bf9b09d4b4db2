"""Every model value type survives pickle (and copy.deepcopy): the copy equals the original."""

from __future__ import annotations

import copy
import pickle
from datetime import date
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dripcore import Contact, Enrollment, EnrollmentStatus, ExitReason, TriggerEvent
from tests.builders import T0
from tests.strategies import (
    contacts,
    delays,
    enrollments,
    sequences,
    steps_lists,
    trigger_events,
    triggers,
    waits,
    windows,
)

model_values = st.one_of(
    delays(), waits(), windows(), steps_lists(), triggers, sequences(), contacts(), contacts(suppressed=True),
    enrollments(), trigger_events,
)  # fmt: skip


@given(model_values)
def test_every_model_value_round_trips_through_pickle(value: Any) -> None:
    """pickle.loads(pickle.dumps(x)) == x for every value the strategies build, at every protocol."""
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copied = pickle.loads(pickle.dumps(value, protocol=protocol))
        assert type(copied) is type(value)
        assert copied == value


def test_a_contact_with_metadata_pickles_and_stays_read_only() -> None:
    """The metadata comes back read-only, and the contact's zone comes back too."""
    contact = Contact(
        id="ana", email="ana@example.com", timezone="Europe/Paris", birthday=date(1990, 3, 3),
        metadata={"plan": "pro", "seats": [1, 2]}, suppressed=ExitReason.BOUNCED,
    )  # fmt: skip
    copied = pickle.loads(pickle.dumps(contact))
    assert copied == contact
    assert copied.zone == contact.zone
    assert dict(copied.metadata) == {"plan": "pro", "seats": [1, 2]}
    try:
        copied.metadata["plan"] = "free"  # type: ignore[index]
    except TypeError:
        pass
    else:  # pragma: no cover - the failure branch
        raise AssertionError("a pickled contact's metadata became writable")


def test_an_enrollment_and_a_purchase_event_pickle_and_deepcopy() -> None:
    """Enrollment variables and event variables survive pickle and deepcopy."""
    enrollment = Enrollment(
        id="enr_1", sequence_id="welcome", contact_id="ana", status=EnrollmentStatus.ACTIVE, enrolled_at=T0,
        next_step_due_at=T0,
        variables={"order_id": "o-1001"},
    )  # fmt: skip
    event = TriggerEvent.purchase("ana", product_id="p9", order_id="o-1001", variables={"total": 12})
    for value in (enrollment, event):
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.deepcopy(value) == value
    assert pickle.loads(pickle.dumps(enrollment)).variables["order_id"] == "o-1001"
