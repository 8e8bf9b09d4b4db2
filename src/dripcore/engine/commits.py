"""Writing enrollment transitions through the store: one, all live ones page by page, or a batch, failures isolated.

The counter increments of a change are decided here too (names from
:class:`~dripcore.ports.CounterName`), so every write counts the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import attrs

from .. import scheduler
from ..errors import ConcurrencyConflict, RecordRejected, StoreError, UnreadableRecord
from ..model import Enrollment, EnrollmentStatus, Event, StepSkipped
from ..ports import Change, Counter, CounterName, OutboxMessage
from .context import Context, log
from .text import describe, safe_text

__all__ = [
    "DOWN_AFTER",
    "RECORD_ERRORS",
    "apply_one",
    "change_of",
    "commit_all",
    "commit_isolated",
    "live",
    "release_claims",
    "status_counters",
]

LIVE = (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)
PAGE = 500
# Look-ups (or commits) failing in a row, with none succeeding, that make a port "down" rather
# than a record "bad": the tick then raises, and run() tries again later.
DOWN_AFTER = 3
# Errors of one record, not of the store: the record is set aside, the store is fine.
RECORD_ERRORS = (UnreadableRecord, RecordRejected)

_RECIPIENTS = CounterName.RECIPIENTS.value
_STATUS = {status: CounterName.STATUS.of(status) for status in EnrollmentStatus}


def status_counters(sequence_id: str, before: Enrollment | None, after: Enrollment) -> list[Counter]:
    """The sequence-level counter increments of a status change."""
    if before is not None and before.status is after.status:
        return []
    counters: list[Counter] = []
    if before is None:
        counters.append((sequence_id, 0, _RECIPIENTS, 1))
    else:
        counters.append((sequence_id, 0, _STATUS[before.status], -1))
    counters.append((sequence_id, 0, _STATUS[after.status], 1))
    if after.status is EnrollmentStatus.EXITED and after.exit_reason is not None:
        counters.append((sequence_id, 0, CounterName.EXITED.of(after.exit_reason), 1))
    return counters


def _event_counters(events: Iterable[Event]) -> list[Counter]:
    """The per-step counter increments of a transition's events (skips, by reason)."""
    return [
        (e.sequence_id, e.position, CounterName.SKIPPED.of(e.reason), 1) for e in events if isinstance(e, StepSkipped)
    ]


def change_of(
    before: Enrollment | None,
    result: scheduler.Advance,
    outbox: tuple[OutboxMessage, ...] = (),
    counters: tuple[Counter, ...] = (),
) -> Change:
    """The store change of a transition: its new state, outbox messages, events and counters."""
    after = result.enrollment
    events = result.events
    if before is None or before.status is not after.status or events:
        counters = (*status_counters(after.sequence_id, before, after), *_event_counters(events), *counters)
    return Change(enrollment=after, outbox=outbox, events=events, counters=counters)


def apply_one(ctx: Context, enrollment_id: str, transition: Callable[[Enrollment], scheduler.Advance]) -> Enrollment:
    """Read, transition, commit one enrollment; retry on a concurrent change."""
    for _ in range(5):
        before = ctx.enrollment(enrollment_id)
        result = transition(before)
        if result.enrollment is before:
            return before
        if not ctx.store.commit([change_of(before, result)]):
            ctx.publish(result.events)
            ctx.wake.set()
            return attrs.evolve(result.enrollment, version=before.version + 1)
    raise ConcurrencyConflict(kind="enrollment", id=enrollment_id, expected=-1, actual=None)


def live(ctx: Context, *, sequence_id: str | None = None, contact_id: str | None = None) -> Iterator[list[Enrollment]]:
    """Pages of ACTIVE and PAUSED enrollments, keyset-paginated so changes can't skip rows."""
    after: str | None = None
    while True:
        page = ctx.store.find_enrollments(
            sequence_id=sequence_id, contact_id=contact_id, statuses=LIVE, limit=PAGE, after=after
        )
        if not page:
            return
        yield page
        after = page[-1].id


def commit_all(
    ctx: Context, transitions: Callable[[Enrollment], scheduler.Advance], pages: Iterator[list[Enrollment]]
) -> int:
    """Apply a transition to every enrollment of ``pages`` in batched commits; returns how many changed."""
    changed = 0
    for page in pages:
        changes: list[Change] = []
        for before in page:
            result = transitions(before)
            if result.enrollment is not before:
                changes.append(change_of(before, result))
        refused = set(ctx.store.commit(changes)) if changes else set()
        events = [ev for c in changes if c.enrollment.id not in refused for ev in c.events]
        changed += len(changes) - len(refused)
        for enrollment_id in refused:  # changed under us: redo it on a fresh read
            apply_one(ctx, enrollment_id, transitions)
            changed += 1
        ctx.publish(events)
    return changed


def release_claims(ctx: Context, enrollment_ids: list[str], set_aside: list[str], now: datetime) -> None:
    """Give a batch that can't go on back, before raising: the records set aside wait,
    the others may be claimed again at once. Best effort: the store may be what failed."""
    try:
        aside = set(set_aside)
        ctx.store.release([i for i in enrollment_ids if i not in aside], owner=ctx.worker_id)
        if aside:
            ctx.store.release(aside, owner=ctx.worker_id, until=now + ctx.limits.set_aside_for)
    except Exception:
        log.warning("could not release the batch's claims; they end with their lease", exc_info=True)


def commit_isolated(ctx: Context, changes: list[Change]) -> tuple[set[str], dict[str, str]]:
    """Commit ``changes``; return the ids refused for a stale version and the ids the
    store could not take, with why.

    Records the store rejects (:class:`~dripcore.errors.RecordRejected`) are
    taken out and the rest committed again. Any other exception that is not a
    :class:`~dripcore.errors.StoreError` (a store meeting data it can't encode)
    is narrowed down by halves to the changes that cause it. A ``StoreError``
    is the store failing for everyone, and raises.
    """
    rejected: dict[str, str] = {}
    committed = False
    failures: list[Exception] = []

    def attempt(batch: list[Change]) -> set[str]:
        nonlocal committed
        while batch:
            try:
                refused = set(ctx.store.commit(batch, owner=ctx.worker_id))
                committed = True
                return refused
            except RecordRejected as exc:
                named = {i: why for i, why in exc.reasons.items() if i not in rejected}
                ids = {c.enrollment.id for c in batch}
                if not named.keys() & ids:
                    return split(batch, exc)
                rejected.update((i, safe_text(why)) for i, why in named.items() if i in ids)
                batch = [c for c in batch if c.enrollment.id not in rejected]
            except StoreError:
                raise
            except Exception as exc:
                return split(batch, exc)
        return set()

    def split(batch: list[Change], exc: Exception) -> set[str]:
        if len(batch) == 1:
            rejected[batch[0].enrollment.id] = describe(exc)
            failures.append(exc)
            if not committed and len(failures) >= DOWN_AFTER:
                raise exc  # one record after another fails and nothing goes in: the store is down
            return set()
        middle = len(batch) // 2
        return attempt(batch[:middle]) | attempt(batch[middle:])

    refused = attempt(changes)
    if rejected:
        log.warning("the store could not take %d enrollment(s); set aside: %s", len(rejected), rejected)
    return refused, rejected
