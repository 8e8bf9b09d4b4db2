"""Every model value survives a JSON round-trip through make_converter() unchanged."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dripcore import (
    Cancelled,
    Completed,
    Contact,
    Delay,
    Enrollment,
    Event,
    ExitReason,
    SendWindow,
    Sequence,
    SkipReason,
    StepFailed,
    StepSent,
    StepSkipped,
    Subscribed,
    TriggerEvent,
    ValidationError,
    WaitUntil,
    event_from_json,
    event_to_json,
    make_converter,
)
from dripcore.serialization import format_instant, parse_instant
from tests.strategies import (
    contacts,
    edge_sequences,
    enrollments,
    instants,
    range_edge_instants,
    sequences,
    trigger_events,
    waits,
    windows,
)

conv = make_converter()


def round_trip(value: object, cls: type) -> object:
    text = json.dumps(conv.unstructure(value))  # must be JSON-safe, no default= hook
    return conv.structure(json.loads(text), cls)


@given(sequences(status=None))
def test_sequences_round_trip(sequence: Sequence) -> None:
    assert round_trip(sequence, Sequence) == sequence


@given(sequences(status=None), windows(), waits(), st.data())
def test_sequences_with_windows_and_waits_round_trip(
    sequence: Sequence, window: SendWindow, wait: WaitUntil, data: st.DataObject
) -> None:
    """Send windows, WaitUntil delays and expiries survive JSON, however the hash seed falls."""
    steps = tuple(
        attrs.evolve(
            step,
            delay=wait if data.draw(st.booleans()) else step.delay,
            window=window if data.draw(st.booleans()) else None,
            expires_after=data.draw(st.none() | st.just(Delay.hours(6))),
        )
        for step in sequence.steps
    )
    edited = attrs.evolve(sequence, steps=steps, window=data.draw(st.none() | windows()))
    assert round_trip(edited, Sequence) == edited


@given(enrollments())
def test_enrollments_round_trip(enrollment: Enrollment) -> None:
    assert round_trip(enrollment, Enrollment) == enrollment


@given(contacts() | contacts(suppressed=True))
def test_contacts_round_trip(contact: Contact) -> None:
    assert round_trip(contact, Contact) == contact


@given(trigger_events)
def test_trigger_events_round_trip(event: TriggerEvent) -> None:
    assert round_trip(event, TriggerEvent) == event


ids = st.sampled_from(["e1", "enr_42"])
events = st.one_of(
    st.builds(Subscribed, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants, key=st.none() | ids),
    st.builds(
        StepSent, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants,
        position=st.integers(1, 9), idempotency_key=ids,
    ),
    st.builds(
        StepFailed, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants,
        position=st.integers(1, 9), error=st.text(max_size=20), reason=st.none() | st.just("bounced"),
    ),
    st.builds(
        StepSkipped, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants,
        position=st.integers(1, 9), reason=st.sampled_from(list(SkipReason)),
    ),
    st.builds(Completed, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants),
    st.builds(
        Cancelled, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants,
        reason=st.sampled_from(list(ExitReason)),
    ),
)  # fmt: skip


@given(events)
def test_events_round_trip_through_their_wire_payload(event: Event) -> None:
    payload = json.loads(json.dumps(event_to_json(event)))
    assert payload["type"] == event.wire_name
    assert event_from_json(payload) == event
    assert round_trip(event, type(event)) == event


def test_event_payload_shape() -> None:
    at = datetime(2026, 5, 1, 12, 30, tzinfo=timezone.utc)
    event = Cancelled(enrollment_id="e1", sequence_id="s1", contact_id="c1", at=at, reason=ExitReason.BOUNCED)
    assert event_to_json(event) == {
        "type": "sequence.cancelled",
        "enrollment_id": "e1",
        "sequence_id": "s1",
        "contact_id": "c1",
        "at": "2026-05-01T12:30:00Z",
        "reason": "bounced",
    }


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"sequence\.exploded"):
        event_from_json({"type": "sequence.exploded"})


@given(instants)
def test_instants_format_as_utc_with_z(at: datetime) -> None:
    text = format_instant(at)
    assert text.endswith("Z")
    assert parse_instant(text) == at


@settings(max_examples=max(10, settings.default.max_examples // 4))  # edge values only: a narrow space
@given(edge_sequences(), range_edge_instants)
def test_sequences_with_the_longest_waits_and_edge_instants_round_trip(sequence: Sequence, at: datetime) -> None:
    """Ten-year delays, expiries, windows, and a pause at either end of the accepted range."""
    paused = attrs.evolve(sequence, status="paused", paused_at=at)
    assert round_trip(paused, Sequence) == paused


@given(range_edge_instants, st.sampled_from(["zoë@exämple.com", "用户@例子.广告", "o'brien+x@mail.example.ie"]))
def test_contacts_with_international_addresses_and_edge_instants_round_trip(at: datetime, email: str) -> None:
    contact = Contact(id="c1", email=email, first_name="Zoë", created_at=at, metadata={"ünïcode": ["ok", 1]})
    assert round_trip(contact, Contact) == contact


def test_decoding_errors_are_validation_errors_naming_the_path() -> None:
    """What a web handler catches: one family, with the path of the offending value."""
    with pytest.raises(ValidationError) as info:
        conv.structure({"id": "s", "name": "S", "steps": [{"position": 1, "template_id": "t", "active": "no"}]},
                       Sequence)  # fmt: skip
    assert info.value.field == "steps[0].active"
