"""Example tests for each rule of advance(), and the reference documents' scenarios."""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs
import pytest

from dripcore import (
    Cancelled,
    Completed,
    Condition,
    ConditionType,
    Contact,
    Delay,
    DripcoreError,
    Enrollment,
    EnrollmentStatus,
    ExitReason,
    NaiveDatetimeError,
    Sequence,
    SequenceStatus,
    SkipReason,
    StepSkipped,
    advance,
    enroll,
    pause,
    replan,
)
from tests.builders import T0, UTC, step, welcome


def start(sequence: Sequence, at: datetime = T0, contact: Contact | None = None) -> Enrollment:
    return enroll(sequence, contact, at, enrollment_id="e1", contact_id="c1" if contact is None else None).enrollment


def run(sequence: Sequence, enrollment: Enrollment, until: datetime, every: timedelta = timedelta(minutes=30)):
    """Tick advance() every ``every`` until ``until``; return (sends, final enrollment, events)."""
    sends: list[tuple[int, datetime]] = []
    events = []
    now = enrollment.enrolled_at
    while now <= until:
        result = advance(enrollment, now, sequence=sequence)
        if result.send is not None:
            sends.append((result.send.position, now))
        events.extend(result.events)
        enrollment = result.enrollment
        now += every
    return sends, enrollment, events


class TestRule1TerminalIsAbsorbing:
    def test_completed_enrollment_never_moves(self) -> None:
        """A COMPLETED enrollment comes back as the very same object."""
        seq = welcome()
        done = attrs.evolve(start(seq), status=EnrollmentStatus.COMPLETED, next_step_due_at=None, ended_at=T0)
        result = advance(done, T0 + timedelta(days=30), sequence=seq)
        assert result.enrollment is done
        assert result.send is None
        assert result.events == ()

    def test_exited_enrollment_ignores_suppression_and_archival(self) -> None:
        seq = attrs.evolve(welcome(), status=SequenceStatus.ARCHIVED)
        exited = attrs.evolve(
            start(welcome()),
            status=EnrollmentStatus.EXITED,
            exit_reason=ExitReason.MANUAL,
            next_step_due_at=None,
            ended_at=T0,
        )
        contact = Contact(id="c1", email="a@example.com", suppressed=ExitReason.BOUNCED)
        assert advance(exited, T0, sequence=seq, contact=contact).enrollment is exited


class TestRule2SuppressedContactExits:
    @pytest.mark.parametrize(
        "reason", [ExitReason.UNSUBSCRIBED, ExitReason.BOUNCED, ExitReason.COMPLAINED, ExitReason.SUPPRESSED]
    )
    def test_suppressed_contact_exits_with_its_reason(self, reason: ExitReason) -> None:
        seq = welcome()
        enrollment = start(seq)
        contact = Contact(id="c1", email="a@example.com", suppressed=reason)
        result = advance(enrollment, T0, sequence=seq, contact=contact)
        assert result.send is None
        assert result.enrollment.status is EnrollmentStatus.EXITED
        assert result.enrollment.exit_reason is reason
        assert result.enrollment.next_step_due_at is None
        assert result.enrollment.ended_at == T0
        assert result.events == (
            Cancelled(enrollment_id="e1", sequence_id="welcome", contact_id="c1", at=T0, reason=reason),
        )

    def test_suppression_is_caught_even_before_the_due_time(self) -> None:
        seq = welcome()
        first = advance(start(seq), T0, sequence=seq).enrollment
        contact = Contact(id="c1", email="a@example.com", suppressed=ExitReason.UNSUBSCRIBED)
        result = advance(first, T0 + timedelta(hours=1), sequence=seq, contact=contact)
        assert result.enrollment.status is EnrollmentStatus.EXITED

    def test_paused_enrollment_of_suppressed_contact_exits(self) -> None:
        seq = welcome()
        paused = pause(start(seq), T0).enrollment
        contact = Contact(id="c1", email="a@example.com", suppressed=ExitReason.COMPLAINED)
        result = advance(paused, T0, sequence=seq, contact=contact)
        assert result.enrollment.status is EnrollmentStatus.EXITED
        assert result.enrollment.paused_at is None


class TestRule3ArchivedSequenceExits:
    def test_archived_sequence_exits_enrollment(self) -> None:
        seq = welcome()
        enrollment = start(seq)
        archived = attrs.evolve(seq, status=SequenceStatus.ARCHIVED)
        result = advance(enrollment, T0 - timedelta(days=1), sequence=archived)
        assert result.enrollment.status is EnrollmentStatus.EXITED
        assert result.enrollment.exit_reason is ExitReason.ARCHIVED
        assert [type(e) for e in result.events] == [Cancelled]


class TestRule4InactiveDoesNotMove:
    @pytest.mark.parametrize("status", [SequenceStatus.PAUSED, SequenceStatus.DRAFT])
    def test_paused_sequence_sends_nothing(self, status: SequenceStatus) -> None:
        seq = welcome()
        enrollment = start(seq)
        stopped = attrs.evolve(seq, status=status, paused_at=T0 if status is SequenceStatus.PAUSED else None)
        result = advance(enrollment, T0 + timedelta(days=30), sequence=stopped)
        assert result.enrollment is enrollment
        assert result.send is None

    def test_paused_enrollment_sends_nothing(self) -> None:
        seq = welcome()
        paused = pause(start(seq), T0).enrollment
        result = advance(paused, T0 + timedelta(days=30), sequence=seq)
        assert result.enrollment is paused
        assert result.send is None


class TestRule5NothingBeforeDue:
    def test_advance_before_due_is_the_identity(self) -> None:
        seq = welcome()
        after_first = advance(start(seq), T0, sequence=seq).enrollment
        result = advance(after_first, T0 + timedelta(hours=23, minutes=59), sequence=seq)
        assert result.enrollment is after_first
        assert result.send is None
        assert result.events == ()

    def test_clock_going_backwards_resends_nothing(self) -> None:
        seq = welcome()
        after_first = advance(start(seq), T0, sequence=seq).enrollment
        result = advance(after_first, T0 - timedelta(days=3), sequence=seq)
        assert result.enrollment is after_first
        assert result.send is None


class TestRule6And7SendingAndScheduling:
    def test_welcome_series_sends_at_exact_offsets(self) -> None:
        """The reference Welcome series: 0 h, +24 h, +6 days after that."""
        seq = welcome()
        sends, final, events = run(seq, start(seq), T0 + timedelta(days=10))
        assert sends == [(1, T0), (2, T0 + timedelta(hours=24)), (3, T0 + timedelta(days=7))]
        assert final.status is EnrollmentStatus.COMPLETED
        # Completed by the call after the last send (the engine makes it once that email was delivered).
        assert final.ended_at == T0 + timedelta(days=7, minutes=30)
        assert events == [Completed(enrollment_id="e1", sequence_id="welcome", contact_id="c1", at=final.ended_at)]

    def test_one_step_per_call_after_long_downtime(self) -> None:
        """A week of downtime: the steps catch up one at a time, delays intact (bumped, not flooded)."""
        seq = welcome()
        enrollment = start(seq)
        late = T0 + timedelta(days=9)
        first = advance(enrollment, late, sequence=seq)
        assert first.send is not None
        assert first.send.position == 1
        assert first.enrollment.next_step_due_at == late + timedelta(hours=24)
        again = advance(first.enrollment, late, sequence=seq)
        assert again.send is None
        assert again.enrollment is first.enrollment

    def test_inactive_middle_step_is_skipped_and_next_delay_counts_from_last_send(self) -> None:
        seq = Sequence(
            id="welcome",
            name="Welcome",
            status=SequenceStatus.ACTIVE,
            steps=(step(1), step(2, Delay.hours(24), active=False), step(3, Delay.hours(48))),
        )
        sends, final, events = run(seq, start(seq), T0 + timedelta(days=5))
        assert sends == [(1, T0), (3, T0 + timedelta(hours=48))]
        assert StepSkipped(
            enrollment_id="e1", sequence_id="welcome", contact_id="c1", at=T0 + timedelta(hours=48),
            position=2, reason=SkipReason.INACTIVE,
        ) in events  # fmt: skip
        assert final.status is EnrollmentStatus.COMPLETED

    def test_inactive_last_step_completes_right_after_the_previous_send(self) -> None:
        """After the last active step goes, the enrollment is due at once; the next call skips the
        inactive tail and completes it (no delay waited)."""
        seq = Sequence(
            id="welcome",
            name="Welcome",
            status=SequenceStatus.ACTIVE,
            steps=(step(1), step(2, Delay.hours(24), active=False)),
        )
        result = advance(start(seq), T0, sequence=seq)
        assert result.send is not None
        assert result.enrollment.status is EnrollmentStatus.ACTIVE
        assert result.enrollment.next_step_due_at == T0
        assert result.events == ()
        done = advance(result.enrollment, T0, sequence=seq)
        assert done.send is None
        assert done.enrollment.status is EnrollmentStatus.COMPLETED
        assert [type(e) for e in done.events] == [StepSkipped, Completed]

    def test_the_last_send_leaves_the_enrollment_due_and_the_next_call_completes_it(self) -> None:
        """COMPLETED never comes in the same call as a send: the last step goes, the enrollment stays ACTIVE
        and due at the send time, and the next advance (once that email is delivered) completes it."""
        seq = Sequence(id="one", name="One", status=SequenceStatus.ACTIVE, steps=(step(1),))
        sent = advance(start(seq), T0, sequence=seq)
        assert sent.send is not None
        assert (sent.enrollment.status, sent.enrollment.last_step_sent) == (EnrollmentStatus.ACTIVE, 1)
        assert sent.enrollment.next_step_due_at == T0
        assert not any(isinstance(e, Completed) for e in sent.events)
        later = T0 + timedelta(minutes=3)
        done = advance(sent.enrollment, later, sequence=seq)
        assert done.send is None
        assert (done.enrollment.status, done.enrollment.ended_at) == (EnrollmentStatus.COMPLETED, later)
        assert [type(e) for e in done.events] == [Completed]

    def test_sequence_with_no_active_step_completes_without_sending(self) -> None:
        seq = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=(step(1, active=False),))
        enrollment = start(seq)
        assert enrollment.next_step_due_at == T0
        result = advance(enrollment, T0, sequence=seq)
        assert result.send is None
        assert result.enrollment.status is EnrollmentStatus.COMPLETED

    def test_false_condition_skips_the_step(self) -> None:
        """'Still interested?' goes only to those who did not open step 2."""
        steps = (
            step(1),
            step(2, Delay.hours(24)),
            step(3, Delay.hours(48), condition=Condition(type=ConditionType.NOT_OPENED, step=2)),
            step(4, Delay.hours(72)),
        )
        seq = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=steps)
        e = advance(start(seq), T0, sequence=seq).enrollment
        e = advance(e, T0 + timedelta(hours=24), sequence=seq).enrollment
        e = attrs.evolve(e, opened=frozenset({2}))
        due3 = T0 + timedelta(hours=72)
        result = advance(e, due3, sequence=seq)
        assert result.send is None
        assert result.events == (
            StepSkipped(enrollment_id="e1", sequence_id="s", contact_id="c1", at=due3, position=3,
                        reason=SkipReason.CONDITION),
        )  # fmt: skip
        # step 4's delay still counts from step 2's send, not from the skip
        assert result.enrollment.next_step_due_at == T0 + timedelta(hours=24 + 72)
        assert result.enrollment.skipped == frozenset({3})
        assert result.enrollment.last_step_sent == 2

    def test_if_else_branch_sends_exactly_one(self) -> None:
        """Two steps with the same delay and opposite conditions: one or the other."""
        not_opened = Condition(type=ConditionType.NOT_OPENED, step=1)
        steps = (
            step(1),
            step(2, Delay.hours(48), condition=not_opened),
            step(3, Delay.hours(48), condition=not_opened.negated()),
            step(4, Delay.days(3)),
        )
        seq = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=steps)
        after_1 = advance(start(seq), T0, sequence=seq).enrollment
        for opened, expected in ((frozenset(), 2), (frozenset({1}), 3)):
            e = attrs.evolve(after_1, opened=opened)
            sends, final, _ = run(seq, e, T0 + timedelta(days=10))
            assert [p for p, _ in sends] == [expected, 4]
            # opening step 1 late must not release the else branch afterwards
            assert final.status is EnrollmentStatus.COMPLETED

    def test_else_branch_stays_closed_when_engagement_arrives_later(self) -> None:
        not_opened = Condition(type=ConditionType.NOT_OPENED, step=1)
        steps = (step(1), step(2, Delay.hours(1), condition=not_opened), step(3, Delay.hours(1),
                 condition=not_opened.negated()), step(4, Delay.days(1)))  # fmt: skip
        seq = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=steps)
        e = advance(start(seq), T0, sequence=seq).enrollment
        sent2 = advance(e, T0 + timedelta(hours=1), sequence=seq)
        assert sent2.send is not None
        assert sent2.send.position == 2
        assert 3 in sent2.enrollment.skipped
        later = attrs.evolve(sent2.enrollment, opened=frozenset({1}))
        nxt = advance(later, T0 + timedelta(days=2), sequence=seq)
        assert nxt.send is not None
        assert nxt.send.position == 4

    def test_click_condition_on_a_given_link(self) -> None:
        cond = Condition(type=ConditionType.CLICKED, step=1, link="https://shop.example/sale")
        seq = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE,
                       steps=(step(1), step(2, Delay.hours(1), condition=cond)))  # fmt: skip
        e = advance(start(seq), T0, sequence=seq).enrollment
        other = attrs.evolve(e, clicked=frozenset({(1, "https://shop.example/other")}))
        assert advance(other, T0 + timedelta(hours=1), sequence=seq).send is None
        right = attrs.evolve(e, clicked=frozenset({(1, "https://shop.example/sale")}))
        sent = advance(right, T0 + timedelta(hours=1), sequence=seq).send
        assert sent is not None
        assert sent.position == 2

    def test_calendar_day_keeps_local_time_across_dst(self) -> None:
        """New York springs forward on 2026-03-08: '1 day' stays at 09:00 local."""
        seq = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, timezone="America/New_York",
                       steps=(step(1), step(2, Delay.days(1)), step(3, Delay.hours(24))))  # fmt: skip
        sat_9am = datetime(2026, 3, 7, 14, 0, tzinfo=UTC)  # 09:00 EST
        e = advance(start(seq, sat_9am), sat_9am, sequence=seq).enrollment
        assert e.next_step_due_at == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)  # 09:00 EDT
        e2 = advance(e, e.next_step_due_at, sequence=seq).enrollment  # type: ignore[arg-type]
        assert e2.next_step_due_at == datetime(2026, 3, 9, 13, 0, tzinfo=UTC)  # exactly 24 h later

    def test_contact_zone_wins_over_sequence_fallback(self) -> None:
        seq = Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, timezone="America/New_York",
                       steps=(step(1, Delay.days(1)),))  # fmt: skip
        contact = Contact(id="c1", email="a@example.com", timezone="Europe/Paris")
        # 2026-03-28 23:30 UTC = 00:30 Paris (CET); Paris springs forward on 03-29
        at = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
        e = enroll(seq, contact, at, enrollment_id="e1").enrollment
        assert e.next_step_due_at == datetime(2026, 3, 29, 22, 30, tzinfo=UTC)  # 00:30 CEST

    def test_a_wrong_sequence_is_refused(self) -> None:
        seq = welcome()
        other = attrs.evolve(seq, id="other")
        with pytest.raises(DripcoreError, match="belongs to sequence 'welcome'"):
            advance(start(seq), T0, sequence=other)

    def test_naive_now_is_refused(self) -> None:
        seq = welcome()
        with pytest.raises(NaiveDatetimeError, match="now="):
            advance(start(seq), datetime(2026, 3, 2, 9, 0), sequence=seq)


class TestEditsMidFlight:
    def test_sequence_edited_mid_flight_continues_from_last_step_sent(self) -> None:
        """Saving new steps: the enrollment goes on from where it was with the latest list."""
        seq = welcome()
        e = advance(start(seq), T0, sequence=seq).enrollment
        e = advance(e, T0 + timedelta(hours=24), sequence=seq).enrollment
        assert e.last_step_sent == 2
        edited = attrs.evolve(
            seq,
            version=2,
            steps=(step(1), step(2, Delay.hours(24)), step(3, Delay.days(2)), step(4, Delay.days(1))),
        )
        e = replan(e, edited, previous=seq).enrollment
        assert e.next_step_due_at == T0 + timedelta(hours=24) + timedelta(days=2)
        sends, final, _ = run(edited, e, T0 + timedelta(days=10))
        assert [p for p, _ in sends] == [3, 4]
        assert final.status is EnrollmentStatus.COMPLETED

    def test_shortened_delay_releases_and_lengthened_delay_holds(self) -> None:
        seq = welcome()
        e = advance(start(seq), T0, sequence=seq).enrollment
        shorter = attrs.evolve(seq, steps=(step(1), step(2, Delay.hours(1)), step(3, Delay.days(6))))
        assert replan(e, shorter, previous=seq).enrollment.next_step_due_at == T0 + timedelta(hours=1)
        longer = attrs.evolve(seq, steps=(step(1), step(2, Delay.hours(72)), step(3, Delay.days(6))))
        assert replan(e, longer, previous=seq).enrollment.next_step_due_at == T0 + timedelta(hours=72)

    def test_unchanged_next_step_keeps_the_enrollment_as_is(self) -> None:
        seq = welcome()
        e = advance(start(seq), T0, sequence=seq).enrollment
        renamed = attrs.evolve(seq, name="Welcome (v2)", version=2)
        assert replan(e, renamed, previous=seq).enrollment is e

    def test_removing_the_remaining_steps_completes_on_next_advance(self) -> None:
        seq = welcome()
        e = advance(start(seq), T0, sequence=seq).enrollment
        cut = attrs.evolve(seq, steps=(step(1),))
        e = replan(e, cut, previous=seq).enrollment
        assert e.next_step_due_at == T0
        result = advance(e, T0 + timedelta(minutes=1), sequence=cut)
        assert result.send is None
        assert result.enrollment.status is EnrollmentStatus.COMPLETED
