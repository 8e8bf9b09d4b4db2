"""Enroll, pause, resume, exit, the transition table, trigger matching and anniversaries."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import attrs
import pytest

from dripcore import (
    Condition,
    ConditionType,
    Contact,
    ContactSuppressed,
    Delay,
    Enrollment,
    EnrollmentStatus,
    ExitReason,
    InvalidEnrollment,
    InvalidTransition,
    PausePolicy,
    SendWindow,
    Sequence,
    SequenceStateError,
    SequenceStatus,
    Step,
    Subscribed,
    Trigger,
    TriggerEvent,
    TriggerType,
    WindowAction,
    advance,
    anniversary_date,
    enroll,
    exit,
    is_anniversary,
    matches,
    pause,
    resume,
    scheduler,
)
from dripcore.scheduler import TRANSITIONS, Action, exits_on
from tests.builders import T0


def seq(**kw: object) -> Sequence:
    fields: dict[str, object] = {
        "id": "welcome",
        "name": "Welcome",
        "status": SequenceStatus.ACTIVE,
        "steps": (
            Step(position=1, subject="Hi", text="a"),
            Step(position=2, delay=Delay.hours(24), subject="Tips", text="b"),
            Step(position=3, delay=Delay.days(6), subject="Offer", text="c"),
        ),
    }
    fields.update(kw)
    return Sequence(**fields)  # type: ignore[arg-type]


def enrolled(sequence: Sequence | None = None, at: datetime = T0) -> Enrollment:
    return enroll(sequence or seq(), None, at, enrollment_id="e1", contact_id="c1").enrollment


class TestEnroll:
    def test_enroll_starts_active_with_first_step_due(self) -> None:
        result = enroll(seq(), None, T0, enrollment_id="e1", contact_id="c1", variables={"plan": "pro"}, key="k")
        e = result.enrollment
        assert e == Enrollment(
            id="e1", sequence_id="welcome", contact_id="c1", status=EnrollmentStatus.ACTIVE,
            enrolled_at=T0, next_step_due_at=T0, variables={"plan": "pro"}, key="k",
        )  # fmt: skip
        subscribed = Subscribed(enrollment_id="e1", sequence_id="welcome", contact_id="c1", at=T0, key="k")
        assert result.events == (subscribed,)

    def test_started_at_in_the_past_makes_first_step_due_from_then(self) -> None:
        first_delayed = seq(steps=(Step(position=1, delay=Delay.hours(2), subject="a", text="b"),))
        e = enroll(first_delayed, None, T0, enrollment_id="e1", contact_id="c1", started_at=T0 - timedelta(hours=5))
        assert e.enrollment.enrolled_at == T0 - timedelta(hours=5)
        assert e.enrollment.next_step_due_at == T0 - timedelta(hours=3)

    @pytest.mark.parametrize("status", [SequenceStatus.DRAFT, SequenceStatus.PAUSED, SequenceStatus.ARCHIVED])
    def test_only_active_sequences_take_enrollments(self, status: SequenceStatus) -> None:
        paused_at = T0 if status is SequenceStatus.PAUSED else None
        with pytest.raises(SequenceStateError, match=f"status={status.value}") as info:
            enroll(seq(status=status, paused_at=paused_at), None, T0, enrollment_id="e1", contact_id="c1")
        assert info.value.sequence_id == "welcome"

    def test_suppressed_contact_is_not_enrolled(self) -> None:
        contact = Contact(id="c1", email="a@example.com", suppressed=ExitReason.UNSUBSCRIBED)
        with pytest.raises(ContactSuppressed, match="'c1'"):
            enroll(seq(), contact, T0, enrollment_id="e1")


class TestPauseResume:
    def test_pause_holds_the_enrollment(self) -> None:
        e = pause(enrolled(), T0 + timedelta(hours=1)).enrollment
        assert e.status is EnrollmentStatus.PAUSED
        assert e.paused_at == T0 + timedelta(hours=1)

    def test_bump_resume_sends_an_overdue_step_once_then_keeps_delays(self) -> None:
        s = seq()
        e = advance(enrolled(s), T0, sequence=s).enrollment  # step 1 sent; step 2 due at +24h
        e = pause(e, T0 + timedelta(hours=1)).enrollment
        back = T0 + timedelta(days=10)
        e = resume(e, back, sequence=s, policy=PausePolicy.BUMP).enrollment
        assert e.next_step_due_at == T0 + timedelta(hours=24)  # overdue: goes at the next advance
        sent = advance(e, back, sequence=s)
        assert sent.send is not None
        assert sent.send.position == 2
        assert sent.enrollment.next_step_due_at == back + timedelta(days=6)
        assert advance(sent.enrollment, back, sequence=s).send is None

    def test_bump_resume_keeps_a_due_time_still_in_the_future(self) -> None:
        s = seq()
        e = advance(enrolled(s), T0, sequence=s).enrollment
        e = pause(e, T0 + timedelta(hours=1)).enrollment
        e = resume(e, T0 + timedelta(hours=2), sequence=s, policy=PausePolicy.BUMP).enrollment
        assert e.next_step_due_at == T0 + timedelta(hours=24)

    def test_extend_resume_keeps_the_remaining_wait(self) -> None:
        s = seq()
        e = advance(enrolled(s), T0, sequence=s).enrollment
        e = pause(e, T0 + timedelta(hours=10)).enrollment
        e = resume(e, T0 + timedelta(days=3, hours=10), sequence=s, policy=PausePolicy.EXTEND).enrollment
        assert e.status is EnrollmentStatus.ACTIVE
        assert e.paused_at is None
        assert e.next_step_due_at == T0 + timedelta(hours=24) + timedelta(days=3)

    def test_resume_uses_the_sequence_policy_by_default(self) -> None:
        s = seq(pause_policy=PausePolicy.EXTEND)
        e = pause(enrolled(s), T0).enrollment
        assert resume(e, T0 + timedelta(hours=5), sequence=s).enrollment.next_step_due_at == T0 + timedelta(hours=5)

    def test_resuming_an_active_enrollment_is_refused(self) -> None:
        with pytest.raises(InvalidTransition, match="can't resume enrollment 'e1' when status=active") as info:
            resume(enrolled(), T0, sequence=seq())
        assert (info.value.enrollment_id, info.value.status, info.value.action) == ("e1", "active", "resume")

    def test_pausing_twice_is_refused(self) -> None:
        with pytest.raises(InvalidTransition, match="status=paused"):
            pause(pause(enrolled(), T0).enrollment, T0)


class TestExit:
    def test_exit_records_reason_and_emits_cancelled(self) -> None:
        result = exit(enrolled(), ExitReason.MANUAL, T0)
        assert result.enrollment.status is EnrollmentStatus.EXITED
        assert result.enrollment.exit_reason is ExitReason.MANUAL
        assert result.events[0].reason is ExitReason.MANUAL  # type: ignore[union-attr]

    def test_exit_of_a_paused_enrollment_clears_the_pause(self) -> None:
        e = exit(pause(enrolled(), T0).enrollment, ExitReason.GOAL_MET, T0).enrollment
        assert e.paused_at is None
        assert e.status is EnrollmentStatus.EXITED

    def test_exiting_a_completed_enrollment_is_refused(self) -> None:
        done = attrs.evolve(enrolled(), status=EnrollmentStatus.COMPLETED, next_step_due_at=None, ended_at=T0)
        with pytest.raises(InvalidTransition, match="can't exit enrollment 'e1' when status=completed"):
            exit(done, ExitReason.MANUAL, T0)


class TestTransitionTable:
    def test_terminal_statuses_have_no_way_out(self) -> None:
        assert TRANSITIONS[EnrollmentStatus.COMPLETED] == {}
        assert TRANSITIONS[EnrollmentStatus.EXITED] == {}

    def test_every_status_is_in_the_table(self) -> None:
        assert set(TRANSITIONS) == set(EnrollmentStatus)

    def test_table_targets_are_statuses(self) -> None:
        for row in TRANSITIONS.values():
            for action, target in row.items():
                assert isinstance(action, Action)
                assert isinstance(target, EnrollmentStatus)


def _due_at_window(now: datetime) -> tuple[Sequence, Enrollment]:
    """A step that falls due outside its Monday-only window: advance waits for it to open (DEFER)."""
    monday_only = SendWindow(days=frozenset({0}), outside=WindowAction.MOVE)
    sequence = seq(steps=(Step(position=1, subject="a", text="b", window=monday_only),))
    enrollment = attrs.evolve(enrolled(sequence), next_step_due_at=now)
    return sequence, enrollment


def _skip_then_wait(now: datetime) -> tuple[Sequence, Enrollment]:
    """Step 1 went; step 2 is skipped for its condition, and step 3's delay is not up yet (SKIP)."""
    sequence = seq(steps=(
        Step(position=1, subject="a", text="b"),
        Step(position=2, subject="c", text="d", condition=Condition(type=ConditionType.OPENED, step=1)),
        Step(position=3, delay=Delay.hours(24), subject="e", text="f"),
    ))  # fmt: skip
    return sequence, advance(enrolled(sequence, now), now, sequence=sequence).enrollment


def _last_step_sent(now: datetime) -> tuple[Sequence, Enrollment]:
    """The last step went; the next call finds none left (COMPLETE)."""
    sequence = seq(steps=(Step(position=1, subject="a", text="b"),))
    return sequence, advance(enrolled(sequence, now), now, sequence=sequence).enrollment


class TestTheTableWritesEveryStatus:
    """advance() reads each status it writes from TRANSITIONS: take an action out and advance refuses it.

    (SEND, on the hot path, reads its row once, when the module loads: the table is immutable.)"""

    @pytest.mark.parametrize(
        ("action", "situation"),
        [
            (Action.SKIP, _skip_then_wait),
            (Action.DEFER, _due_at_window),
            (Action.COMPLETE, _last_step_sent),
        ],
    )
    def test_advance_asks_the_table(self, monkeypatch: pytest.MonkeyPatch, action: Action, situation: Any) -> None:
        now = T0 + timedelta(days=1)  # a Tuesday
        sequence, enrollment = situation(now)
        assert advance(enrollment, now, sequence=sequence).enrollment is not enrollment
        active = EnrollmentStatus.ACTIVE
        without = {**TRANSITIONS, active: {a: s for a, s in TRANSITIONS[active].items() if a is not action}}
        monkeypatch.setattr(scheduler, "TRANSITIONS", without)
        message = f"can't {action.value} enrollment 'e1' when status=active"
        with pytest.raises(InvalidTransition, match=message):
            advance(enrollment, now, sequence=sequence)

    def test_the_table_writes_the_status_it_names(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The completion's status comes from the table's COMPLETE entry, not from advance's own code:
        point it at EXITED and the model refuses the result (an exit needs a reason)."""
        sequence, enrollment = _last_step_sent(T0)
        active = EnrollmentStatus.ACTIVE
        monkeypatch.setattr(
            scheduler, "TRANSITIONS",
            {**TRANSITIONS, active: {**TRANSITIONS[active], Action.COMPLETE: EnrollmentStatus.EXITED}},
        )  # fmt: skip
        with pytest.raises(InvalidEnrollment, match="an exited enrollment needs a reason"):
            advance(enrollment, T0, sequence=sequence)


class TestTriggerMatching:
    def test_vip_tag_fires_both_the_any_and_the_vip_sequences(self) -> None:
        """Tagging a contact 'VIP' enters 'tag added, any' and 'tag added, vip' alike."""
        event = TriggerEvent.tag_added("c1", "VIP")
        assert matches(Trigger(type=TriggerType.TAG_ADDED), event)
        assert matches(Trigger(type=TriggerType.TAG_ADDED, value="vip"), event)
        assert not matches(Trigger(type=TriggerType.TAG_ADDED, value="new"), event)

    def test_tags_compare_case_insensitively_but_ids_do_not(self) -> None:
        assert matches(Trigger(type=TriggerType.TAG_ADDED, value="Vip "), TriggerEvent.tag_added("c1", "vIP"))
        assert not matches(Trigger(type=TriggerType.GROUP_ADDED, value="G1"), TriggerEvent.group_added("c1", "g1"))

    def test_other_types_never_match(self) -> None:
        assert not matches(Trigger(type=TriggerType.LIST_ADDED), TriggerEvent.tag_added("c1", "x"))

    def test_any_purchase_and_a_product_purchase(self) -> None:
        event = TriggerEvent.purchase("c1", product_id="p9", order_id="o-1")
        assert matches(Trigger(type=TriggerType.AFTER_PURCHASE), event)
        assert matches(Trigger(type=TriggerType.AFTER_PURCHASE, value="p9"), event)
        assert not matches(Trigger(type=TriggerType.AFTER_PURCHASE, value="p1"), event)
        assert not matches(Trigger(type=TriggerType.AFTER_PURCHASE, value="p9"), TriggerEvent.purchase("c1"))
        assert event.key == "o-1"

    def test_goal_triggers_exit(self) -> None:
        s = seq(exit_on=(Trigger(type=TriggerType.AFTER_PURCHASE),))
        assert exits_on(s, TriggerEvent.purchase("c1"))
        assert not exits_on(s, TriggerEvent.tag_added("c1", "x"))


class TestAnniversaries:
    def test_feb_29_birthday_falls_on_feb_28_in_common_years(self) -> None:
        born = date(2000, 2, 29)
        assert anniversary_date(born, 2027) == date(2027, 2, 28)
        assert anniversary_date(born, 2028) == date(2028, 2, 29)
        assert is_anniversary(born, date(2027, 2, 28))
        assert not is_anniversary(born, date(2028, 2, 28))
        assert is_anniversary(born, date(2028, 2, 29))

    def test_ordinary_birthday(self) -> None:
        assert is_anniversary(date(1990, 7, 14), date(2026, 7, 14))
        assert not is_anniversary(date(1990, 7, 14), date(2026, 7, 15))

    def test_the_day_itself_is_not_an_anniversary(self) -> None:
        assert not is_anniversary(date(2026, 7, 14), date(2026, 7, 14))
