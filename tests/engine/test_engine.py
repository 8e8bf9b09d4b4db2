"""Unit tests of the Drip engine, one behaviour at a time, on MemoryStore and the fakes."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta

import pytest

from dripcore import (
    Cancelled,
    Completed,
    Condition,
    ConditionType,
    Contact,
    ContactNotFound,
    ContactSuppressed,
    Delay,
    EnrollmentConflict,
    EnrollmentNotFound,
    EnrollmentStatus,
    ExitReason,
    InvalidEngagement,
    InvalidTransition,
    InvalidTriggerEvent,
    OutboxStatus,
    PausePolicy,
    ReentryPolicy,
    RetryPolicy,
    Sequence,
    SequenceNotFound,
    SequenceStateError,
    SequenceStatus,
    SkipReason,
    Step,
    StepFailed,
    StepSent,
    StoreError,
    Subscribed,
    Trigger,
    TriggerEvent,
    TriggerType,
    UnreadableRecord,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.ports import CounterName
from dripcore.testing import DailyCap, FlakySender, RecordingSender
from tests.builders import T0, UTC, World, step, welcome


@pytest.fixture
def world() -> World:
    w = World()
    w.drip.save_sequence(welcome())
    return w


class TestNotify:
    def test_vip_tag_enters_both_the_any_and_the_vip_sequence(self, world: World) -> None:
        world.drip.save_sequence(welcome(id="vip", name="VIP welcome", trigger=Trigger(type="tag_added", value="vip")))
        world.drip.save_sequence(welcome(id="new", name="New", trigger=Trigger(type="tag_added", value="new")))
        created = world.drip.notify(TriggerEvent.tag_added("ana", "VIP"))
        assert sorted(e.sequence_id for e in created) == ["vip", "welcome"]

    def test_refiring_a_trigger_is_a_no_op(self, world: World) -> None:
        assert len(world.drip.notify(TriggerEvent.tag_added("ana", "x"))) == 1
        assert world.drip.notify(TriggerEvent.tag_added("ana", "x")) == []
        assert len(world.store.find_enrollments(contact_id="ana")) == 1

    def test_keyed_purchase_enrolls_once_per_order(self, world: World) -> None:
        world.drip.save_sequence(
            welcome(id="thanks", name="Thanks", trigger=Trigger(type="after_purchase"), reentry=ReentryPolicy.NEVER)
        )
        assert len(world.drip.notify(TriggerEvent.purchase("ana", order_id="o-1"))) == 1
        assert world.drip.notify(TriggerEvent.purchase("ana", order_id="o-1")) == []  # webhook delivered twice
        assert len(world.drip.notify(TriggerEvent.purchase("ana", order_id="o-2"))) == 1

    def test_paused_and_draft_sequences_do_not_enroll(self, world: World) -> None:
        world.drip.pause("welcome")
        world.drip.save_sequence(welcome(id="draft", name="Draft", status=SequenceStatus.DRAFT))
        assert world.drip.notify(TriggerEvent.tag_added("ana", "x")) == []

    def test_suppressed_contact_is_not_enrolled_by_a_trigger(self, world: World) -> None:
        world.contacts.suppress("ana", ExitReason.UNSUBSCRIBED)
        assert world.drip.notify(TriggerEvent.tag_added("ana", "x")) == []

    def test_unknown_contact_and_malformed_event(self, world: World) -> None:
        with pytest.raises(ContactNotFound, match="'nobody'"):
            world.drip.notify(TriggerEvent.tag_added("nobody", "x"))
        with pytest.raises(InvalidTriggerEvent):
            world.drip.notify({"type": "tag_added", "contact_id": "ana"})  # type: ignore[arg-type]

    def test_goal_exits_enrollment_with_goal_met(self, world: World) -> None:
        world.drip.save_sequence(
            welcome(id="cart", name="Cart", trigger=Trigger(type="manual"), exit_on=(Trigger(type="after_purchase"),))
        )
        enrollment, _ = world.drip.enroll("cart", "ana")
        world.drip.notify(TriggerEvent.purchase("ana", order_id="o-9"))
        after = world.drip.get_enrollment(enrollment.id)
        assert after.status is EnrollmentStatus.EXITED
        assert after.exit_reason is ExitReason.GOAL_MET


class TestEnroll:
    def test_enroll_creates_then_returns_the_existing_one(self, world: World) -> None:
        first, created = world.drip.enroll("welcome", "ana", variables={"plan": "pro"})
        assert created
        again, created_again = world.drip.enroll("welcome", "ana")
        assert not created_again
        assert again.id == first.id
        assert world.events.of(Subscribed) == [
            Subscribed(enrollment_id=first.id, sequence_id="welcome", contact_id="ana", at=T0)
        ]

    def test_finished_enrollment_conflicts_unless_reentry_allows(self, world: World) -> None:
        enrollment, _ = world.drip.enroll("welcome", "ana")
        world.drip.cancel_enrollment(enrollment.id)
        with pytest.raises(EnrollmentConflict, match="re-entry policy") as info:
            world.drip.enroll("welcome", "ana")
        assert info.value.status == "exited"
        world.drip.save_sequence(welcome(reentry=ReentryPolicy.AFTER_EXIT))
        again, created = world.drip.enroll("welcome", "ana")
        assert created
        assert again.id != enrollment.id

    @pytest.mark.parametrize("action", ["draft", "pause", "archive"])
    def test_inactive_sequences_refuse_direct_enrollment(self, world: World, action: str) -> None:
        if action == "draft":
            world.drip.save_sequence(welcome(id="d", name="D", status=SequenceStatus.DRAFT))
            sequence_id = "d"
        else:
            getattr(world.drip, action)("welcome")
            sequence_id = "welcome"
        with pytest.raises(SequenceStateError, match=f"sequence '{sequence_id}'"):
            world.drip.enroll(sequence_id, "ana")

    def test_unknown_ids_and_suppressed_contact(self, world: World) -> None:
        with pytest.raises(SequenceNotFound, match="'nope'"):
            world.drip.enroll("nope", "ana")
        with pytest.raises(ContactNotFound, match="'nobody'"):
            world.drip.enroll("welcome", "nobody")
        world.contacts.suppress("bo", ExitReason.BOUNCED)
        with pytest.raises(ContactSuppressed, match="bounced"):
            world.drip.enroll("welcome", "bo")
        assert world.store.find_enrollments() == []


class TestTickAndDelivery:
    def test_welcome_series_is_delivered_at_its_offsets(self, world: World) -> None:
        enrollment, _ = world.drip.enroll("welcome", "ana")
        world.run_for(timedelta(days=10))
        sent = world.recorder.to("ana@example.com")
        assert [(e.position, e.idempotency_key) for e in sent] == [
            (1, f"{enrollment.id}:1"), (2, f"{enrollment.id}:2"), (3, f"{enrollment.id}:3"),
        ]  # fmt: skip
        assert sent[0].subject == "Step 1 for Ana"
        sent_at = [e.at for e in world.events.of(StepSent)]
        assert sent_at == [T0, T0 + timedelta(hours=24), T0 + timedelta(days=7)]
        assert world.drip.get_enrollment(enrollment.id).status is EnrollmentStatus.COMPLETED
        assert world.events.names()[-1] == "sequence.completed"

    def test_paused_sequence_sends_nothing_and_resume_bumps_without_flooding(self, world: World) -> None:
        enrollment, _ = world.drip.enroll("welcome", "ana")
        world.drip.tick()  # step 1
        world.drip.pause("welcome")
        world.run_for(timedelta(days=14))
        assert world.subjects("ana@example.com") == ["Step 1 for Ana"]
        world.drip.resume("welcome")
        report = world.drip.tick()
        assert report.sent == 1  # one overdue step, not two
        world.run_for(timedelta(days=5, hours=23))
        assert len(world.recorder.to("ana@example.com")) == 2
        world.run_for(timedelta(days=1))
        assert len(world.recorder.to("ana@example.com")) == 3
        assert world.drip.get_enrollment(enrollment.id).status is EnrollmentStatus.COMPLETED

    def test_extend_resume_keeps_the_remaining_wait(self, world: World) -> None:
        enrollment, _ = world.drip.enroll("welcome", "ana")
        world.drip.tick()
        world.clock.advance(timedelta(hours=10))
        world.drip.pause("welcome")
        world.clock.advance(timedelta(days=3))
        world.drip.resume("welcome", policy=PausePolicy.EXTEND)
        due = world.drip.get_enrollment(enrollment.id).next_step_due_at
        assert due == T0 + timedelta(hours=24) + timedelta(days=3)

    @pytest.mark.parametrize(
        "retry_settings",
        [{"retry_base": timedelta(minutes=1)}, {"retry": RetryPolicy(base=timedelta(minutes=1))}],
        ids=["flat keyword", "value object"],
    )
    def test_transient_failures_are_retried_with_backoff(self, retry_settings: dict[str, object]) -> None:
        flaky = FlakySender()
        w = World(sender=flaky, **retry_settings)
        w.drip.save_sequence(welcome())
        flaky.fail_next(2)
        enrollment, _ = w.drip.enroll("welcome", "ana")
        first = w.drip.tick()
        assert (first.sent, first.retried) == (0, 1)
        w.clock.advance(timedelta(seconds=59))
        assert w.drip.tick().sent == 0  # backoff not over
        w.clock.advance(timedelta(seconds=1))
        assert w.drip.tick().retried == 1  # second failure, next wait is 2 minutes
        w.clock.advance(timedelta(minutes=2))
        assert w.drip.tick().sent == 1
        message = w.store.get_message(f"{enrollment.id}:1")
        assert message is not None
        assert message.status is OutboxStatus.DELIVERED
        assert message.attempts == 3
        assert len(flaky.inner.sent) == 1  # type: ignore[attr-defined]

    def test_permanent_bounce_fails_the_step_and_exits_the_contact(self) -> None:
        flaky = FlakySender()
        w = World(sender=flaky)
        w.drip.save_sequence(welcome())
        w.drip.save_sequence(welcome(id="other", name="Other", trigger=Trigger(type="manual")))
        flaky.fail_address("ana@example.com", reason="bounced")
        enrollment, _ = w.drip.enroll("welcome", "ana")
        other, _ = w.drip.enroll("other", "ana")
        report = w.drip.tick()
        assert report.failed >= 1
        failed = w.events.of(StepFailed)
        assert failed[0].reason == "bounced"  # type: ignore[union-attr]
        for enrollment_id in (enrollment.id, other.id):
            after = w.drip.get_enrollment(enrollment_id)
            assert after.status is EnrollmentStatus.EXITED
            assert after.exit_reason is ExitReason.BOUNCED
        contact = w.contacts.get("ana")
        assert contact is not None
        assert contact.suppressed is ExitReason.BOUNCED
        assert w.drip.stats("welcome").steps[0].bounced == 1

    def test_retries_give_up_after_max_attempts(self) -> None:
        flaky = FlakySender()
        w = World(sender=flaky, max_attempts=3, retry_base=timedelta(seconds=1))
        w.drip.save_sequence(welcome(steps=(step(1),)))
        flaky.fail_next(10)
        enrollment, _ = w.drip.enroll("welcome", "ana")
        for _ in range(6):
            w.drip.tick()
            w.clock.advance(timedelta(minutes=5))
        message = w.store.get_message(f"{enrollment.id}:1")
        assert message is not None
        assert message.status is OutboxStatus.FAILED
        assert message.attempts == 3

    def test_a_sender_that_raises_something_unexpected_is_set_aside(self) -> None:
        class Exploding(RecordingSender):
            def send(self, email):  # type: ignore[no-untyped-def]
                if email.to == "ana@example.com":
                    raise RuntimeError("provider SDK bug")
                return super().send(email)

        sender = Exploding()
        w = World(sender=sender)
        w.drip.save_sequence(welcome())
        w.drip.enroll("welcome", "ana")
        w.drip.enroll("welcome", "bo")
        report = w.drip.tick()
        assert report.sent == 1
        assert report.retried == 1
        assert report.errors[0].kind == "message"
        assert "provider SDK bug" in report.errors[0].error
        assert [e.to for e in sender.sent] == ["bo@example.com"]

    def test_one_broken_enrollment_is_reported_and_the_others_go(self, world: World) -> None:
        broken, _ = world.drip.enroll("welcome", "ana")
        world.drip.enroll("welcome", "bo")
        # The host deleted the contact behind our back; MemoryContacts (a fake directory) has no public
        # remove, as the engine never deletes contacts, so the test reaches into its dict.
        world.contacts._contacts.pop("ana")
        report = world.drip.tick()
        assert report.sent == 1
        assert [(e.kind, e.id) for e in report.errors] == [("enrollment", broken.id)]
        assert "ContactNotFound" in report.errors[0].error
        assert world.drip.tick().errors == ()  # set aside, not retried in a hot loop

    def test_an_unreadable_sequence_only_holds_back_its_own_enrollments(self) -> None:
        class CorruptibleStore(MemoryStore):
            corrupt: frozenset[str] = frozenset()

            def get_sequence(self, sequence_id: str) -> Sequence | None:
                if sequence_id in self.corrupt:
                    raise UnreadableRecord(f"sequence {sequence_id!r}: unreadable JSON")
                return super().get_sequence(sequence_id)

        w = World()
        store = CorruptibleStore()
        w.store = w.drip.store = store
        w.drip.save_sequence(welcome())
        w.drip.save_sequence(welcome(id="broken", name="Broken", trigger=Trigger(type="manual")))
        bad, _ = w.drip.enroll("broken", "ana")
        w.drip.enroll("welcome", "bo")
        store.corrupt = frozenset({"broken"})
        report = w.drip.tick()
        assert report.sent == 1
        assert [(e.id, "unreadable JSON" in e.error) for e in report.errors] == [(bad.id, True)]

    def test_an_unreadable_enrollment_does_not_stop_retries(self) -> None:
        flaky = FlakySender()
        w = World(sender=flaky, retry_base=timedelta(minutes=1))
        w.drip.save_sequence(welcome())
        flaky.fail_next(2)
        a, _ = w.drip.enroll("welcome", "ana")
        b, _ = w.drip.enroll("welcome", "bo")
        assert w.drip.tick().retried == 2

        original = w.store.get_enrollment

        def corrupt(enrollment_id: str):  # type: ignore[no-untyped-def]
            if enrollment_id == a.id:
                raise UnreadableRecord(f"enrollment {a.id!r}: unknown status 'zombie'")
            return original(enrollment_id)

        w.store.get_enrollment = corrupt  # type: ignore[method-assign]
        w.clock.advance(timedelta(minutes=1))
        report = w.drip.tick()
        assert report.sent == 1
        assert [e.id for e in report.errors] == [a.id]
        message = w.store.get_message(f"{a.id}:1")
        assert message is not None
        assert message.status is OutboxStatus.PENDING  # set aside, not lost
        assert message.next_attempt_at == w.clock.now() + timedelta(hours=1)
        assert w.store.get_message(f"{b.id}:1").status is OutboxStatus.DELIVERED  # type: ignore[union-attr]

    def test_suppressed_contact_is_caught_at_send_time(self, world: World) -> None:
        world.drip.enroll("welcome", "ana")
        world.drip.tick()
        world.contacts.suppress("ana", ExitReason.UNSUBSCRIBED)  # suppressed directly in the host's table
        world.run_for(timedelta(days=2))
        assert len(world.recorder.to("ana@example.com")) == 1

    def test_rate_limiter_defers_over_the_daily_cap(self) -> None:
        w = World(rate_limiter=DailyCap(1))
        w.drip.save_sequence(welcome())
        w.drip.enroll("welcome", "ana")
        w.drip.enroll("welcome", "bo")
        report = w.drip.tick()
        assert (report.sent, report.deferred) == (1, 1)
        assert w.drip.tick().deferred == 1
        w.clock.set(datetime(2026, 3, 3, 0, 0, 1, tzinfo=UTC))
        assert w.drip.tick().sent == 1

    def test_render_error_fails_that_message_and_holds_its_enrollment(self, world: World) -> None:
        """A step that can't be rendered fails alone; its enrollment is held (never moved on silently)
        until an operator releases it, and then goes on to its next step."""
        steps = (Step(position=1, template_id="missing"), step(2, Delay.hours(1)))
        world.drip.save_sequence(welcome(id="tpl", name="T", trigger=Trigger(type="manual"), steps=steps))
        enrollment, _ = world.drip.enroll("tpl", "ana")
        world.drip.enroll("welcome", "bo")
        report = world.drip.tick()
        assert report.sent == 1
        assert (report.failed, report.held) == (1, 1)
        message = world.store.get_message(f"{enrollment.id}:1")
        assert message is not None
        assert message.status is OutboxStatus.FAILED
        assert "sequence 'tpl' step 1" in (message.last_error or "")
        assert world.drip.get_enrollment(enrollment.id).status is EnrollmentStatus.PAUSED
        world.clock.advance(timedelta(hours=1))
        world.drip.tick()
        assert world.subjects("ana@example.com") == []  # held
        world.drip.release(enrollment.id)
        world.drip.tick()
        assert world.subjects("ana@example.com") == ["Step 2 for Ana"]  # released: the sequence goes on

    def test_events_are_published_with_wire_names(self, world: World) -> None:
        world.drip.enroll("welcome", "ana")
        world.run_for(timedelta(days=8))
        assert world.events.names() == [
            "sequence.subscribed", "sequence.step.sent", "sequence.step.sent", "sequence.step.sent",
            "sequence.completed",
        ]  # fmt: skip


class TestLifecycle:
    def test_activate_enrolls_existing_members(self) -> None:
        w = World()
        w.contacts.join("ana", TriggerType.LIST_ADDED, "newsletter")
        w.contacts.join("bo", TriggerType.LIST_ADDED, "newsletter")
        w.contacts.join("cy", TriggerType.LIST_ADDED, "other")
        w.drip.save_sequence(
            welcome(status=SequenceStatus.DRAFT, trigger=Trigger(type="list_added", value="newsletter"),
                    enroll_existing=True)
        )  # fmt: skip
        w.drip.activate("welcome")
        assert sorted(e.contact_id for e in w.store.find_enrollments()) == ["ana", "bo"]

    def test_activating_a_sequence_without_steps_is_refused(self) -> None:
        w = World()
        w.drip.save_sequence(Sequence(id="empty", name="Empty"))
        with pytest.raises(SequenceStateError, match="no active step"):
            w.drip.activate("empty")

    def test_archive_exits_everyone_with_reason_archived(self, world: World) -> None:
        a, _ = world.drip.enroll("welcome", "ana")
        b, _ = world.drip.enroll("welcome", "bo")
        world.drip.pause_enrollment(b.id)
        world.drip.archive("welcome")
        for e in (a, b):
            after = world.drip.get_enrollment(e.id)
            assert (after.status, after.exit_reason) == (EnrollmentStatus.EXITED, ExitReason.ARCHIVED)
        assert world.drip.stats("welcome").exited_by_reason == {"archived": 2}
        with pytest.raises(SequenceStateError, match="archived"):
            world.drip.save_sequence(welcome(status=SequenceStatus.ARCHIVED))

    def test_deleting_a_sequence_with_live_enrollments_is_refused(self, world: World) -> None:
        enrollment, _ = world.drip.enroll("welcome", "ana")
        with pytest.raises(SequenceStateError, match="1 active or paused"):
            world.drip.delete_sequence("welcome")
        world.drip.cancel_enrollment(enrollment.id)
        world.drip.delete_sequence("welcome")
        with pytest.raises(SequenceNotFound):
            world.drip.get_sequence("welcome")

    def test_save_sequence_replans_in_flight_enrollments(self, world: World) -> None:
        enrollment, _ = world.drip.enroll("welcome", "ana")
        world.drip.tick()
        edited = world.drip.save_sequence(welcome(steps=(step(1), step(2, Delay.hours(2)), step(3, Delay.days(6)))))
        assert edited.version == 2
        assert world.drip.get_enrollment(enrollment.id).next_step_due_at == T0 + timedelta(hours=2)
        world.run_for(timedelta(hours=3))
        assert len(world.recorder.to("ana@example.com")) == 2

    def test_status_changes_go_through_lifecycle_methods(self, world: World) -> None:
        # A definition left as DRAFT keeps the stored status; PAUSED is pause()'s to set.
        assert world.drip.save_sequence(welcome(status=SequenceStatus.DRAFT)).status is SequenceStatus.ACTIVE
        with pytest.raises(SequenceStateError, match="use pause"):
            world.drip.save_sequence(welcome(status=SequenceStatus.PAUSED, paused_at=T0))
        with pytest.raises(SequenceStateError, match="can't resume"):
            world.drip.resume("welcome")


class TestPerEnrollment:
    def test_pause_resume_and_cancel_one_enrollment(self, world: World) -> None:
        enrollment, _ = world.drip.enroll("welcome", "ana")
        world.drip.tick()
        paused = world.drip.pause_enrollment(enrollment.id)
        assert paused.status is EnrollmentStatus.PAUSED
        world.run_for(timedelta(days=3))
        assert len(world.recorder.to("ana@example.com")) == 1
        world.drip.resume_enrollment(enrollment.id)
        world.drip.tick()
        assert len(world.recorder.to("ana@example.com")) == 2
        cancelled = world.drip.cancel_enrollment(enrollment.id)
        assert (cancelled.status, cancelled.exit_reason) == (EnrollmentStatus.EXITED, ExitReason.MANUAL)
        assert world.events.of(Cancelled)[-1].reason is ExitReason.MANUAL  # type: ignore[union-attr]

    def test_resuming_something_not_paused_is_refused(self, world: World) -> None:
        enrollment, _ = world.drip.enroll("welcome", "ana")
        with pytest.raises(InvalidTransition, match=f"can't resume enrollment '{enrollment.id}' when status=active"):
            world.drip.resume_enrollment(enrollment.id)
        with pytest.raises(EnrollmentNotFound, match="'nope'"):
            world.drip.pause_enrollment("nope")


class TestAutoExit:
    @pytest.mark.parametrize(
        ("method", "reason"),
        [
            ("contact_unsubscribed", ExitReason.UNSUBSCRIBED),
            ("contact_bounced", ExitReason.BOUNCED),
            ("contact_complained", ExitReason.COMPLAINED),
        ],
    )
    def test_contact_events_exit_every_live_enrollment(self, world: World, method: str, reason: ExitReason) -> None:
        world.drip.save_sequence(welcome(id="other", name="Other", trigger=Trigger(type="manual")))
        a, _ = world.drip.enroll("welcome", "ana")
        b, _ = world.drip.enroll("other", "ana")
        world.drip.pause_enrollment(b.id)
        bo, _ = world.drip.enroll("welcome", "bo")
        assert getattr(world.drip, method)("ana") == 2
        for e in (a, b):
            assert world.drip.get_enrollment(e.id).exit_reason is reason
        assert world.drip.get_enrollment(bo.id).status is EnrollmentStatus.ACTIVE
        world.run_for(timedelta(days=8))
        assert world.recorder.to("ana@example.com") == []


class TestAnniversaries:
    def test_birthday_sweep_enrolls_once_per_year(self) -> None:
        w = World()
        w.drip.save_sequence(
            Sequence(id="bday", name="Birthday", status=SequenceStatus.ACTIVE,
                     trigger=Trigger(type="anniversary", value="birthday"),
                     steps=(Step(position=1, subject="Happy birthday {{FirstName}}", text="!"),))
        )  # fmt: skip
        w.clock.set(datetime(2026, 3, 3, 0, 5, tzinfo=UTC))
        assert [e.contact_id for e in w.drip.sweep_anniversaries(date(2026, 3, 3))] == ["cy"]
        assert w.drip.sweep_anniversaries(date(2026, 3, 3)) == []  # swept twice: once
        w.drip.tick()
        assert w.subjects("cy@example.com") == ["Happy birthday Cy"]
        w.clock.set(datetime(2027, 3, 3, 0, 5, tzinfo=UTC))
        assert len(w.drip.sweep_anniversaries(date(2027, 3, 3))) == 1  # next year again

    def test_birthday_email_waits_for_local_midnight(self) -> None:
        w = World()
        w.contacts.add(
            Contact(id="la", email="la@example.com", birthday=date(1990, 7, 14), timezone="America/Los_Angeles")
        )
        w.contacts.add(Contact(id="tk", email="tk@example.com", birthday=date(1990, 7, 14), timezone="Asia/Tokyo"))
        w.drip.save_sequence(
            Sequence(id="bday", name="Birthday", status=SequenceStatus.ACTIVE,
                     trigger=Trigger(type="anniversary", value="birthday"),
                     steps=(Step(position=1, subject="Happy birthday", text="!"),))
        )  # fmt: skip
        w.clock.set(datetime(2026, 7, 14, 0, 0, tzinfo=UTC))  # the daily sweep at 00:00 UTC
        due = {e.contact_id: e.next_step_due_at for e in w.drip.sweep_anniversaries(date(2026, 7, 14))}
        assert due["la"] == datetime(2026, 7, 14, 7, 0, tzinfo=UTC)  # 00:00 PDT: not the evening before
        assert due["tk"] == datetime(2026, 7, 13, 15, 0, tzinfo=UTC)  # Tokyo's midnight has passed: at once

    def test_feb_29_birthdays_are_swept_on_feb_28_in_common_years(self) -> None:
        w = World()
        w.drip.save_sequence(
            Sequence(id="bday", name="Birthday", status=SequenceStatus.ACTIVE,
                     trigger=Trigger(type="anniversary", value="birthday"),
                     steps=(Step(position=1, subject="Happy birthday", text="!"),))
        )  # fmt: skip
        assert [e.contact_id for e in w.drip.sweep_anniversaries(date(2027, 2, 28))] == ["leap"]
        assert w.drip.sweep_anniversaries(date(2028, 2, 28)) == []
        assert [e.contact_id for e in w.drip.sweep_anniversaries(date(2028, 2, 29))] == ["leap"]


class TestEngagementAndQueries:
    def test_an_open_or_click_on_a_bounced_step_is_refused_and_not_counted(self) -> None:
        """Engagement is only for an email that was delivered: a step whose email bounced (or failed, or is
        still pending) refuses opens and clicks, so they never count in open_rate."""
        flaky = FlakySender()
        w = World(sender=flaky)
        w.drip.save_sequence(welcome())
        flaky.fail_address("ana@example.com", reason="bounced")
        enrollment, _ = w.drip.enroll("welcome", "ana")
        w.drip.tick()
        assert w.store.get_message(f"{enrollment.id}:1").status is OutboxStatus.FAILED  # type: ignore[union-attr]
        with pytest.raises(InvalidEngagement):
            w.drip.record_open(enrollment.id, 1)
        with pytest.raises(InvalidEngagement):
            w.drip.record_click(enrollment.id, 1, "https://example.com/a")
        assert w.drip.stats("welcome").open_rate == 0.0
        assert w.drip.stats("welcome").steps[0].opened == 0

    def test_not_opened_condition_follows_recorded_opens(self, world: World) -> None:
        nudge = Condition(type=ConditionType.NOT_OPENED, step=1)
        world.drip.save_sequence(
            welcome(id="nudge", name="Nudge", trigger=Trigger(type="manual"),
                    steps=(step(1), step(2, Delay.hours(48), condition=nudge)))
        )  # fmt: skip
        a, _ = world.drip.enroll("nudge", "ana")
        world.drip.enroll("nudge", "bo")
        world.drip.tick()
        assert world.drip.record_open(a.id, 1)
        assert not world.drip.record_open(a.id, 1)  # counted once
        world.run_for(timedelta(days=3))
        assert len(world.recorder.to("ana@example.com")) == 1
        assert len(world.recorder.to("bo@example.com")) == 2
        stats = world.drip.stats("nudge")
        assert stats.steps[0].opened == 1
        assert stats.steps[1].skipped == {"condition": 1}

    def test_first_click_fires_the_after_first_click_trigger(self, world: World) -> None:
        world.drip.save_sequence(welcome(id="clicked", name="Clicked", trigger=Trigger(type="after_first_click")))
        a, _ = world.drip.enroll("welcome", "ana")
        world.drip.tick()
        assert world.drip.record_click(a.id, 1, "https://shop.example/sale")
        assert not world.drip.record_click(a.id, 1, "https://shop.example/sale")
        assert world.drip.record_click(a.id, 1, "https://shop.example/other")
        assert [e.sequence_id for e in world.store.find_enrollments(contact_id="ana")] == ["welcome", "clicked"]
        assert world.drip.stats("welcome").steps[0].clicked == 1

    def test_engagement_for_a_step_never_sent_is_refused(self, world: World) -> None:
        a, _ = world.drip.enroll("welcome", "ana")
        with pytest.raises(InvalidEngagement, match="no email of step 1 was sent") as info:
            world.drip.record_open(a.id, 1)
        assert info.value.field == "open.position"
        world.drip.tick()
        assert world.drip.record_open(a.id, 1)
        with pytest.raises(InvalidEngagement, match="step 2"):
            world.drip.record_click(a.id, 2, "https://x.example")
        with pytest.raises(InvalidEngagement, match=r"click\.link"):
            world.drip.record_click(a.id, 1, "")
        with pytest.raises(EnrollmentNotFound):
            world.drip.record_open("nope", 1)

    def test_open_and_click_rates_and_the_overview(self, world: World) -> None:
        a, _ = world.drip.enroll("welcome", "ana")
        b, _ = world.drip.enroll("welcome", "bo")
        world.drip.tick()
        world.drip.record_open(a.id, 1)
        world.drip.record_click(b.id, 1, "https://shop.example")
        stats = world.drip.stats("welcome")
        assert (stats.steps[0].sent, stats.steps[0].delivered) == (2, 2)
        assert stats.open_rate == 1.0  # a opened; b's click counts as an open too
        assert stats.click_rate == 0.5
        [row] = world.drip.overview()
        assert (row.id, row.steps, row.active_steps, row.active_enrollments, row.recipients) == (
            "welcome", 3, 3, 2, 2,
        )  # fmt: skip

    def test_enrollments_are_paginated_and_filtered(self, world: World) -> None:
        ids = [world.drip.enroll("welcome", c)[0].id for c in ("ana", "bo", "cy")]
        world.drip.pause_enrollment(ids[1])
        assert [e.id for e in world.drip.enrollments("welcome", limit=2)] == ids[:2]
        assert [e.id for e in world.drip.enrollments("welcome", limit=2, offset=2)] == ids[2:]
        assert [e.id for e in world.drip.enrollments("welcome", contact_id="bo")] == [ids[1]]
        paused = world.drip.enrollments("welcome", status=EnrollmentStatus.PAUSED)
        assert [e.id for e in paused] == [ids[1]]
        with pytest.raises(SequenceNotFound):
            world.drip.enrollments("nope")

    def test_stats_count_recipients_statuses_and_completion_rate(self, world: World) -> None:
        a, _ = world.drip.enroll("welcome", "ana")
        world.drip.enroll("welcome", "bo")
        world.drip.enroll("welcome", "cy")
        world.drip.cancel_enrollment(a.id)
        world.run_for(timedelta(days=8))
        stats = world.drip.stats("welcome")
        assert (stats.recipients, stats.active, stats.completed, stats.exited) == (3, 0, 2, 1)
        assert stats.exited_by_reason == {"manual": 1}
        assert stats.completion_rate == pytest.approx(2 / 3)
        assert [s.sent for s in stats.steps] == [2, 2, 2]


class TestRun:
    def test_run_sleeps_until_the_next_due_time(self, world: World) -> None:
        world.drip.enroll("welcome", "ana")
        seen: list[datetime] = []

        def on_tick(report: object) -> None:
            seen.append(world.clock.now())

        world.drip.run(on_tick=on_tick, max_ticks=4, idle=3600 * 24 * 30)
        assert len(world.recorder.to("ana@example.com")) == 3
        # no fixed poll: the fake clock jumped straight from due time to due time
        assert seen[:3] == [T0, T0 + timedelta(hours=24), T0 + timedelta(days=7)]

    def test_stop_ends_run_after_the_current_batch(self, world: World) -> None:
        real = World()
        real.drip.clock = __import__("dripcore").ports.SystemClock()
        stopper = threading.Timer(0.2, real.drip.stop)
        stopper.start()
        real.drip.run(idle=0.05)
        stopper.cancel()

    def test_a_store_outage_does_not_end_the_worker(self, world: World) -> None:
        class Flaky(MemoryStore):
            failures = 3

            def claim_due(self, now, *, limit, lease, owner):  # type: ignore[no-untyped-def]
                if self.failures:
                    self.failures -= 1
                    raise StoreError("database unavailable: connection refused")
                return super().claim_due(now, limit=limit, lease=lease, owner=owner)

        store = Flaky()
        world.store = world.drip.store = store
        world.drip.save_sequence(welcome())
        world.drip.enroll("welcome", "ana")
        world.drip.run(max_ticks=1, idle=60)
        assert store.failures == 0
        assert len(world.recorder.to("ana@example.com")) == 1
        assert world.clock.now() == T0 + timedelta(seconds=0.5 + 1 + 2)  # backed off 0.5, 1, 2 seconds

    def test_attrs_of_report_summary(self, world: World) -> None:
        world.drip.enroll("welcome", "ana")
        assert world.drip.tick().summary().startswith("claimed=1 sent=1")


def test_completed_event_comes_after_the_last_send(world: World) -> None:
    world.drip.save_sequence(welcome(id="one", name="One", trigger=Trigger(type="manual"), steps=(step(1),)))
    world.drip.enroll("one", "ana")
    world.drip.tick()
    names = [type(e) for e in world.events.events if e.sequence_id == "one"]
    assert names == [Subscribed, StepSent, Completed]


class TestCounterVocabulary:
    """One vocabulary of counter names, written by the engine and read by SequenceStats; stored strings never change."""

    def test_the_stored_names_are_those_stores_already_hold(self) -> None:
        assert {name.value for name in CounterName} == {
            "recipients", "sent", "delivered", "failed", "bounced", "complained", "opened", "clicked",
            "replan:pending", "status", "exited", "skipped", "deferred",
        }  # fmt: skip
        assert CounterName.STATUS.of(EnrollmentStatus.ACTIVE) == "status:active"
        assert CounterName.EXITED.of(ExitReason.BOUNCED) == "exited:bounced"
        assert CounterName.SKIPPED.of(SkipReason.FREQUENCY_CAP) == "skipped:frequency cap"
        assert CounterName.SKIPPED.key_in("skipped:outside window") == "outside window"
        assert CounterName.SKIPPED.key_in("status:active") is None

    def test_every_counter_the_engine_writes_is_in_the_vocabulary(self) -> None:
        """A run with sends, skips, a bounce, an exit and engagement writes only names of CounterName."""
        flaky = FlakySender()
        w = World(sender=flaky)
        w.drip.save_sequence(welcome(steps=(step(1), step(2, Delay.hours(1), active=False), step(3, Delay.hours(2)))))
        flaky.fail_address("bo@example.com", reason="bounced")
        ana, _ = w.drip.enroll("welcome", "ana")
        w.drip.enroll("welcome", "bo")
        w.drip.tick()
        w.drip.record_click(ana.id, 1, "https://example.com/a")
        w.drip.save_sequence(welcome(steps=(step(1), step(2, Delay.hours(1), active=False), step(3, Delay.hours(3)))))
        w.run_for(timedelta(hours=4))
        names = {name for (_, name) in w.store.counters("welcome")}
        fixed = {n.value for n in CounterName}
        families = (CounterName.STATUS, CounterName.EXITED, CounterName.SKIPPED)
        assert names, "the run counted nothing"
        for name in names:
            assert name in fixed or any(f.key_in(name) is not None for f in families), name
        assert {"status:completed", "exited:bounced", "skipped:inactive", "clicked", "delivered"} <= names
        stats = w.drip.stats("welcome")
        assert (stats.recipients, stats.completed, stats.exited_by_reason) == (2, 1, {"bounced": 1})
        assert stats.steps[1].skipped == {"inactive": 1}
