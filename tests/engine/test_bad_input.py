"""Every invalid value gets a specific DripcoreError naming the field and the value."""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar

import pytest

from dripcore import (
    Condition,
    ConditionType,
    Contact,
    DecodeError,
    Delay,
    DripcoreError,
    DuplicateStepPosition,
    Enrollment,
    EnrollmentStatus,
    ExitReason,
    InvalidCondition,
    InvalidContact,
    InvalidDelay,
    InvalidEnrollment,
    InvalidSequence,
    InvalidStep,
    InvalidTimezone,
    InvalidTrigger,
    InvalidTriggerEvent,
    NaiveDatetimeError,
    Sequence,
    SequenceStatus,
    Step,
    Trigger,
    TriggerEvent,
    TriggerType,
    UnknownTriggerType,
    ValidationError,
    make_converter,
)
from tests.builders import T0, UTC


def assert_names(error: pytest.ExceptionInfo[ValidationError], field: str, value: object) -> None:
    assert isinstance(error.value, DripcoreError)
    assert error.value.field == field
    assert error.value.value == value
    assert field in str(error.value)
    assert repr(value) in str(error.value)


class TestDelays:
    def test_negative_delay(self) -> None:
        with pytest.raises(InvalidDelay) as info:
            Delay.hours(-1)
        assert_names(info, "delay.amount", -1)

    def test_absurd_delay(self) -> None:
        with pytest.raises(InvalidDelay, match="3660-day maximum") as info:
            Delay.weeks(10_000)
        assert_names(info, "delay.amount", 10_000)

    def test_astronomical_delay_does_not_overflow(self) -> None:
        with pytest.raises(InvalidDelay):
            Delay.weeks(10**30)

    @pytest.mark.parametrize("amount", [1.5, "3", True, None])
    def test_non_integer_amount(self, amount: object) -> None:
        with pytest.raises(InvalidDelay, match="integer"):
            Delay(amount=amount, unit="hours")  # type: ignore[arg-type]

    def test_unknown_unit(self) -> None:
        with pytest.raises(InvalidDelay) as info:
            Delay(amount=1, unit="fortnights")  # type: ignore[arg-type]
        assert_names(info, "delay.unit", "fortnights")

    @pytest.mark.parametrize("text", ["", "soon", "-2 days", "2 fortnights", "2.5 hours", "days 2"])
    def test_unparseable_text(self, text: str) -> None:
        with pytest.raises(InvalidDelay) as info:
            Delay.parse(text)
        assert_names(info, "delay", text)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("immediately", Delay.immediately()),
            ("2 days", Delay.days(2)),
            ("1 day", Delay.days(1)),
            ("after 2 days", Delay.days(2)),
            ("30 minutes", Delay.minutes(30)),
            ("24h", Delay.hours(24)),
            ("1 Week", Delay.weeks(1)),
            ("259200 seconds", Delay.seconds(259200)),
        ],
    )
    def test_parse_accepts_the_usual_spellings(self, text: str, expected: Delay) -> None:
        assert Delay.parse(text) == expected

    def test_hours_and_days_differ(self) -> None:
        assert Delay.hours(24) != Delay.days(1)
        assert Delay.hours(24).nominal == Delay.days(1).nominal
        assert Delay.days(1).is_calendar
        assert not Delay.hours(24).is_calendar


class TestSteps:
    def test_step_with_no_content(self) -> None:
        with pytest.raises(InvalidStep, match="needs content"):
            Step(position=1, subject="Hello")

    def test_html_step_without_subject(self) -> None:
        with pytest.raises(InvalidStep) as info:
            Step(position=1, html="<p>Hi</p>")
        assert_names(info, "step.subject", None)

    def test_template_step_needs_nothing_else(self) -> None:
        assert Step(position=1, template_id="welcome-v2").template_id == "welcome-v2"

    @pytest.mark.parametrize("position", [0, -1, 1.0, "1", True])
    def test_bad_position(self, position: object) -> None:
        with pytest.raises(InvalidStep) as info:
            Step(position=position, subject="a", text="b")  # type: ignore[arg-type]
        assert_names(info, "step.position", position)

    def test_subject_with_newline_is_rejected(self) -> None:
        with pytest.raises(InvalidStep, match="single line"):
            Step(position=1, subject="Hi\r\nBcc: everyone@example.com", text="x")

    def test_binary_body_is_rejected(self) -> None:
        with pytest.raises(InvalidStep, match="binary"):
            Step(position=1, subject="Hi", text="\x00\x01")

    def test_delay_must_be_a_delay(self) -> None:
        with pytest.raises(InvalidStep, match=r"parse_wait"):
            Step(position=1, delay="2 days", subject="a", text="b")  # type: ignore[arg-type]

    def test_duplicate_step_positions(self) -> None:
        with pytest.raises(DuplicateStepPosition) as info:
            Sequence(
                id="s",
                name="S",
                steps=(Step(position=2, subject="a", text="b"), Step(position=2, subject="c", text="d")),
            )
        assert_names(info, "steps.position", 2)

    def test_condition_pointing_at_a_later_step(self) -> None:
        with pytest.raises(InvalidCondition) as info:
            Step(position=2, subject="a", text="b", condition=Condition(type=ConditionType.OPENED, step=3))
        assert_names(info, "step.condition.step", 3)

    def test_condition_pointing_at_a_missing_step(self) -> None:
        with pytest.raises(InvalidCondition) as info:
            Sequence(
                id="s",
                name="S",
                steps=(
                    Step(position=1, subject="a", text="b"),
                    Step(position=3, subject="a", text="b", condition=Condition(type="opened", step=2)),
                ),
            )
        assert_names(info, "steps[3].condition.step", 2)

    def test_link_on_an_open_condition(self) -> None:
        with pytest.raises(InvalidCondition, match="link"):
            Condition(type=ConditionType.OPENED, step=1, link="https://x.example")


class TestTriggers:
    def test_unknown_trigger_type(self) -> None:
        with pytest.raises(UnknownTriggerType) as info:
            Trigger(type="tag_removed")  # type: ignore[arg-type]
        assert_names(info, "trigger.type", "tag_removed")

    @pytest.mark.parametrize("value", [None, "wedding", "Birthday"])
    def test_anniversary_needs_birthday_or_created(self, value: str | None) -> None:
        with pytest.raises(InvalidTrigger, match="birthday") as info:
            Trigger(type=TriggerType.ANNIVERSARY, value=value)
        assert info.value.field == "trigger.value"

    def test_trigger_event_without_contact(self) -> None:
        with pytest.raises(InvalidTriggerEvent) as info:
            TriggerEvent.tag_added("", "vip")
        assert_names(info, "event.contact_id", "")

    def test_trigger_event_of_unknown_type(self) -> None:
        with pytest.raises(UnknownTriggerType):
            TriggerEvent(type="signup", contact_id="c1")  # type: ignore[arg-type]

    def test_trigger_event_with_non_json_variables(self) -> None:
        with pytest.raises(InvalidTriggerEvent, match="JSON-safe"):
            TriggerEvent(type=TriggerType.MANUAL, contact_id="c1", variables={"when": object()})


class TestSequences:
    def test_unknown_time_zone(self) -> None:
        with pytest.raises(InvalidTimezone) as info:
            Sequence(id="s", name="S", timezone="Mars/Olympus_Mons")
        assert_names(info, "sequence.timezone", "Mars/Olympus_Mons")

    def test_empty_name(self) -> None:
        with pytest.raises(InvalidSequence) as info:
            Sequence(id="s", name="  ")
        assert_names(info, "sequence.name", "  ")

    def test_unknown_status(self) -> None:
        with pytest.raises(InvalidSequence) as info:
            Sequence(id="s", name="S", status="running")  # type: ignore[arg-type]
        assert_names(info, "sequence.status", "running")

    def test_steps_are_kept_sorted(self) -> None:
        s = Sequence(
            id="s",
            name="S",
            status=SequenceStatus.ACTIVE,
            steps=(Step(position=5, subject="a", text="b"), Step(position=1, subject="c", text="d")),
        )
        assert [step.position for step in s.steps] == [1, 5]


class TestEnrollmentConsistency:
    base: ClassVar[dict[str, object]] = {"id": "e1", "sequence_id": "s", "contact_id": "c1", "enrolled_at": T0}

    def test_naive_datetime(self) -> None:
        with pytest.raises(NaiveDatetimeError) as info:
            Enrollment(**self.base | {"enrolled_at": datetime(2026, 1, 1)}, status="active", next_step_due_at=T0)
        assert_names(info, "enrollment.enrolled_at", datetime(2026, 1, 1))

    def test_active_without_due_time(self) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(**self.base, status=EnrollmentStatus.ACTIVE)
        assert_names(info, "enrollment.next_step_due_at", None)

    def test_completed_with_a_due_time(self) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(**self.base, status=EnrollmentStatus.COMPLETED, next_step_due_at=T0, ended_at=T0)
        assert_names(info, "enrollment.next_step_due_at", T0)

    def test_exited_without_reason(self) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(**self.base, status=EnrollmentStatus.EXITED, ended_at=T0)
        assert_names(info, "enrollment.exit_reason", None)

    def test_active_with_an_exit_reason(self) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(**self.base, status="active", next_step_due_at=T0, exit_reason=ExitReason.MANUAL)
        assert_names(info, "enrollment.exit_reason", "manual")

    def test_paused_without_paused_at(self) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(**self.base, status=EnrollmentStatus.PAUSED, next_step_due_at=T0)
        assert_names(info, "enrollment.paused_at", None)

    def test_sent_step_without_time(self) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(**self.base, status="active", next_step_due_at=T0, last_step_sent=2)
        assert_names(info, "enrollment.last_step_sent_at", None)

    def test_unknown_status(self) -> None:
        with pytest.raises(InvalidEnrollment) as info:
            Enrollment(**self.base, status="cancelled", next_step_due_at=T0)  # type: ignore[arg-type]
        assert_names(info, "enrollment.status", "cancelled")

    def test_pendulum_and_offset_datetimes_become_utc(self) -> None:
        import pendulum

        local = pendulum.datetime(2026, 3, 2, 10, 0, tz="Europe/Paris")
        e = Enrollment(**self.base | {"enrolled_at": local}, status="active", next_step_due_at=local)
        assert e.enrolled_at == T0
        assert type(e.enrolled_at) is datetime
        assert e.enrolled_at.tzinfo is UTC


class TestContacts:
    def test_invalid_email(self) -> None:
        with pytest.raises(InvalidContact) as info:
            Contact(id="c1", email="not-an-email")
        assert_names(info, "contact.email", "not-an-email")

    def test_unknown_zone(self) -> None:
        with pytest.raises(InvalidTimezone) as info:
            Contact(id="c1", email="a@example.com", timezone="Europe/Atlantis")
        assert_names(info, "contact.timezone", "Europe/Atlantis")

    def test_suppression_must_be_a_suppression_reason(self) -> None:
        with pytest.raises(InvalidContact) as info:
            Contact(id="c1", email="a@example.com", suppressed=ExitReason.GOAL_MET)
        assert_names(info, "contact.suppressed", "goal_met")

    def test_birthday_must_be_a_date(self) -> None:
        with pytest.raises(InvalidContact, match="birthday"):
            Contact(id="c1", email="a@example.com", birthday=T0)  # type: ignore[arg-type]
        assert Contact(id="c1", email="a@example.com", birthday=date(1990, 1, 1)).birthday == date(1990, 1, 1)

    def test_metadata_must_be_json_safe(self) -> None:
        with pytest.raises(InvalidContact) as info:
            Contact(id="c1", email="a@example.com", metadata={"score": float("nan")})
        assert info.value.field == "contact.metadata.score"

    def test_metadata_is_read_only(self) -> None:
        c = Contact(id="c1", email="a@example.com", metadata={"plan": "pro"})
        with pytest.raises(TypeError):
            c.metadata["plan"] = "free"  # type: ignore[index]


class TestSerializationInput:
    def test_a_timestamp_without_offset_is_refused(self) -> None:
        conv = make_converter()
        payload = {"amount": 1, "unit": "days"}
        assert conv.structure(payload, Delay) == Delay.days(1)
        with pytest.raises(NaiveDatetimeError, match="no UTC offset"):
            conv.structure(
                {"id": "c1", "email": "a@example.com", "created_at": "2026-01-01T00:00:00"},
                Contact,
            )

    def test_extra_keys_are_refused(self) -> None:
        conv = make_converter()
        with pytest.raises(DecodeError) as info:
            conv.structure({"amount": 1, "unit": "days", "surprise": 1}, Delay)
        assert_names(info, "surprise", 1)

    def test_a_value_of_the_wrong_json_type_is_refused_by_path(self) -> None:
        conv = make_converter()
        with pytest.raises(DecodeError) as info:
            conv.structure({"id": "s", "name": "S", "steps": [{"position": 1, "template_id": "t", "active": 0}]},
                           Sequence)  # fmt: skip
        assert_names(info, "steps[0].active", 0)

    def test_a_model_error_keeps_its_class_and_takes_the_path(self) -> None:
        conv = make_converter()
        with pytest.raises(InvalidContact) as info:
            conv.structure({"id": "c1", "email": "not-an-email"}, Contact)
        assert_names(info, "email", "not-an-email")
