"""Every public entry point of Drip and of the stores raises only DripcoreErrors on bad input:
generated junk (wrong types, hostile strings, huge numbers, instants at the edges) in each
argument, on the memory store and a real SQLite file."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dripcore import (
    Contact,
    Drip,
    DripcoreError,
    EnrollmentStatus,
    FrequencyCap,
    InvalidArgument,
    Limits,
    OutboxStatus,
    RetryPolicy,
    SequenceStatus,
    TriggerEvent,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Store
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender
from dripcore.testing.contract import sample_enrollment, sample_sequence
from tests.builders import T0


class Colour(enum.Enum):
    RED = "active"  # an enum of the wrong type whose value is a valid wire value


HOSTILE_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\t",
        "a\x00b",
        "p\udce9",
        "\ud800",
        "line\nbreak",
        "cr\r",
        "nel\x85",
        "sep\u2028",
        "para\u2029",
        "x" * 256,
        "x" * 100_000,
        "active",
        "1",
        "false",
        "2026-01-01",
        "'; DROP TABLE enrollments; --",
        "x>,<v@evil.example",
    ]
)
INSTANTS = st.sampled_from(
    [
        datetime(2026, 1, 1),  # naive
        datetime.min,
        datetime.max,
        datetime.min.replace(tzinfo=timezone.utc),
        datetime.max.replace(tzinfo=timezone.utc),
        datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-23))),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23))),
    ]
)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, 2**64 + 1, -(2**63) - 1, 10**30, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    HOSTILE_TEXT,
    st.text(max_size=20),
    st.binary(max_size=10),
    INSTANTS,
    st.dates(),
    st.sampled_from([timedelta(-1), timedelta.max, timedelta.min, timedelta(0)]),
    st.sampled_from([Colour.RED, SequenceStatus.ACTIVE, EnrollmentStatus.PAUSED, OutboxStatus.PENDING, object()]),
    st.lists(st.one_of(st.none(), st.integers(), HOSTILE_TEXT), max_size=3),
    st.dictionaries(st.text(max_size=5), st.one_of(st.none(), st.integers(), HOSTILE_TEXT), max_size=3),
    st.tuples(HOSTILE_TEXT, st.integers(), HOSTILE_TEXT, st.integers()),
)

# An eighth of the profile's examples per entry point: ~170 entry points make it thousands in all
# (about 8,500 under the ci profile) while the file stays quick.
SETTINGS = settings(
    max_examples=max(settings.default.max_examples // 8, 8),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call ``fn``; anything but success or a DripcoreError fails the test."""
    try:
        result = fn(*args, **kwargs)
        if isinstance(result, Iterator):
            list(result)
    except DripcoreError:
        pass


# --------------------------------------------------------------------------- stores


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path_factory.mktemp("s") / "d.db")
    made.save_sequence(sample_sequence())
    made.add_enrollment(sample_enrollment("e1"), allow_reentry=False)
    yield made
    made.close()


STORE_CALLS: dict[str, Callable[[Store, Any], Any]] = {
    "get_sequence": lambda s, x: s.get_sequence(x),
    "list_sequences": lambda s, x: s.list_sequences(x),
    "save_sequence": lambda s, x: s.save_sequence(x),
    "save_sequence.expected_version": lambda s, x: s.save_sequence(sample_sequence(version=2), expected_version=x),
    "resume_sequence.shift": lambda s, x: s.resume_sequence(sample_sequence(version=2), expected_version=1, shift=x),
    "delete_sequence": lambda s, x: s.delete_sequence(x),
    "add_enrollment": lambda s, x: s.add_enrollment(x, allow_reentry=False),
    "add_enrollment.allow_reentry": lambda s, x: s.add_enrollment(sample_enrollment("e9"), allow_reentry=x),
    "add_enrollment.counters": lambda s, x: s.add_enrollment(sample_enrollment("e8"), allow_reentry=True, counters=x),
    "get_enrollment": lambda s, x: s.get_enrollment(x),
    "find_enrollments.sequence_id": lambda s, x: s.find_enrollments(sequence_id=x),
    "find_enrollments.contact_id": lambda s, x: s.find_enrollments(contact_id=x),
    "find_enrollments.statuses": lambda s, x: s.find_enrollments(statuses=x),
    "find_enrollments.limit": lambda s, x: s.find_enrollments(limit=x),
    "find_enrollments.offset": lambda s, x: s.find_enrollments(offset=x),
    "find_enrollments.after": lambda s, x: s.find_enrollments(after=x),
    "find_enrollments.last_step_sent": lambda s, x: s.find_enrollments(last_step_sent=x),
    "find_enrollments.order": lambda s, x: s.find_enrollments(order=x),
    "claim_due.now": lambda s, x: s.claim_due(x, limit=1, lease=timedelta(0), owner="w"),
    "claim_due.limit": lambda s, x: s.claim_due(T0, limit=x, lease=timedelta(0), owner="w"),
    "claim_due.lease": lambda s, x: s.claim_due(T0, limit=1, lease=x, owner="w"),
    "claim_due.owner": lambda s, x: s.claim_due(T0, limit=1, lease=timedelta(0), owner=x),
    "release.ids": lambda s, x: s.release(x, owner="w"),
    "release.owner": lambda s, x: s.release(["e1"], owner=x),
    "release.until": lambda s, x: s.release(["e1"], owner="w", until=x),
    "commit.changes": lambda s, x: s.commit(x),
    "commit.owner": lambda s, x: s.commit([], owner=x),
    "count_due": lambda s, x: s.count_due(x),
    "claim_messages.now": lambda s, x: s.claim_messages(x, limit=1, lease=timedelta(0), owner="w"),
    "claim_messages.limit": lambda s, x: s.claim_messages(T0, limit=x, lease=timedelta(0), owner="w"),
    "settle.deliveries": lambda s, x: s.settle(x),
    "get_message": lambda s, x: s.get_message(x),
    "find_messages.status": lambda s, x: s.find_messages(status=x),
    "find_messages.enrollment_id": lambda s, x: s.find_messages(enrollment_id=x),
    "find_messages.limit": lambda s, x: s.find_messages(limit=x),
    "count_messages.contact_id": lambda s, x: s.count_messages(x, T0, T0),
    "count_messages.since": lambda s, x: s.count_messages("c", x, T0),
    "prune_messages.before": lambda s, x: s.prune_messages(x),
    "prune_messages.batch_size": lambda s, x: s.prune_messages(T0, batch_size=x),
    "bump": lambda s, x: s.bump(x),
    "counters": lambda s, x: s.counters(x),
}


@pytest.mark.parametrize("entry", sorted(STORE_CALLS))
@SETTINGS
@given(junk=JUNK)
def test_store_entry_points_raise_only_dripcore_errors(store: Store, entry: str, junk: Any) -> None:
    """A store method given junk in one argument raises a DripcoreError, or takes it as valid."""
    call(STORE_CALLS[entry], store, junk)


# --------------------------------------------------------------------------- Drip


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def drip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drip]:
    path: Path = tmp_path_factory.mktemp("d") / "d.db"
    store: Store = MemoryStore() if request.param == "memory" else SQLiteStore(path)
    contacts = MemoryContacts([Contact(id="ana", email="ana@example.com")])
    made = Drip(store=store, sender=RecordingSender(), contacts=contacts, clock=FakeClock(T0))
    made.save_sequence(sample_sequence("seq", status=SequenceStatus.DRAFT))
    yield made
    store.close()


def _stopped_run(d: Drip, **kwargs: Any) -> None:
    stop = threading.Event()
    stop.set()
    d.run(stop=stop, **kwargs)


DRIP_CALLS: dict[str, Callable[[Drip, Any], Any]] = {
    "save_sequence": lambda d, x: d.save_sequence(x),
    "get_sequence": lambda d, x: d.get_sequence(x),
    "sequences": lambda d, x: d.sequences(x),
    "activate": lambda d, x: d.activate(x),
    "activate.enroll_existing": lambda d, x: d.activate("nope", enroll_existing=x),
    "pause": lambda d, x: d.pause(x),
    "resume": lambda d, x: d.resume(x),
    "resume.policy": lambda d, x: d.resume("seq", policy=x),
    "archive": lambda d, x: d.archive(x if x != "seq" else "other"),
    "delete_sequence": lambda d, x: d.delete_sequence(x if x != "seq" else "other"),
    "enroll.sequence_id": lambda d, x: d.enroll(x, "ana"),
    "enroll.contact_id": lambda d, x: d.enroll("seq", x),
    "enroll.started_at": lambda d, x: d.enroll("seq", "ana", started_at=x),
    "enroll.variables": lambda d, x: d.enroll("seq", "ana", variables=x),
    "enroll.key": lambda d, x: d.enroll("seq", "ana", key=x),
    "notify": lambda d, x: d.notify(x),
    "notify.contact": lambda d, x: d.notify(TriggerEvent.manual(x)),
    "pause_enrollment": lambda d, x: d.pause_enrollment(x),
    "resume_enrollment": lambda d, x: d.resume_enrollment(x),
    "resume_enrollment.policy": lambda d, x: d.resume_enrollment("e1", policy=x),
    "cancel_enrollment": lambda d, x: d.cancel_enrollment(x),
    "contact_unsubscribed": lambda d, x: d.contact_unsubscribed(x if x != "ana" else "bob"),
    "contact_bounced": lambda d, x: d.contact_bounced(x if x != "ana" else "bob"),
    "contact_complained": lambda d, x: d.contact_complained(x if x != "ana" else "bob"),
    "contact_suppressed.contact_id": lambda d, x: d.contact_suppressed(x if x != "ana" else "bob", "suppressed"),
    "contact_suppressed.reason": lambda d, x: d.contact_suppressed("bob", x),
    "record_open.enrollment_id": lambda d, x: d.record_open(x, 1),
    "record_open.position": lambda d, x: d.record_open("e1", x),
    "record_click.link": lambda d, x: d.record_click("e1", 1, x),
    "sweep_anniversaries": lambda d, x: d.sweep_anniversaries(x),
    "enrollments.sequence_id": lambda d, x: d.enrollments(x),
    "enrollments.status": lambda d, x: d.enrollments("seq", status=x),
    "enrollments.contact_id": lambda d, x: d.enrollments("seq", contact_id=x),
    "enrollments.last_step_sent": lambda d, x: d.enrollments("seq", last_step_sent=x),
    "enrollments.order": lambda d, x: d.enrollments("seq", order=x),
    "enrollments.limit": lambda d, x: d.enrollments("seq", limit=x),
    "enrollments.offset": lambda d, x: d.enrollments("seq", offset=x),
    "get_enrollment": lambda d, x: d.get_enrollment(x),
    "stats": lambda d, x: d.stats(x),
    "run.idle": lambda d, x: _stopped_run(d, idle=x),
    "run.max_ticks": lambda d, x: _stopped_run(d, max_ticks=x),
    "run.on_tick": lambda d, x: _stopped_run(d, on_tick=x),
}


@pytest.mark.parametrize("entry", sorted(DRIP_CALLS))
@SETTINGS
@given(junk=JUNK)
def test_drip_entry_points_raise_only_dripcore_errors(drip: Drip, entry: str, junk: Any) -> None:
    """A Drip method given junk in one argument raises a DripcoreError, or takes it as valid."""
    call(DRIP_CALLS[entry], drip, junk)


DRIP_SETTINGS = (
    "batch_size", "max_attempts", "lease", "set_aside_for", "retry_base", "retry_cap", "retry_for", "worker_id",
    "store", "sender", "contacts", "clock", "events", "rate_limiter", "renderer", "frequency_cap", "id_factory",
    "concurrency", "retry", "limits", "sender_rules",
)  # fmt: skip


@pytest.mark.parametrize("name", DRIP_SETTINGS)
@SETTINGS
@given(junk=JUNK)
def test_drip_settings_raise_only_dripcore_errors(name: str, junk: Any) -> None:
    """Drip(...) with junk in one setting raises a DripcoreError (never a bare ValueError or TypeError)."""
    kwargs: dict[str, Any] = {"store": MemoryStore(), "sender": RecordingSender(), "contacts": MemoryContacts()}
    kwargs[name] = junk
    call(Drip, **kwargs)


@pytest.mark.parametrize(
    ("call_it", "field"),
    [
        (lambda d: d.enrollments("seq", limit=-1), "limit"),
        (lambda d: d.enrollments("seq", limit="5"), "limit"),
        (lambda d: d.sweep_anniversaries("2026-01-01"), "day"),
        (lambda d: d.get_enrollment("p\udce9"), "enrollment_id"),
        (lambda d: d.get_sequence(2**64), "sequence_id"),
        (lambda d: d.enroll("seq", "a\x00b"), "contact_id"),
    ],
)
def test_the_reported_bad_calls_name_their_argument(drip: Drip, call_it: Callable[[Drip], Any], field: str) -> None:
    """The calls found raising bare errors now raise InvalidArgument naming the argument."""
    from dripcore import InvalidArgument

    with pytest.raises(InvalidArgument) as info:
        call_it(drip)
    assert info.value.field == field


def test_sequences_accepts_the_wire_value_of_a_status(drip: Drip) -> None:
    """sequences(status="draft") is sequences(SequenceStatus.DRAFT), on every store (it was [] on memory)."""
    assert [s.id for s in drip.sequences("draft")] == [s.id for s in drip.sequences(SequenceStatus.DRAFT)] == ["seq"]


def test_drip_batch_size_zero_is_an_invalid_argument() -> None:
    """Drip(batch_size=0) raises InvalidArgument naming batch_size."""
    from dripcore import InvalidArgument

    with pytest.raises(InvalidArgument) as info:
        Drip(store=MemoryStore(), sender=RecordingSender(), contacts=MemoryContacts(), batch_size=0)
    assert info.value.field == "batch_size"


# --------------------------------------------------------------------------- settings as value objects


def _drip(**settings: Any) -> Drip:
    return Drip(store=MemoryStore(), sender=RecordingSender(), contacts=MemoryContacts(), **settings)


def test_settings_value_objects_are_taken_as_given() -> None:
    """Drip(retry=RetryPolicy(...), limits=Limits(...)) keeps them, and the flat names read them."""
    retry = RetryPolicy(base=timedelta(seconds=5), cap=timedelta(minutes=2), give_up_after=timedelta(hours=3))
    limits = Limits(batch_size=20, lease=timedelta(minutes=1), set_aside_for=timedelta(minutes=30), concurrency=2)
    drip = _drip(retry=retry, limits=limits)
    assert (drip.retry, drip.limits) == (retry, limits)
    assert (drip.retry_base, drip.retry_cap, drip.retry_for, drip.max_attempts) == (
        timedelta(seconds=5), timedelta(minutes=2), timedelta(hours=3), None,
    )  # fmt: skip
    assert (drip.batch_size, drip.lease, drip.set_aside_for, drip.concurrency) == (
        20, timedelta(minutes=1), timedelta(minutes=30), 2,
    )  # fmt: skip


def test_flat_keywords_map_into_the_value_objects() -> None:
    """The flat keywords of earlier versions still work: each sets its value object's field."""
    drip = _drip(
        retry_base=timedelta(seconds=7), retry_cap=timedelta(minutes=3), retry_for=timedelta(hours=4),
        max_attempts=6, batch_size=9, lease=timedelta(minutes=2), set_aside_for=timedelta(minutes=5), concurrency=3,
    )  # fmt: skip
    assert drip.retry == RetryPolicy(
        base=timedelta(seconds=7), cap=timedelta(minutes=3), give_up_after=timedelta(hours=4), max_attempts=6
    )
    assert drip.limits == Limits(
        batch_size=9, lease=timedelta(minutes=2), set_aside_for=timedelta(minutes=5), concurrency=3
    )


def test_defaults_are_the_value_objects_defaults() -> None:
    drip = _drip()
    assert (drip.retry, drip.limits) == (RetryPolicy(), Limits())
    assert (drip.batch_size, drip.retry_for) == (500, timedelta(days=5))


def test_setting_a_flat_attribute_replaces_its_value_object() -> None:
    """drip.batch_size = n (as benchmarks do) gives the engine a new Limits, validated."""
    drip = _drip(limits=Limits(batch_size=10, concurrency=2))
    drip.batch_size = 30
    assert drip.limits == Limits(batch_size=30, concurrency=2)
    with pytest.raises(InvalidArgument) as info:
        drip.batch_size = 0
    assert info.value.field == "Limits.batch_size"
    assert drip.limits.batch_size == 30


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"retry": RetryPolicy(), "retry_base": timedelta(seconds=1)}, "retry_base"),
        ({"retry": RetryPolicy(), "max_attempts": 3}, "max_attempts"),
        ({"limits": Limits(), "batch_size": 10}, "batch_size"),
        ({"limits": Limits(), "concurrency": 2}, "concurrency"),
    ],
)
def test_a_setting_given_both_ways_is_an_invalid_argument(settings: dict[str, Any], field: str) -> None:
    """A value object and a flat keyword for the same setting: InvalidArgument naming the keyword."""
    with pytest.raises(InvalidArgument) as info:
        _drip(**settings)
    assert info.value.field == field


def test_a_flat_keyword_of_the_other_value_object_goes_with_it() -> None:
    """limits=... with retry_base=... sets different things: both are taken."""
    drip = _drip(limits=Limits(batch_size=5), retry_base=timedelta(seconds=2))
    assert (drip.batch_size, drip.retry_base) == (5, timedelta(seconds=2))


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        (lambda: _drip(batch_size=0), "batch_size", 0),
        (lambda: _drip(concurrency=0), "concurrency", 0),
        (lambda: _drip(max_attempts=0), "max_attempts", 0),
        (lambda: _drip(lease=timedelta(0)), "lease", timedelta(0)),
        (lambda: _drip(retry_base=timedelta(seconds=-1)), "retry_base", timedelta(seconds=-1)),
        (lambda: _drip(retry_cap="1h"), "retry_cap", "1h"),
        (lambda: _drip(retry_for=5), "retry_for", 5),
        (lambda: _drip(retry="fast"), "retry", "fast"),
        (lambda: _drip(limits=RetryPolicy()), "limits", RetryPolicy()),
        (lambda: Limits(batch_size=100_001), "Limits.batch_size", 100_001),
        (lambda: Limits(set_aside_for=timedelta(days=4000)), "Limits.set_aside_for", timedelta(days=4000)),
        (lambda: Limits(concurrency=True), "Limits.concurrency", True),
        (lambda: RetryPolicy(base=timedelta(0)), "RetryPolicy.base", timedelta(0)),
        (lambda: RetryPolicy(give_up_after=3600), "RetryPolicy.give_up_after", 3600),
        (lambda: RetryPolicy(max_attempts=-2), "RetryPolicy.max_attempts", -2),
        (lambda: _drip(worker_id="a\nb"), "worker_id", "a\nb"),
        (lambda: _drip(id_factory="enr"), "id_factory", "enr"),
    ],
)
def test_every_bad_setting_is_an_invalid_argument_naming_field_and_value(
    make: Callable[[], object], field: str, value: object
) -> None:
    """No bare ValueError or TypeError: InvalidArgument, with the field (as the caller wrote it) and the value."""
    with pytest.raises(InvalidArgument) as info:
        make()
    assert info.value.field == field
    assert info.value.value == value


def test_a_frequency_cap_on_a_store_without_the_capability_is_an_invalid_argument() -> None:
    """It was a plain DripcoreError: now an InvalidArgument naming frequency_cap."""

    class Capless(MemoryStore):
        capabilities = frozenset({"retention"})

    cap = FrequencyCap(per_day=1)
    with pytest.raises(InvalidArgument) as info:
        Drip(store=Capless(), sender=RecordingSender(), contacts=MemoryContacts(), frequency_cap=cap)
    assert (info.value.field, info.value.value) == ("frequency_cap", cap)
