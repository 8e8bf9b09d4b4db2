"""The sequence state machine: SEQUENCE_TRANSITIONS, sequence_target, and the engine agreeing with the table."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from dripcore import (
    Drip,
    Sequence,
    SequenceStateError,
    SequenceStatus,
    Step,
    Trigger,
)
from dripcore.scheduler import SEQUENCE_STARTS, SEQUENCE_TRANSITIONS, SequenceAction, sequence_target
from tests.builders import T0, World

MOVES = [action for action in SequenceAction if action is not SequenceAction.CREATE]


def sequence(status: SequenceStatus = SequenceStatus.ACTIVE, sequence_id: str = "welcome") -> Sequence:
    return Sequence(
        id=sequence_id, name="Welcome", status=status, trigger=Trigger(type="manual"),
        paused_at=T0 if status is SequenceStatus.PAUSED else None,
        steps=(Step(position=1, subject="Hi", text="a"),),
    )  # fmt: skip


class TestTheTable:
    def test_every_status_has_a_row(self) -> None:
        assert set(SEQUENCE_TRANSITIONS) == set(SequenceStatus)

    def test_only_an_active_sequence_takes_enrollments(self) -> None:
        assert {s for s, row in SEQUENCE_TRANSITIONS.items() if SequenceAction.ENROLL in row} == {SequenceStatus.ACTIVE}

    def test_archived_is_final(self) -> None:
        assert set(SEQUENCE_TRANSITIONS[SequenceStatus.ARCHIVED].values()) == {SequenceStatus.ARCHIVED}
        assert SequenceAction.EDIT not in SEQUENCE_TRANSITIONS[SequenceStatus.ARCHIVED]

    def test_creation_is_not_a_column(self) -> None:
        assert all(SequenceAction.CREATE not in row for row in SEQUENCE_TRANSITIONS.values())
        assert {SequenceStatus.DRAFT, SequenceStatus.ACTIVE} == SEQUENCE_STARTS


class TestSequenceTarget:
    @pytest.mark.parametrize("status", list(SequenceStatus))
    @pytest.mark.parametrize("action", MOVES)
    def test_legal_moves_return_the_tables_target_and_illegal_ones_name_their_context(
        self, status: SequenceStatus, action: SequenceAction
    ) -> None:
        seq = sequence(status)
        expected = SEQUENCE_TRANSITIONS[status].get(action)
        if expected is not None:
            assert sequence_target(seq, action) is expected
            return
        with pytest.raises(SequenceStateError) as raised:
            sequence_target(seq, action)
        verb = "enroll into" if action is SequenceAction.ENROLL else action.value
        assert (raised.value.sequence_id, raised.value.status, raised.value.action) == ("welcome", status.value, verb)
        assert str(raised.value).startswith(f"can't {verb} sequence 'welcome' when status={status.value}")

    def test_enrolling_into_a_draft_says_why(self) -> None:
        with pytest.raises(SequenceStateError, match="only an active sequence takes new enrollments"):
            sequence_target(sequence(SequenceStatus.DRAFT), SequenceAction.ENROLL)

    @pytest.mark.parametrize("status", list(SequenceStatus))
    def test_a_new_sequence_starts_as_draft_or_active(self, status: SequenceStatus) -> None:
        if status in SEQUENCE_STARTS:
            assert sequence_target(sequence(status), SequenceAction.CREATE) is status
        else:
            message = f"can't create sequence 'welcome' when status={status.value}: a new sequence starts"
            with pytest.raises(SequenceStateError, match=message):
                sequence_target(sequence(status), SequenceAction.CREATE)


# --------------------------------------------------------------------------- the engine agrees


def drip() -> Drip:
    return World().drip


def put_in(d: Drip, status: SequenceStatus) -> None:
    """Bring sequence 'welcome' to ``status`` through the engine's own operations."""
    d.save_sequence(sequence(SequenceStatus.DRAFT if status is SequenceStatus.DRAFT else SequenceStatus.ACTIVE))
    if status is SequenceStatus.PAUSED:
        d.pause("welcome")
    elif status is SequenceStatus.ARCHIVED:
        d.archive("welcome")
    assert d.get_sequence("welcome").status is status


OPERATIONS: dict[SequenceAction, Callable[[Drip], object]] = {
    SequenceAction.EDIT: lambda d: d.save_sequence(attrs.evolve(d.get_sequence("welcome"), name="Edited")),
    SequenceAction.ENROLL: lambda d: d.enroll("welcome", "ana"),
    SequenceAction.ACTIVATE: lambda d: d.activate("welcome"),
    SequenceAction.PAUSE: lambda d: d.pause("welcome"),
    SequenceAction.RESUME: lambda d: d.resume("welcome"),
    SequenceAction.ARCHIVE: lambda d: d.archive("welcome"),
}


@pytest.mark.parametrize("status", list(SequenceStatus))
@pytest.mark.parametrize("action", MOVES)
def test_the_engine_does_what_the_table_says(status: SequenceStatus, action: SequenceAction) -> None:
    """Every Drip operation on a sequence is legal exactly where the table has an entry, and leads to its target."""
    d = drip()
    put_in(d, status)
    target = SEQUENCE_TRANSITIONS[status].get(action)
    if target is None:
        with pytest.raises(SequenceStateError):
            OPERATIONS[action](d)
        assert d.get_sequence("welcome").status is status
    else:
        OPERATIONS[action](d)
        assert d.get_sequence("welcome").status is target


@pytest.mark.parametrize("status", list(SequenceStatus))
def test_the_engine_creates_sequences_in_the_start_states_only(status: SequenceStatus) -> None:
    d = drip()
    if status in SEQUENCE_STARTS:
        assert d.save_sequence(sequence(status)).status is status
    else:
        with pytest.raises(SequenceStateError, match="a new sequence starts as draft or active"):
            d.save_sequence(sequence(status))
