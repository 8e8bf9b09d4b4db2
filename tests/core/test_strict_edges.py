"""Each case the strict-edges review found, as an example: what used to leak or be coerced now
raises a DripcoreError naming the field (for JSON: the path in the document)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from dripcore import (
    Contact,
    DecodeError,
    Delay,
    DripcoreError,
    Enrollment,
    Event,
    InvalidContact,
    InvalidDelay,
    InvalidEnrollment,
    InvalidSequence,
    InvalidStep,
    InvalidTriggerEvent,
    InvalidWindow,
    SenderIdentity,
    SendWindow,
    Sequence,
    Step,
    StepSent,
    TriggerEvent,
    TriggerType,
    ValidationError,
    event_from_json,
    event_to_json,
    make_converter,
)

UTC = timezone.utc
AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
conv = make_converter()


def sequence_document(**changes: Any) -> dict[str, Any]:
    """A welcome sequence as JSON, as a web request would post it."""
    sequence = Sequence(
        id="welcome", name="Welcome", status="active",
        steps=(Step(position=1, subject="Hi", text="Welcome!"),
               Step(position=2, delay=Delay.days(2), subject="Tips", text="Three tips")),
    )  # fmt: skip
    document: dict[str, Any] = json.loads(json.dumps(conv.unstructure(sequence)))
    return {**document, **changes}


def with_step(index: int, **changes: Any) -> dict[str, Any]:
    document = sequence_document()
    document["steps"][index] = {**document["steps"][index], **changes}
    return document


def decode_error(document: Any, cls: Any = Sequence) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        conv.structure(document, cls)
    return info.value


class TestJsonIsNotCoerced:
    def test_string_false_is_not_true_for_step_active(self) -> None:
        error = decode_error(with_step(1, active="false"))
        assert isinstance(error, DecodeError)
        assert (error.field, error.value) == ("steps[1].active", "false")

    @pytest.mark.parametrize("flag", ["false", "true", 0, 1, None, [], {}])
    def test_string_false_does_not_enroll_existing(self, flag: object) -> None:
        """Not a boolean, not a way to enroll a whole list on activation."""
        error = decode_error(sequence_document(enroll_existing=flag))
        assert isinstance(error, DecodeError)
        assert error.field == "enroll_existing"

    def test_fractional_delay_amount_is_refused_not_truncated(self) -> None:
        error = decode_error(with_step(1, delay={"amount": 1.9, "unit": "days"}))
        assert isinstance(error, DecodeError)
        assert (error.field, error.value) == ("steps[1].delay.amount", 1.9)
        with pytest.raises(DecodeError):
            conv.structure({"amount": 1.9, "unit": "days"}, Delay)

    def test_fractional_step_position_is_refused_not_truncated(self) -> None:
        error = decode_error(with_step(1, position=2.7))
        assert (type(error), error.field, error.value) == (DecodeError, "steps[1].position", 2.7)

    @pytest.mark.parametrize("position", [True, "2", 2.0, None, [2]])
    def test_a_position_that_is_not_an_integer_is_refused(self, position: object) -> None:
        error = decode_error(with_step(1, position=position))
        assert (type(error), error.field) == (DecodeError, "steps[1].position")

    def test_a_number_for_a_text_field_is_refused(self) -> None:
        error = decode_error(with_step(0, subject=42))
        assert (type(error), error.field, error.value) == (DecodeError, "steps[0].subject", 42)


class TestJsonShapeErrorsNameThePath:
    def test_a_missing_key_is_a_decode_error_naming_its_path(self) -> None:
        document = sequence_document()
        del document["steps"][1]["position"]
        error = decode_error(document)
        assert (type(error), error.field) == (DecodeError, "steps[1].position")
        assert "missing" in error.reason

    def test_an_unknown_key_is_a_decode_error_naming_its_path(self) -> None:
        error = decode_error(with_step(0, surprise=1))
        assert (type(error), error.field, error.value) == (DecodeError, "steps[0].surprise", 1)
        assert "unknown key" in error.reason

    @pytest.mark.parametrize("steps", [{"position": 1}, "steps", 5, [[1, 2]], [None]])
    def test_a_list_where_an_object_is_expected_and_the_reverse_are_decode_errors(self, steps: object) -> None:
        error = decode_error(sequence_document(steps=steps))
        assert isinstance(error, DecodeError)
        assert error.field in ("steps", "steps[0]")

    @pytest.mark.parametrize("document", [[], "sequence", 5, None, True])
    def test_a_document_that_is_not_an_object_is_named_by_its_type(self, document: object) -> None:
        error = decode_error(document)
        assert (type(error), error.field) == (DecodeError, "sequence")

    def test_a_value_the_model_refuses_keeps_the_models_error_with_the_documents_path(self) -> None:
        error = decode_error(with_step(1, subject="Hi\r\nBcc: everyone@example.com"))
        assert (type(error), error.field) == (InvalidStep, "steps[1].subject")
        error = decode_error(with_step(1, delay={"amount": -1, "unit": "days"}))
        assert (type(error), error.field) == (InvalidDelay, "steps[1].delay.amount")
        error = decode_error(with_step(1, window={"days": [7]}))
        assert (type(error), error.field) == (InvalidWindow, "steps[1].window.days")
        error = decode_error(sequence_document(name=" "))
        assert (type(error), error.field) == (InvalidSequence, "name")

    def test_a_step_the_sequence_refuses_is_named_by_its_index_in_the_document(self) -> None:
        """The model names a step by its position; a JSON client knows it by its index."""
        first = {"position": 1, "subject": "a", "text": "b"}
        third = {"position": 3, "subject": "a", "text": "b", "condition": {"type": "opened", "step": 2}}
        error = decode_error(sequence_document(steps=[first, third]))
        assert (type(error).__name__, error.field, error.value) == ("InvalidCondition", "steps[1].condition.step", 2)
        error = decode_error(sequence_document(steps=[first, {**third, "condition": None}, first]))
        assert (type(error).__name__, error.field, error.value) == ("DuplicateStepPosition", "steps[2].position", 1)

    def test_event_from_json_refuses_an_unknown_key_with_a_decode_error(self) -> None:
        payload = {**event_to_json(StepSent(enrollment_id="e1", sequence_id="s", contact_id="c", at=AT, position=1,
                                            idempotency_key="e1:1")), "surprise": True}  # fmt: skip
        with pytest.raises(DecodeError) as info:
            event_from_json(payload)
        assert (info.value.field, info.value.value) == ("surprise", True)

    @pytest.mark.parametrize(
        ("payload", "field"),
        [({}, "type"), ({"type": ["sequence.completed"]}, "type"), ([], "event"), ({"type": "sequence.completed"},
                                                                                     "enrollment_id")],
    )  # fmt: skip
    def test_event_from_json_refuses_a_malformed_payload(self, payload: Any, field: str) -> None:
        with pytest.raises(DecodeError) as info:
            event_from_json(payload)
        assert info.value.field == field

    def test_any_event_decodes_through_the_union_only_with_its_own_fields(self) -> None:
        payload = event_to_json(StepSent(enrollment_id="e1", sequence_id="s", contact_id="c", at=AT, position=1,
                                         idempotency_key="e1:1"))  # fmt: skip
        assert conv.structure(payload, Event) == event_from_json(payload)  # type: ignore[arg-type]
        with pytest.raises(DecodeError) as info:
            conv.structure({**payload, "position": "1"}, Event)  # type: ignore[arg-type]
        assert info.value.field == "position"


class TestConstructorsRaiseOnlyDripcoreErrors:
    def test_a_nested_list_of_weekdays_is_an_invalid_window(self) -> None:
        with pytest.raises(InvalidWindow) as info:
            SendWindow(days=[[1]])  # type: ignore[list-item]
        assert info.value.field == "window.days"

    @pytest.mark.parametrize("days", [{0: "mon"}, "mon", 5, [True], [1.0]])
    def test_weekdays_of_the_wrong_kind_are_an_invalid_window(self, days: Any) -> None:
        with pytest.raises(InvalidWindow):
            SendWindow(days=days)

    def test_a_number_for_exit_on_is_an_invalid_sequence(self) -> None:
        with pytest.raises(InvalidSequence) as info:
            Sequence(id="s", name="S", exit_on=5)  # type: ignore[arg-type]
        assert info.value.field == "sequence.exit_on"

    @pytest.mark.parametrize("steps", [5, {"position": 1}, "steps"])
    def test_steps_that_are_not_a_list_of_steps_are_an_invalid_sequence(self, steps: Any) -> None:
        with pytest.raises(InvalidSequence) as info:
            Sequence(id="s", name="S", steps=steps)
        assert info.value.field == "sequence.steps"

    @pytest.mark.parametrize("clicked", [[[1]], [[[1], "x"]], [[1, "a\x00"]], [(0, "x")], 5, [{"a": 1}]])
    def test_clicks_that_are_not_position_link_pairs_are_an_invalid_enrollment(self, clicked: Any) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(id="e1", sequence_id="s", contact_id="c", status="active", enrolled_at=AT, next_step_due_at=AT,
                       clicked=clicked)  # fmt: skip
        assert info.value.field == "enrollment.clicked"

    @pytest.mark.parametrize("opened", [[[1]], [0], [2**31], ["1"], frozenset({"x"}), frozenset({True})])
    def test_opens_that_are_not_step_positions_are_an_invalid_enrollment(self, opened: Any) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(id="e1", sequence_id="s", contact_id="c", status="active", enrolled_at=AT, next_step_due_at=AT,
                       opened=opened)  # fmt: skip
        assert info.value.field == "enrollment.opened"

    @pytest.mark.parametrize("position", [2**31, 10**30])
    def test_a_position_beyond_32_bits_is_an_invalid_step(self, position: int) -> None:
        """Stores keep positions in 32-bit integer columns."""
        with pytest.raises(InvalidStep):
            Step(position=position, subject="Hi", text="x")

    @pytest.mark.parametrize("year", [0, 10_000, 10**30, 2025.0, "2025", None])
    def test_an_anniversary_of_an_impossible_year_is_an_invalid_event(self, year: Any) -> None:
        with pytest.raises(InvalidTriggerEvent) as info:
            TriggerEvent.anniversary("c1", "birthday", year=year)
        assert info.value.field == "event.key"

    def test_a_position_of_five_thousand_digits_is_an_invalid_step(self) -> None:
        with pytest.raises(InvalidStep):
            Step(position=10**5000, subject="Hi", text="x")

    def test_an_event_position_must_be_a_step_position(self) -> None:
        with pytest.raises(DripcoreError):
            StepSent(enrollment_id="e1", sequence_id="s", contact_id="c", at=AT, position="1",  # type: ignore[arg-type]
                     idempotency_key="e1:1")  # fmt: skip


class TestTextIsSafe:
    @pytest.mark.parametrize(
        "address",
        ["ana\x00@example.com", "ana\ud800@example.com", "x>,<v@evil.example", "a;b@c", "Ana <ana@example.com>",
         "ana@example.com, bo@example.com", "ana@example.com\r\nBcc: all@example.com"],
    )  # fmt: skip
    def test_an_email_that_is_not_one_plain_address_is_refused(self, address: str) -> None:
        with pytest.raises(InvalidContact) as info:
            Contact(id="c1", email=address)
        assert info.value.field == "contact.email"
        with pytest.raises(InvalidStep) as sender:
            SenderIdentity(from_email="team@example.com", reply_to=address)
        assert sender.value.field == "sender.reply_to"

    @pytest.mark.parametrize("name", ["Ana\x00", "Ana\x85", "Ana\u2028Silva", "Ana\u2029", "Ana\ud800", "Ana\tSilva"])
    def test_a_name_with_a_control_character_or_line_separator_is_refused(self, name: str) -> None:
        with pytest.raises(InvalidContact) as info:
            Contact(id="c1", email="ana@example.com", first_name=name)
        assert info.value.field == "contact.first_name"
        with pytest.raises(InvalidContact) as last:
            Contact(id="c1", email="ana@example.com", last_name=name)
        assert last.value.field == "contact.last_name"

    def test_names_may_be_empty_and_hold_any_printable_text(self) -> None:
        contact = Contact(id="c1", email="ana@example.com", first_name="", last_name="Ñúñez-O'Brien 李")
        assert contact.last_name == "Ñúñez-O'Brien 李"

    @pytest.mark.parametrize(
        "build",
        [
            lambda text: SenderIdentity(from_email="a@example.com", from_name=text),
            lambda text: Step(position=1, subject=text, text="x"),
            lambda text: Step(position=1, template_id="t", name=text),
            lambda text: TriggerEvent(type=TriggerType.TAG_ADDED, contact_id="c1", value=text),
        ],
    )
    def test_one_line_text_fields_refuse_line_separators(self, build: Any) -> None:
        for text in ["a\u2028b", "a\x85b", "a\x00b", "a\nb", "a\ud800b"]:
            with pytest.raises(DripcoreError):
                build(text)

    @pytest.mark.parametrize("body", ["<p>\x00</p>", "caf\udce9"])
    def test_a_body_with_nul_or_a_lone_surrogate_is_refused(self, body: str) -> None:
        with pytest.raises(InvalidStep) as info:
            Step(position=1, subject="Hi", html=body)
        assert info.value.field == "step.html"
        assert Step(position=1, subject="Hi", text="line one\nline two\tand a tab").text

    @pytest.mark.parametrize(
        ("metadata", "field"),
        [({"note": "a\x00b"}, "contact.metadata.note"), ({"a\x00": 1}, "contact.metadata['a\\x00']"),
         ({"deep": [{"x": "\udc80"}]}, "contact.metadata.deep[0].x"), ({"n": 10**5000}, "contact.metadata.n")],
    )  # fmt: skip
    def test_metadata_no_store_can_encode_is_refused(self, metadata: dict[str, Any], field: str) -> None:
        with pytest.raises(InvalidContact) as info:
            Contact(id="c1", email="ana@example.com", metadata=metadata)
        assert info.value.field == field
