"""Plan a tick's batch: every decision for the claimed enrollments, the frequency cap included, with no I/O.

Theory of operation
-------------------

A tick gathers, then decides, then does. It claims due enrollments and reads
their sequences and contacts; with a :class:`FrequencyCap` it also counts the
emails already queued for each of those contacts in the windows the cap looks
at (:func:`cap_queries` names them). :func:`plan_batch` then makes every
decision for the batch at once, reading no clock and touching no store, and
returns an immutable :class:`Plan`: per enrollment one :class:`Decision`
holding the :class:`~dripcore.scheduler.Advance` to commit (a step to send,
steps skipped, a deferral, a completion or an exit, with its events). The tick
commits, delivers and settles what the plan says, and never climbs back into
the scheduler.

The decision for one enrollment is :func:`~dripcore.scheduler.advance`'s,
unless it sends and the cap is full for that contact:

- :func:`cap_verdict` is the cap's rule. Per day, a contact may get
  ``per_day`` emails in its local calendar day (zone: the contact's, else the
  sequence's fallback, else UTC); per window, ``per_window`` in the rolling
  ``window`` ending now. The count is what the store had queued plus what
  this batch queues before it, in batch order (a message queued now is in
  every window that contains now). Over the cap, the verdict is when it
  reopens: the next local midnight for a full day, ``window / per_window``
  on for a full rolling window, the later of the two when both are full.
- ``over=WAIT``: the enrollment is deferred (:func:`~dripcore.scheduler.defer`)
  to the instant the cap reopens, moved into the step's send window; nothing
  else of its advance is kept (it is redone then).
- ``over=SKIP``: the step is skipped for good (``StepSkipped`` with reason
  ``frequency cap``), and so is every next step that would go now, until
  none is due; the cap's verdict does not change within one enrollment at one
  instant, so no skipped step could have gone.

What stays in the shell: rendering (a template may fail; the engine holds
that step), the rate limiter (it consumes a budget shared between workers)
and the counters written with each commit.

A failure deciding one enrollment (a bug, an enrollment that does not belong
to its sequence) is recorded in its decision's ``error``; the rest of the
batch is planned.

How a tick uses it (the engine's ``store``, ``cap`` and claimed batch)::

    items = [BatchItem(enrollment=e, sequence=sequences[e.sequence_id], contact=contacts[e.contact_id])
             for e in claimed]
    counts = {}
    if cap is not None:
        counts = {q: store.count_messages(q.contact_id, q.start, q.end) for q in cap_queries(items, now, cap)}
    plan = plan_batch(items, now, cap=cap, counts=counts)
    for decision in plan.decisions:
        if decision.error is not None:   # set it aside, report it
            ...
        elif decision.idle:              # nothing changed: release the claim
            ...
        else:                            # render decision.result.send (if any), commit
            ...
    tally.deferred += len(plan.deferred)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, tzinfo
from datetime import time as dtime

import attrs

from .errors import InvalidArgument
from .model import UTC, Contact, Enrollment, Event, Sequence, SkipReason, StepSkipped, to_utc
from .scheduler import Advance, advance, defer, resolve_zone

__all__ = [
    "BatchItem",
    "CapAction",
    "CapQuery",
    "Decision",
    "FrequencyCap",
    "Plan",
    "cap_queries",
    "cap_verdict",
    "plan_batch",
]


# --------------------------------------------------------------------------- the cap


class CapAction(enum.Enum):
    """What happens to a step that would go over a :class:`FrequencyCap`."""

    WAIT = "wait"
    """The enrollment is deferred to when the cap reopens (then into the step's send window)."""
    SKIP = "skip"
    """The step is skipped (reason ``frequency cap``), and so is every next step that would go now."""


@attrs.frozen(kw_only=True)
class FrequencyCap:
    """At most ``per_day`` sequence emails per contact per calendar day in the
    contact's zone, and/or at most ``per_window`` within any rolling ``window``.

    Counted across all sequences. A step over the cap waits (``over=WAIT``:
    until the next local midnight, or for a rolling window a fraction of it,
    then into the step's send window) or is skipped (``over=SKIP``:
    ``StepSkipped(reason="frequency cap")``).

    >>> from datetime import timedelta
    >>> FrequencyCap(per_day=2, per_window=3, window=timedelta(days=7))
    FrequencyCap(per_day=2, per_window=3, window=datetime.timedelta(days=7), over=<CapAction.WAIT: 'wait'>)
    """

    per_day: int | None = None
    """At most this many emails per contact per local calendar day; None: no daily limit."""
    per_window: int | None = None
    """At most this many per contact within any rolling ``window``; None: no rolling limit."""
    window: timedelta | None = None
    """The rolling window's length (up to 3660 days), given exactly when ``per_window`` is."""
    over: CapAction = CapAction.WAIT
    """What a step over the cap does: WAIT until the cap reopens, or SKIP."""

    def __attrs_post_init__(self) -> None:
        for name in ("per_day", "per_window"):
            value = getattr(self, name)
            if value is not None and (value.__class__ is not int or value < 1):
                raise InvalidArgument(f"frequency_cap.{name}", value, "must be a positive integer")
        if (self.per_window is None) is not (self.window is None):
            raise InvalidArgument("frequency_cap.window", self.window, "per_window and window go together")
        if self.window is not None and (
            not isinstance(self.window, timedelta) or not timedelta(0) < self.window <= timedelta(days=3660)
        ):
            raise InvalidArgument("frequency_cap.window", self.window, "must be a timedelta of 0 to 3660 days")
        if self.per_day is None and self.per_window is None:
            raise InvalidArgument("frequency_cap", None, "give per_day and/or per_window")
        if not isinstance(self.over, CapAction):
            raise InvalidArgument("frequency_cap.over", self.over, "must be CapAction.WAIT or CapAction.SKIP")


@attrs.frozen
class CapQuery:
    """One count a cap needs: the emails queued for ``contact_id`` with ``start <= created_at < end``
    (the arguments of :meth:`Store.count_messages <dripcore.ports.Store.count_messages>`)."""

    contact_id: str
    """The contact whose queued emails to count."""
    start: datetime
    """The first instant counted (included)."""
    end: datetime
    """The end of the count (excluded)."""


def _local_day(now: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """The UTC bounds of ``now``'s calendar day in ``zone``: [its first instant, the next day's)."""
    today = now.astimezone(zone).date()
    start = datetime.combine(today, dtime(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(today + timedelta(days=1), dtime(0), tzinfo=zone).astimezone(UTC)
    return start, end


def _queries(
    cap: FrequencyCap, now: datetime, contact_id: str, zone: tzinfo
) -> tuple[CapQuery | None, CapQuery | None]:
    """The cap's day and rolling-window queries for one contact timed in ``zone``
    (None where the cap has no such rule)."""
    day = None
    if cap.per_day is not None:
        day = CapQuery(contact_id, *_local_day(now, zone))
    rolling = None
    if cap.window is not None:
        rolling = CapQuery(contact_id, now - cap.window, now + timedelta(seconds=1))
    return day, rolling


def cap_verdict(
    cap: FrequencyCap, now: datetime, zone: tzinfo | None, *, today: int = 0, window: int = 0
) -> datetime | None:
    """Whether one more email may go to a contact at ``now`` under ``cap``: None if it may,
    else the instant the cap reopens.

    ``today`` is the number of emails already queued for the contact in its
    local calendar day (in ``zone``; None means UTC), ``window`` the number in
    the rolling window ending now. A full day reopens at the next local
    midnight; a full rolling window ``window / per_window`` after ``now``;
    when both are full, the later of the two.

    >>> from datetime import datetime, timezone
    >>> at = datetime(2026, 6, 1, 8, 0, tzinfo=timezone.utc)
    >>> cap_verdict(FrequencyCap(per_day=2), at, None, today=1) is None
    True
    >>> cap_verdict(FrequencyCap(per_day=2), at, None, today=2).isoformat()
    '2026-06-02T00:00:00+00:00'
    """
    now = to_utc(now, "now")
    reopens: datetime | None = None
    if cap.per_day is not None and today >= cap.per_day:
        reopens = _local_day(now, zone or UTC)[1]
    if cap.per_window is not None and cap.window is not None and window >= cap.per_window:
        later = now + cap.window / cap.per_window
        reopens = later if reopens is None else max(reopens, later)
    return reopens


# --------------------------------------------------------------------------- the plan


@attrs.frozen(kw_only=True)
class BatchItem:
    """One claimed enrollment with the sequence and contact the tick read for it."""

    enrollment: Enrollment
    """The claimed enrollment."""
    sequence: Sequence
    """Its sequence, as the tick read it."""
    contact: Contact | None = None
    """Its contact; None when none is at hand (the sequence's zone is then used)."""

    @property
    def contact_id(self) -> str:
        """The id of the contact the enrollment belongs to."""
        return self.enrollment.contact_id


@attrs.frozen(kw_only=True)
class Decision:
    """What the plan does with one claimed enrollment.

    ``result`` is the :class:`~dripcore.scheduler.Advance` to commit (None
    when deciding failed, with ``error`` saying why). ``capped`` is the cap's
    action when the frequency cap changed the decision: WAIT (deferred to
    ``result.enrollment.next_step_due_at``) or SKIP (steps skipped for it,
    their ``StepSkipped`` first in ``result.events``).
    """

    item: BatchItem
    """The claimed enrollment, with its sequence and contact."""
    result: Advance | None = None
    capped: CapAction | None = None
    error: Exception | None = attrs.field(default=None, eq=False)
    """Why deciding failed, or None."""

    @property
    def before(self) -> Enrollment:
        """The enrollment as claimed."""
        return self.item.enrollment

    @property
    def idle(self) -> bool:
        """True when nothing changed: the claim is only to be released."""
        return self.result is not None and self.result.enrollment is self.item.enrollment


@attrs.frozen
class Plan:
    """Every decision for one batch, in the batch's order; read-only views pick them out."""

    decisions: tuple[Decision, ...]
    """One decision per claimed enrollment, in the batch's order."""

    @property
    def changes(self) -> tuple[Decision, ...]:
        """The decisions with something to commit (a send, skips, a deferral, a completion, an exit)."""
        return tuple(d for d in self.decisions if d.result is not None and not d.idle)

    @property
    def sends(self) -> tuple[Decision, ...]:
        """The decisions that send a step now."""
        return tuple(d for d in self.decisions if d.result is not None and d.result.send is not None)

    @property
    def idle(self) -> tuple[Decision, ...]:
        """The enrollments that did not change: their claims are only released."""
        return tuple(d for d in self.decisions if d.idle)

    @property
    def deferred(self) -> tuple[Decision, ...]:
        """The sends the cap held back (``over=WAIT``)."""
        return tuple(d for d in self.decisions if d.capped is CapAction.WAIT)

    @property
    def failed(self) -> tuple[Decision, ...]:
        """The enrollments that could not be decided (``error`` says why): set them aside."""
        return tuple(d for d in self.decisions if d.error is not None)

    @property
    def events(self) -> tuple[Event, ...]:
        """Every lifecycle event of the plan, in order."""
        return tuple(event for d in self.decisions if d.result is not None for event in d.result.events)


def cap_queries(items: Iterable[BatchItem], now: datetime, cap: FrequencyCap) -> tuple[CapQuery, ...]:
    """The counts :func:`plan_batch` needs for ``items`` under ``cap``, each once, in batch order.

    One per contact for the rolling window, one per contact and local day
    (a contact without a zone is timed in each sequence's fallback zone).
    """
    now = to_utc(now, "now")
    seen: dict[CapQuery, None] = {}
    for item in items:
        zone = resolve_zone(item.sequence, item.contact) or UTC
        for query in _queries(cap, now, item.contact_id, zone):
            if query is not None:
                seen.setdefault(query)
    return tuple(seen)


class _Ledger:
    """The cap's running count for one batch: the store's counts plus this batch's sends so far."""

    def __init__(self, cap: FrequencyCap, now: datetime, counts: Mapping[CapQuery, int]) -> None:
        self.cap = cap
        self.now = now
        self.counts = counts
        self.queued: dict[str, int] = {}  # contact id -> emails this batch queued for it

    def verdict(self, item: BatchItem) -> datetime | None:
        zone = resolve_zone(item.sequence, item.contact) or UTC
        day, rolling = _queries(self.cap, self.now, item.contact_id, zone)
        extra = self.queued.get(item.contact_id, 0)
        return cap_verdict(
            self.cap, self.now, zone,
            today=0 if day is None else self.counts[day] + extra,
            window=0 if rolling is None else self.counts[rolling] + extra,
        )  # fmt: skip

    def take(self, item: BatchItem) -> None:
        self.queued[item.contact_id] = self.queued.get(item.contact_id, 0) + 1


def plan_batch(
    items: Iterable[BatchItem],
    now: datetime,
    *,
    cap: FrequencyCap | None = None,
    counts: Mapping[CapQuery, int] | None = None,
) -> Plan:
    """Every decision for a claimed batch as of ``now``; see the module docstring.

    Pure: ``counts`` holds the store's count for each of :func:`cap_queries`
    (needed only with a ``cap``; a missing one raises
    :class:`~dripcore.errors.InvalidArgument`). Items are decided in order,
    and earlier sends count against the cap of later ones. Without a cap each
    decision is exactly ``advance(enrollment, now, sequence=..., contact=...)``.
    """
    items = tuple(items)
    now = to_utc(now, "now")
    ledger = None
    if cap is not None:
        counts = {} if counts is None else counts
        missing = [query for query in cap_queries(items, now, cap) if query not in counts]
        if missing:
            raise InvalidArgument("counts", missing[0], "has no count for this query of cap_queries()")
        ledger = _Ledger(cap, now, counts)
    decisions = []
    for item in items:
        try:
            decisions.append(_decide(item, now, ledger))
        except Exception as exc:  # one enrollment's failure is its own: the rest of the batch goes on
            decisions.append(Decision(item=item, error=exc))
    return Plan(tuple(decisions))


def _decide(item: BatchItem, now: datetime, ledger: _Ledger | None) -> Decision:
    enrollment, sequence, contact = item.enrollment, item.sequence, item.contact
    result = advance(enrollment, now, sequence=sequence, contact=contact)
    if result.send is None or ledger is None:
        return Decision(item=item, result=result)
    reopens = ledger.verdict(item)
    if reopens is None:
        ledger.take(item)
        return Decision(item=item, result=result)
    if ledger.cap.over is CapAction.WAIT:
        deferred = defer(enrollment, reopens, sequence=sequence, contact=contact)
        return Decision(item=item, result=deferred, capped=CapAction.WAIT)
    return Decision(item=item, result=_skip_over_cap(item, now, result, ledger), capped=CapAction.SKIP)


def _skip_over_cap(item: BatchItem, now: datetime, first: Advance, ledger: _Ledger) -> Advance:
    """SKIP: pass over every step that would go now, until one may go or none is due."""
    enrollment, sequence, contact = item.enrollment, item.sequence, item.contact
    current, advanced = enrollment, first
    capped: list[Event] = []
    while advanced.send is not None and ledger.verdict(item) is not None:
        position = advanced.send.position
        capped.append(
            StepSkipped(
                enrollment_id=enrollment.id, sequence_id=sequence.id, contact_id=enrollment.contact_id, at=now,
                position=position, reason=SkipReason.FREQUENCY_CAP,
            )
        )  # fmt: skip
        current = attrs.evolve(current, skipped=current.skipped | {position})
        advanced = advance(current, now, sequence=sequence, contact=contact)
    if advanced.send is not None:
        ledger.take(item)
    return attrs.evolve(advanced, events=(*capped, *advanced.events))
