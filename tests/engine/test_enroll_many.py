"""Drip.enroll_many: many contacts in one call, each getting what enroll would do, reported per contact."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from collections.abc import Sequence as Seq
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dripcore import (
    ContactNotFound,
    ContactSuppressed,
    Drip,
    EnrollManyResult,
    EnrollmentConflict,
    EnrollmentStatus,
    EnrollOutcome,
    Event,
    ExitReason,
    InvalidArgument,
    ReentryPolicy,
    SequenceNotFound,
    SequenceStateError,
    SequenceStatus,
    StoreError,
    Subscribed,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.engine import enrolling
from dripcore.model import Enrollment
from dripcore.ports import Counter, Store

from ..builders import T0, World, welcome

ALL = ["ana", "bo", "cy", "leap"]


def world(store: MemoryStore | None = None, **sequence: Any) -> World:
    """The reference World with the Welcome series saved (``sequence`` overrides); on ``store`` if given."""
    w = World()
    if store is not None:
        w.store = store
        w.drip = Drip(store=store, sender=w.recorder, clock=w.clock, contacts=w.contacts, events=w.events)
    w.drip.save_sequence(welcome(**sequence))
    return w


class TestOutcomes:
    def test_new_contacts_are_created_with_their_events_and_counts(self) -> None:
        """Every contact enrolled: CREATED, one Subscribed each, and stats count them as recipients."""
        w = world()
        result = w.drip.enroll_many("welcome", ALL)
        assert isinstance(result, EnrollManyResult)
        assert result.outcomes == dict.fromkeys(ALL, EnrollOutcome.CREATED)
        assert [e.contact_id for e in result.created] == ALL
        assert all(e.status is EnrollmentStatus.ACTIVE and e.next_step_due_at == T0 for e in result.created)
        assert [e.contact_id for e in w.events.of(Subscribed)] == ALL
        assert w.drip.stats("welcome").recipients == 4
        assert w.drip.tick().sent == 4

    def test_each_contact_gets_what_enroll_would_do_and_the_rest_are_enrolled(self) -> None:
        """Existing, conflicting, suppressed and unknown contacts are reported; the others are created."""
        w = world()
        live, _ = w.drip.enroll("welcome", "ana")
        done, _ = w.drip.enroll("welcome", "bo")
        w.drip.cancel_enrollment(done.id)
        w.drip.contact_unsubscribed("cy")
        result = w.drip.enroll_many("welcome", ["ana", "bo", "cy", "nobody", "leap"])
        assert result.outcomes == {
            "ana": EnrollOutcome.EXISTING,
            "bo": EnrollOutcome.CONFLICT,
            "cy": EnrollOutcome.SUPPRESSED,
            "nobody": EnrollOutcome.UNKNOWN_CONTACT,
            "leap": EnrollOutcome.CREATED,
        }
        assert result.enrollments["ana"] == live
        assert (result.enrollments["bo"].id, result.enrollments["bo"].status) == (done.id, EnrollmentStatus.EXITED)
        assert set(result.enrollments) == {"ana", "bo", "leap"}
        assert result.contact_ids(EnrollOutcome.CREATED) == ["leap"]
        assert result.counts()[EnrollOutcome.UNKNOWN_CONTACT] == 1
        assert result.counts()[EnrollOutcome.CREATED] == 1

    def test_the_outcomes_match_enrolling_one_by_one(self) -> None:
        """The same store state as enroll() per contact: same enrollments, counters and events."""
        bulk, single = world(), world()
        for w in (bulk, single):
            w.drip.enroll("welcome", "ana")
        bulk.drip.enroll_many("welcome", ALL)
        for contact_id in ALL:
            single.drip.enroll("welcome", contact_id)

        def state(w: World) -> list[tuple[str, str, EnrollmentStatus, Any]]:
            found = w.drip.enrollments("welcome", limit=100)
            return [(e.id, e.contact_id, e.status, e.next_step_due_at) for e in found]

        assert state(bulk) == state(single)
        assert bulk.store.counters("welcome") == single.store.counters("welcome")
        assert bulk.events.names() == single.events.names()

    def test_with_reentry_a_finished_contact_enters_again(self) -> None:
        """AFTER_EXIT: a contact who finished gets a new enrollment, as enroll gives."""
        w = world(reentry=ReentryPolicy.AFTER_EXIT)
        first, _ = w.drip.enroll("welcome", "ana")
        w.drip.cancel_enrollment(first.id)
        result = w.drip.enroll_many("welcome", ["ana"])
        assert result.outcomes == {"ana": EnrollOutcome.CREATED}
        assert result.enrollments["ana"].id != first.id

    def test_a_contact_given_twice_counts_once(self) -> None:
        """Duplicates collapse to the first: one enrollment, one outcome, one event."""
        w = world()
        result = w.drip.enroll_many("welcome", ("bo", "ana", "bo"))
        assert list(result.outcomes) == ["bo", "ana"]
        assert len(w.drip.enrollments("welcome", contact_id="bo")) == 1
        assert len(w.events.of(Subscribed)) == 2

    def test_start_variables_and_key_apply_to_everyone(self) -> None:
        """started_at, variables and key mean what they mean for enroll."""
        w = world()
        start = T0 + timedelta(days=1)
        result = w.drip.enroll_many("welcome", ["ana", "bo"], started_at=start, variables={"plan": "pro"}, key="q3")
        for e in result.created:
            assert (e.enrolled_at, e.next_step_due_at, e.variables, e.key) == (start, start, {"plan": "pro"}, "q3")
        again = w.drip.enroll_many("welcome", ["ana"], key="q4")
        assert again.outcomes == {"ana": EnrollOutcome.CREATED}

    def test_an_empty_list_enrolls_no_one(self) -> None:
        """No contacts: an empty result, no events."""
        w = world()
        result = w.drip.enroll_many("welcome", [])
        assert result.outcomes == {}
        assert result.created == []
        assert w.events.events == []

    def test_the_result_is_read_only(self) -> None:
        """The result is frozen and its mappings can't be changed."""
        result = world().drip.enroll_many("welcome", ["ana"])
        with pytest.raises(TypeError):
            result.outcomes["bo"] = EnrollOutcome.CREATED  # type: ignore[index]
        with pytest.raises(AttributeError):
            result.sequence_id = "other"  # type: ignore[misc]


class TestRefusals:
    """Rule: bad input is all or nothing (raised before anything is written); per-contact facts are rest-applied."""

    @pytest.mark.parametrize("contact_ids", ["ana", None, {"ana"}, iter(["ana"]), {"ana": 1}, 42])
    def test_contact_ids_that_are_not_a_list_are_refused(self, contact_ids: Any) -> None:
        """A string, a set, a generator, a dict or None: InvalidArgument naming contact_ids."""
        w = world()
        with pytest.raises(InvalidArgument) as caught:
            w.drip.enroll_many("welcome", contact_ids)
        assert caught.value.field == "contact_ids"
        assert w.drip.enrollments("welcome") == []

    @pytest.mark.parametrize("bad", ["", " ", "a\nb", 7, None, "x" * 256])
    def test_a_bad_id_in_the_list_names_its_place_and_writes_nothing(self, bad: Any) -> None:
        """An invalid id anywhere refuses the whole call: InvalidArgument naming contact_ids[i]."""
        w = world()
        with pytest.raises(InvalidArgument) as caught:
            w.drip.enroll_many("welcome", ["ana", "bo", bad, "cy"])
        assert caught.value.field == "contact_ids[2]"
        assert w.drip.enrollments("welcome") == []
        assert w.events.events == []

    @pytest.mark.parametrize("status", [SequenceStatus.DRAFT, SequenceStatus.PAUSED, SequenceStatus.ARCHIVED])
    def test_a_sequence_not_active_refuses_as_enroll_does(self, status: SequenceStatus) -> None:
        """Draft, paused and archived sequences raise SequenceStateError; nothing is written."""
        w = world()
        if status is SequenceStatus.DRAFT:
            w = World()
            w.drip.save_sequence(welcome(status=SequenceStatus.DRAFT))
        elif status is SequenceStatus.PAUSED:
            w.drip.pause("welcome")
        else:
            w.drip.archive("welcome")
        with pytest.raises(SequenceStateError):
            w.drip.enroll("welcome", "ana")
        with pytest.raises(SequenceStateError):
            w.drip.enroll_many("welcome", ["ana", "bo"])
        assert w.drip.enrollments("welcome") == []

    def test_an_unknown_sequence_is_not_found(self) -> None:
        """SequenceNotFound, as enroll raises."""
        with pytest.raises(SequenceNotFound):
            world().drip.enroll_many("nope", ["ana"])


class _CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.singles = 0

    def add_enrollment(self, *args: Any, **kwargs: Any) -> Any:
        self.singles += 1
        return super().add_enrollment(*args, **kwargs)

    def add_enrollment_batch(self, enrollments: Seq[Enrollment], **kwargs: Any) -> Any:
        self.batches.append(len(enrollments))
        return super().add_enrollment_batch(enrollments, **kwargs)


class _PortDefaultStore(MemoryStore):
    """A store that does not override add_enrollment_batch: the port's loop over add_enrollment."""

    def add_enrollment_batch(
        self,
        enrollments: Seq[Enrollment],
        *,
        allow_reentry: bool,
        counters: Callable[[Enrollment], Iterable[Counter]] | None = None,
    ) -> list[tuple[Enrollment, bool]]:
        return Store.add_enrollment_batch(self, enrollments, allow_reentry=allow_reentry, counters=counters)


class _FailingSecondBatchStore(MemoryStore):
    """Fails its second batch, once, as a store that went down part-way."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def add_enrollment_batch(self, enrollments: Seq[Enrollment], **kwargs: Any) -> Any:
        self.batches += 1
        if self.batches == 2:
            raise StoreError("the store went away")
        return super().add_enrollment_batch(enrollments, **kwargs)


class _CountingWake(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


class TestOneCall:
    def test_one_store_write_one_publish_and_one_wake_up(self) -> None:
        """The whole list goes to the store in one batch; events in one publish; run() woken once."""
        store = _CountingStore()
        w = world(store)
        wake = _CountingWake()
        w.drip._context.wake = wake  # the wake-up event run() sleeps on
        published: list[int] = []
        publish = w.events.publish

        def counting(events: Seq[Event]) -> None:
            published.append(len(events))
            publish(events)

        w.events.publish = counting  # type: ignore[method-assign]
        w.drip.enroll_many("welcome", ALL)
        assert (store.batches, store.singles) == ([4], 0)
        assert published == [4]
        assert wake.sets == 1

    def test_nothing_created_wakes_no_one(self) -> None:
        """All already in: no events, no wake-up."""
        w = world()
        w.drip.enroll_many("welcome", ["ana"])
        wake = _CountingWake()
        w.drip._context.wake = wake
        w.events.events.clear()
        assert w.drip.enroll_many("welcome", ["ana"]).outcomes == {"ana": EnrollOutcome.EXISTING}
        assert (w.events.events, wake.sets) == ([], 0)

    def test_a_long_list_is_written_in_batches_and_wakes_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past the batch size, one store write per batch; the outcomes are the same."""
        monkeypatch.setattr(enrolling, "ENROLL_MANY_BATCH", 3)
        store = _CountingStore()
        w = world(store)
        wake = _CountingWake()
        w.drip._context.wake = wake
        result = w.drip.enroll_many("welcome", [*ALL, "nobody"])
        assert store.batches == [3, 1]
        assert result.counts()[EnrollOutcome.CREATED] == 4
        assert wake.sets == 1

    def test_a_store_failing_part_way_keeps_the_written_batches_and_a_retry_finishes(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The batches before a store failure stay (and wake the worker); calling again enrolls the rest."""
        monkeypatch.setattr(enrolling, "ENROLL_MANY_BATCH", 2)
        store = _FailingSecondBatchStore()
        w = world(store)
        wake = _CountingWake()
        w.drip._context.wake = wake
        with pytest.raises(StoreError):
            w.drip.enroll_many("welcome", ALL)
        assert sorted(e.contact_id for e in w.drip.enrollments("welcome")) == ["ana", "bo"]
        assert wake.sets == 1
        result = w.drip.enroll_many("welcome", ALL)
        assert result.contact_ids(EnrollOutcome.EXISTING) == ["ana", "bo"]
        assert result.contact_ids(EnrollOutcome.CREATED) == ["cy", "leap"]
        assert w.drip.stats("welcome").recipients == 4

    def test_a_store_on_the_port_default_gives_the_same_outcomes(self) -> None:
        """A third-party store without its own add_enrollment_batch works through the port's loop."""
        outcomes = []
        for store in (MemoryStore(), _PortDefaultStore()):
            w = world(store)
            w.drip.enroll("welcome", "ana")
            first, _ = w.drip.enroll("welcome", "bo")
            w.drip.cancel_enrollment(first.id)
            w.drip.contact_bounced("cy")
            result = w.drip.enroll_many("welcome", ["ana", "bo", "cy", "leap", "nobody", "leap"])
            outcomes.append((result.outcomes, store.counters("welcome")))
        assert outcomes[0] == outcomes[1]


_POOL = [*ALL, "nobody", "ghost"]
_BEFORE = st.sampled_from(["none", "active", "paused", "finished"])


@given(
    contact_ids=st.lists(st.sampled_from(_POOL), max_size=8),
    before=st.fixed_dictionaries(dict.fromkeys(ALL, _BEFORE)),
    suppressed=st.sets(st.sampled_from(ALL)),
    reentry=st.sampled_from(list(ReentryPolicy)),
)
def test_enroll_many_agrees_with_enroll_one_by_one(
    contact_ids: list[str], before: dict[str, str], suppressed: set[str], reentry: ReentryPolicy
) -> None:
    """For any list and any prior state, each outcome is what enroll does, and the stores end up equal."""
    bulk, single = world(reentry=reentry), world(reentry=reentry)
    for w in (bulk, single):
        for contact_id, prior in before.items():
            if prior == "none":
                continue
            enrollment, _ = w.drip.enroll("welcome", contact_id)
            if prior == "paused":
                w.drip.pause_enrollment(enrollment.id)
            elif prior == "finished":
                w.drip.cancel_enrollment(enrollment.id)
        for contact_id in sorted(suppressed):
            w.contacts.suppress(contact_id, ExitReason.UNSUBSCRIBED)
    result = bulk.drip.enroll_many("welcome", contact_ids)
    expected: dict[str, EnrollOutcome] = {}
    for contact_id in contact_ids:
        if contact_id in expected:
            continue
        try:
            _, created = single.drip.enroll("welcome", contact_id)
        except ContactNotFound:
            expected[contact_id] = EnrollOutcome.UNKNOWN_CONTACT
        except ContactSuppressed:
            expected[contact_id] = EnrollOutcome.SUPPRESSED
        except EnrollmentConflict:
            expected[contact_id] = EnrollOutcome.CONFLICT
        else:
            expected[contact_id] = EnrollOutcome.CREATED if created else EnrollOutcome.EXISTING
    assert result.outcomes == expected

    def state(w: World) -> list[tuple[str, str]]:
        return sorted((e.contact_id, e.status.value) for e in w.drip.enrollments("welcome", limit=100))

    assert state(bulk) == state(single)
    assert bulk.store.counters("welcome") == single.store.counters("welcome")
    assert bulk.events.names() == single.events.names()
