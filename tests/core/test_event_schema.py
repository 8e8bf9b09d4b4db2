"""The lifecycle-event JSON Schema matches what event_to_json writes, for every event type."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError

from dripcore.errors import ValidationError
from dripcore.model import (
    EVENT_TYPES,
    Cancelled,
    Completed,
    Event,
    ExitReason,
    SkipReason,
    StepFailed,
    StepSent,
    StepSkipped,
    Subscribed,
)
from dripcore.schemas import event_schema
from dripcore.serialization import event_to_json
from tests.strategies import instants

AT = datetime(2026, 3, 1, 9, 0, 0, 250_000, tzinfo=timezone.utc)
SCHEMA = event_schema()
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _valid_id(text: str) -> bool:
    try:
        Completed(enrollment_id=text, sequence_id="s", contact_id="c", at=AT)
    except ValidationError:
        return False
    return True


# Identifiers as the model accepts them: any text on one line (no control character, lone surrogate or
# line separator), not blank, at most 255 characters.
ids = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20),
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=255).filter(
        str.strip
    ),
)
positions = st.integers(1, 10_000)
free_text = st.text(max_size=80)
common = {"enrollment_id": ids, "sequence_id": ids, "contact_id": ids, "at": instants}

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(Subscribed, **common, key=st.none() | free_text),
    st.builds(StepSent, **common, position=positions, idempotency_key=free_text.map(lambda s: f"e{s}:1")),
    st.builds(
        StepFailed, **common, position=positions, error=free_text,
        reason=st.none() | st.sampled_from(["bounced", "complained", "render", "retries exhausted"]) | free_text,
    ),
    st.builds(StepSkipped, **common, position=positions, reason=st.sampled_from(list(SkipReason))),
    st.builds(Completed, **common),
    st.builds(Cancelled, **common, reason=st.sampled_from(list(ExitReason))),
)  # fmt: skip


def payload(event: Event) -> dict[str, Any]:
    """The payload as a webhook consumer sees it: through JSON text."""
    loaded: dict[str, Any] = json.loads(json.dumps(event_to_json(event)))
    return loaded


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    """A consumer's validator accepts the schema itself."""
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_schema_ships_in_the_package() -> None:
    """events.json is package data, readable through importlib.resources."""
    text = resources.files("dripcore").joinpath("schemas/events.json").read_text("utf-8")
    assert json.loads(text) == SCHEMA


def test_the_schema_lists_every_wire_name() -> None:
    """One definition per event type in EVENT_TYPES, no more, no fewer."""
    names = set(EVENT_TYPES)
    assert set(SCHEMA["properties"]["type"]["enum"]) == names
    assert {ref["$ref"].removeprefix("#/$defs/") for ref in SCHEMA["oneOf"]} == names
    for name in names:
        assert SCHEMA["$defs"][name]["properties"]["type"] == {"const": name}


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_each_definition_has_exactly_the_events_fields(name: str) -> None:
    """Every attrs field of the event class is a required property, and nothing else is allowed."""
    definition = SCHEMA["$defs"][name]
    fields = {"type"} | {f.name for f in attrs.fields(EVENT_TYPES[name])}
    assert set(definition["properties"]) == fields
    assert set(definition["required"]) == fields
    assert definition["additionalProperties"] is False


def test_reason_enums_follow_the_model() -> None:
    """Skip and exit reasons in the schema are exactly the model's enums (update events.json with them)."""
    defs = SCHEMA["$defs"]
    assert defs["sequence.step.skipped"]["properties"]["reason"]["enum"] == [r.value for r in SkipReason]
    assert defs["sequence.cancelled"]["properties"]["reason"]["enum"] == [r.value for r in ExitReason]


@given(events)
def test_every_event_payload_validates(event: Event) -> None:
    """Whatever event the model allows, its wire payload passes the schema."""
    VALIDATOR.validate(payload(event))


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_the_documented_examples_validate(name: str) -> None:
    """The example in each definition is a valid payload (it is what the docs show)."""
    for example in SCHEMA["$defs"][name]["examples"]:
        VALIDATOR.validate(example)


def _sample(**changes: Any) -> dict[str, Any]:
    event = Cancelled(enrollment_id="e1", sequence_id="s1", contact_id="c1", at=AT, reason="manual")
    return {**payload(event), **changes}


@pytest.mark.parametrize(
    "bad",
    [
        _sample(type="sequence.exploded"),
        _sample(reason="bored"),
        _sample(at="2026-03-01T09:00:00"),  # no zone
        _sample(at="2026-03-01T09:00:00+02:00"),  # not UTC
        _sample(enrollment_id=""),
        _sample(enrollment_id="   "),
        _sample(contact_id="a\nb"),
        _sample(sequence_id="x" * 256),
        _sample(extra="field"),
        {k: v for k, v in _sample().items() if k != "reason"},
        {**payload(StepSent(enrollment_id="e", sequence_id="s", contact_id="c", at=AT,
                            position=1, idempotency_key="e:1")), "position": 0},
        {**payload(StepSent(enrollment_id="e", sequence_id="s", contact_id="c", at=AT,
                            position=1, idempotency_key="e:1")), "position": "1"},
    ],
)  # fmt: skip
def test_malformed_payloads_are_rejected(bad: dict[str, Any]) -> None:
    """The schema is strict enough to catch a wrong payload."""
    with pytest.raises(SchemaError):
        VALIDATOR.validate(bad)


def test_identifier_rule_matches_the_model() -> None:
    """The schema's id rule agrees with the model's on the edge cases."""
    for text in ["a", " a ", "\u00a0x", "x" * 255, "caf\u00e9 \u200d"]:
        assert _valid_id(text)
        VALIDATOR.validate(_sample(enrollment_id=text))
    for text in ["", " ", "\u2003", "a\rb", "a\x00b", "x" * 256, "tab\there", "nel\x85", "sep\u2028"]:
        assert not _valid_id(text)
        with pytest.raises(SchemaError):
            VALIDATOR.validate(_sample(enrollment_id=text))
