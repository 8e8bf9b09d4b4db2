"""Hypothesis properties: the scheduling invariants of DESIGN.md section 3.

Each test drives the bare state machine through arbitrary sequences (1-10
steps, random delays, inactive steps, conditions), arbitrary time zones and
arbitrary runs of ticks, pauses, resumes, edits, exits, engagement and clock
jumps (forwards and backwards), and checks one invariant on every call.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dripcore import (
    Advance,
    Contact,
    Enrollment,
    EnrollmentStatus,
    ExitReason,
    PausePolicy,
    Sequence,
    SequenceStatus,
    Step,
    add_delay,
    advance,
    enroll,
    exit,
    pause,
    replan,
    resume,
)
from dripcore.errors import InvalidEnrollment
from dripcore.model import trusted_enrollment

# _sent is private on purpose: it spells attrs.evolve out for speed, and
# test_the_hot_path_constructor_equals_attrs_evolve checks that hand-written copy against evolve.
from dripcore.scheduler import _sent, resolve_zone
from tests.strategies import contacts, enrollments, instants, sequences, steps_lists

LINKS = ["https://a.example/x", "https://b.example/y"]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.timedeltas(timedelta(0), timedelta(days=4))),
        st.tuples(st.just("tick"), st.timedeltas(timedelta(0), timedelta(minutes=90))),
        st.tuples(st.just("back"), st.timedeltas(timedelta(0), timedelta(days=5))),
        st.tuples(st.just("pause")),
        st.tuples(st.just("resume"), st.sampled_from(list(PausePolicy))),
        st.tuples(st.just("exit"), st.sampled_from([ExitReason.MANUAL, ExitReason.GOAL_MET])),
        st.tuples(st.just("edit"), steps_lists()),
        st.tuples(st.just("open"), st.integers(1, 30)),
        st.tuples(st.just("click"), st.integers(1, 30), st.sampled_from(LINKS)),
        st.tuples(st.just("sequence"), st.sampled_from([SequenceStatus.ACTIVE, SequenceStatus.PAUSED])),
        st.tuples(st.just("suppress"), st.sampled_from([ExitReason.UNSUBSCRIBED, ExitReason.BOUNCED])),
    ),
    max_size=60,
)


@dataclass
class Call:
    """One advance() call and what surrounded it."""

    before: Enrollment
    now: datetime
    sequence: Sequence
    contact: Contact
    result: Advance


@dataclass
class Run:
    sequence: Sequence
    contact: Contact
    start: datetime
    calls: list[Call] = field(default_factory=list)
    sends: list[Call] = field(default_factory=list)
    final: Enrollment | None = None


def simulate(sequence: Sequence, contact: Contact, start: datetime, ops: list[tuple[Any, ...]]) -> Run:
    """Apply ``ops``; every tick/back calls advance() once; record everything."""
    run = Run(sequence=sequence, contact=contact, start=start)
    enrollment = enroll(sequence, contact, start, enrollment_id="e1").enrollment
    now = start

    def tick() -> None:
        nonlocal enrollment
        result = advance(enrollment, now, sequence=sequence, contact=contact)
        call = Call(enrollment, now, sequence, contact, result)
        run.calls.append(call)
        if result.send is not None:
            run.sends.append(call)
        enrollment = result.enrollment

    tick()
    for op in ops:
        kind = op[0]
        if kind == "tick":
            now += op[1]
            tick()
        elif kind == "back":
            now -= op[1]
            tick()
        elif kind == "pause" and enrollment.status is EnrollmentStatus.ACTIVE:
            enrollment = pause(enrollment, now).enrollment
        elif kind == "resume" and enrollment.status is EnrollmentStatus.PAUSED:
            enrollment = resume(enrollment, now, sequence=sequence, policy=op[1]).enrollment
        elif kind == "exit" and not enrollment.is_terminal:
            enrollment = exit(enrollment, op[1], now).enrollment
        elif kind == "edit":
            edited = attrs.evolve(sequence, steps=op[1], version=sequence.version + 1)
            enrollment = replan(enrollment, edited, contact=contact, previous=sequence).enrollment
            sequence = edited
        elif kind == "open":
            enrollment = attrs.evolve(enrollment, opened=enrollment.opened | {op[1]})
        elif kind == "click":
            enrollment = attrs.evolve(enrollment, clicked=enrollment.clicked | {(op[1], op[2])})
        elif kind == "sequence":
            paused_at = now if op[1] is SequenceStatus.PAUSED else None
            sequence = attrs.evolve(sequence, status=op[1], paused_at=paused_at)
        elif kind == "suppress":
            contact = attrs.evolve(contact, suppressed=op[1])
    run.final = enrollment
    return run


runs = st.builds(simulate, sequences(), contacts(), instants, operations)


@given(runs)
def test_each_active_step_is_sent_at_most_once_and_inactive_steps_never(run: Run) -> None:
    positions = [call.result.send.position for call in run.sends if call.result.send]
    assert len(positions) == len(set(positions))
    for call in run.sends:
        assert call.result.send is not None
        assert call.result.send.active
        assert call.sequence.step(call.result.send.position) == call.result.send


@given(runs)
def test_sends_go_in_strictly_increasing_position(run: Run) -> None:
    positions = [call.result.send.position for call in run.sends if call.result.send]
    assert positions == sorted(positions)
    assert all(a < b for a, b in itertools.pairwise(positions))


@given(runs)
def test_no_send_happens_before_its_due_time(run: Run) -> None:
    """The first not before enrollment + its delay; each later one not before the previous send + its delay."""
    previous = run.start
    for call in run.sends:
        step = call.result.send
        assert step is not None
        zone = resolve_zone(call.sequence, call.contact)
        assert call.now >= add_delay(previous, step.delay, zone)
        assert call.before.next_step_due_at is not None
        assert call.now >= call.before.next_step_due_at
        previous = call.now


@given(runs)
def test_at_most_one_send_per_call_and_before_due_is_identity(run: Run) -> None:
    for call in run.calls:
        assert call.result.send is None or isinstance(call.result.send, Step)
        due = call.before.next_step_due_at
        suppressed = call.contact.suppressed is not None
        archived = call.sequence.status is SequenceStatus.ARCHIVED
        if due is not None and call.now < due and not suppressed and not archived:
            assert call.result.enrollment is call.before
            assert call.result.send is None
            assert call.result.events == ()


@given(runs)
def test_terminal_states_are_absorbing(run: Run) -> None:
    for call in run.calls:
        if call.before.is_terminal:
            assert call.result.enrollment is call.before
            assert call.result.send is None
            assert call.result.events == ()
    seen_terminal = False
    for call in run.calls:
        seen_terminal = seen_terminal or call.before.is_terminal
        if seen_terminal:
            assert call.result.send is None


@given(runs)
def test_paused_enrollment_or_inactive_sequence_never_sends(run: Run) -> None:
    for call in run.calls:
        if call.before.status is EnrollmentStatus.PAUSED or call.sequence.status is not SequenceStatus.ACTIVE:
            assert call.result.send is None
            if call.contact.suppressed is None and call.sequence.status is not SequenceStatus.ARCHIVED:
                assert call.result.enrollment is call.before


def next_unskipped_step(sequence: Sequence, after: int, skipped: frozenset[int]) -> Step | None:
    """The first active step after position ``after`` that was not skipped (public Sequence API only)."""
    step = sequence.next_active_step(after)
    while step is not None and step.position in skipped:
        step = sequence.next_active_step(step.position)
    return step


@given(runs)
def test_enrollment_completes_exactly_when_no_active_step_is_left(run: Run) -> None:
    """COMPLETED only with no active step left, never in the call that sends (the last send leaves
    the enrollment ACTIVE and due at once: completion waits for that email's delivery)."""
    for call in run.calls:
        after = call.result.enrollment
        remaining = next_unskipped_step(call.sequence, after.last_step_sent, after.skipped)
        if after.status is EnrollmentStatus.COMPLETED and not call.before.is_terminal:
            assert remaining is None
            assert call.result.send is None
        if call.result.send is not None and after.status is EnrollmentStatus.ACTIVE and remaining is None:
            assert after.next_step_due_at == call.now
        moved = call.result.enrollment is not call.before
        if moved and after.status is EnrollmentStatus.ACTIVE and call.result.send is None:
            # a call that only skipped steps must leave a step to wait for
            assert remaining is not None


@given(runs)
def test_clock_going_backwards_never_repeats_a_send(run: Run) -> None:
    sent: set[int] = set()
    latest: datetime | None = None
    for call in run.calls:
        went_back = latest is not None and call.now < latest
        if call.result.send is not None:
            assert call.result.send.position not in sent
            sent.add(call.result.send.position)
            if went_back:
                # a send after a backwards jump is still a new, due step
                assert call.before.next_step_due_at is not None
                assert call.now >= call.before.next_step_due_at
        latest = call.now if latest is None else max(latest, call.now)


@given(runs)
def test_advance_is_deterministic(run: Run) -> None:
    for call in run.calls:
        again = advance(call.before, call.now, sequence=call.sequence, contact=call.contact)
        assert again == call.result


@given(sequences(), contacts(), instants, st.data())
def test_a_long_enough_clock_ends_every_enrollment(
    sequence: Sequence, contact: Contact, start: datetime, data: st.DataObject
) -> None:
    """Liveness: with the sequence active, ticking far enough completes the enrollment."""
    enrollment = enroll(sequence, contact, start, enrollment_id="e1").enrollment
    if data.draw(st.booleans()):
        enrollment = resume(pause(enrollment, start).enrollment, start, sequence=sequence).enrollment
    now = start
    for _ in range(len(sequence.steps) + 2):
        now = max(now, enrollment.next_step_due_at or now) + timedelta(seconds=1)
        enrollment = advance(enrollment, now, sequence=sequence, contact=contact).enrollment
        if enrollment.is_terminal:
            break
    assert enrollment.status is EnrollmentStatus.COMPLETED


@given(sequences(), contacts(suppressed=True), instants)
def test_suppressed_contact_is_never_sent_anything(sequence: Sequence, contact: Contact, start: datetime) -> None:
    enrollment = enroll(sequence, attrs.evolve(contact, suppressed=None), start, enrollment_id="e1").enrollment
    result = advance(enrollment, start + timedelta(days=365), sequence=sequence, contact=contact)
    assert result.send is None
    assert result.enrollment.status is EnrollmentStatus.EXITED
    assert result.enrollment.exit_reason is contact.suppressed


@given(enrollments(), instants, st.integers(1, 30), st.frozensets(st.integers(1, 30), max_size=3))
def test_the_hot_path_constructor_equals_attrs_evolve(
    enrollment: Enrollment, now: datetime, position: int, skipped: frozenset[int]
) -> None:
    """scheduler._sent spells evolve out for speed; it must keep every other field (a new field included)."""
    assume(enrollment.status is EnrollmentStatus.ACTIVE)
    due = now + timedelta(hours=1)
    expected = attrs.evolve(
        enrollment, last_step_sent=position, last_step_sent_at=now, next_step_due_at=due, skipped=skipped
    )
    assert _sent(enrollment, position, now, due, skipped) == expected
    source = inspect.getsource(_sent)
    missing = [f.name for f in attrs.fields(Enrollment) if f.init and f"{f.name}=" not in source]
    assert missing == [], f"scheduler._sent does not pass {missing}"


@given(enrollments())
def test_the_fast_enrollment_constructor_equals_the_validated_one(enrollment: Enrollment) -> None:
    """model.trusted_enrollment skips the per-field converters; given the fields of a valid
    enrollment it must build the same enrollment, and it must take every field."""
    fields = {f.name: getattr(enrollment, f.name) for f in attrs.fields(Enrollment) if f.init}
    assert trusted_enrollment(**fields) == Enrollment(**fields) == enrollment
    assert set(inspect.signature(trusted_enrollment).parameters) == set(fields)


@given(enrollments())
def test_the_fast_enrollment_constructor_keeps_the_cross_field_rules(enrollment: Enrollment) -> None:
    """What __attrs_post_init__ refuses, the fast constructor refuses too."""
    fields = {f.name: getattr(enrollment, f.name) for f in attrs.fields(Enrollment) if f.init}
    fields["next_step_due_at"] = None if enrollment.next_step_due_at is not None else enrollment.enrolled_at
    with pytest.raises(InvalidEnrollment):
        trusted_enrollment(**fields)
