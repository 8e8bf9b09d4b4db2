"""The pure core of dripcore: every transition of an enrollment, with no I/O.

Theory of operation
-------------------

An :class:`~dripcore.model.Enrollment` is one contact's way through one
:class:`~dripcore.model.Sequence`. It remembers the position of the last step
sent (``last_step_sent``, 0 before the first), when that was
(``last_step_sent_at``), and when it next needs attention
(``next_step_due_at``). Nothing here reads a clock: the caller passes ``now``.

:func:`advance` is the heart. Given an enrollment and ``now`` it applies these
rules, in order, and returns an :class:`Advance` (the new enrollment, the step
to send now or None, and the lifecycle events):

1. A terminal enrollment (COMPLETED, EXITED) comes back unchanged.
2. A suppressed contact (unsubscribed, bounced, complained) exits it, with
   that reason.
3. An ARCHIVED sequence exits it (reason ARCHIVED).
4. A sequence that is not ACTIVE, or a PAUSED enrollment, does not move.
5. Before ``next_step_due_at`` nothing moves: ``advance`` is the identity.
6. Otherwise the candidate is the first *active* step after
   ``last_step_sent`` (inactive steps are passed over and their delays do not
   count). If it has a condition that is false, it is skipped
   (``StepSkipped``) and the next active step becomes the candidate, due at
   the last send + its own delay; if that is already due it is considered in
   the same call. The first candidate that may go is returned in ``send``.
   Sending a step with a condition also passes over the *else branch*: the
   steps right after it with the same delay and the opposite condition.
7. ``next_step_due_at`` becomes the send time + the next active step's delay.
   After the last active step it becomes the send time itself: the next call
   finds no active step left and COMPLETES the enrollment. (The engine calls
   it again only once the last email was delivered: an enrollment whose email
   is pending is not claimed. So COMPLETED means the last email went, and its
   ``Completed`` event follows the last ``StepSent``.) A call that sends
   nothing and finds no active step left completes it at once.

So at most one step goes per call, and the next due time counts from the
actual send: an enrollment that was stuck for a week (downtime, a paused
sequence) catches up one step at a time with its delays intact. Stale send
times are bumped, never flooded. Every delay counts from the last *sent* step
(or from enrollment), never from a skipped one.

Delays in exact units (seconds, minutes, hours) add elapsed time. Calendar
units (days, weeks) keep the local wall-clock time in the contact's zone; the
zone is the contact's, else the sequence's fallback, else UTC. A local time
that does not exist (the hour skipped when clocks spring forward) moves
forward by the length of the gap; a local time that occurs twice (clocks
falling back) means its first occurrence. This is :pep:`495`'s ``fold=0``.

Every status an enrollment gets is read from :data:`TRANSITIONS`, a table of
status x action in the manner of h11 (:func:`advance`'s sends, skips,
deferrals and completions included): an action missing from a status's row is
illegal and raises :class:`~dripcore.errors.InvalidTransition` naming the
enrollment, its status and the action.

A sequence has its own, smaller machine beside it,
:data:`SEQUENCE_TRANSITIONS` (DRAFT, ACTIVE, PAUSED, ARCHIVED x
:class:`SequenceAction`). The engine asks :func:`sequence_target` for the
status an operation leads to; an illegal one raises
:class:`~dripcore.errors.SequenceStateError` naming the sequence, its status
and the action.
"""

from __future__ import annotations

import enum
import zoneinfo
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, tzinfo
from types import MappingProxyType
from typing import Any

import attrs

from .errors import (
    ContactSuppressed,
    DripcoreError,
    InvalidTransition,
    SequenceStateError,
)
from .model import (
    MAX_INSTANT,
    MIN_INSTANT,
    UTC,
    Cancelled,
    Completed,
    Contact,
    Delay,
    Enrollment,
    EnrollmentStatus,
    Event,
    ExitReason,
    PausePolicy,
    SendWindow,
    Sequence,
    SequenceStatus,
    SkipReason,
    Step,
    StepSkipped,
    Subscribed,
    Trigger,
    TriggerEvent,
    WaitUntil,
    WindowAction,
    normalize_trigger_value,
    to_utc,
    trusted_enrollment,
)

__all__ = [
    "Action",
    "Advance",
    "PlannedStep",
    "SEQUENCE_STARTS",
    "SEQUENCE_TRANSITIONS",
    "SequenceAction",
    "TRANSITIONS",
    "add_delay",
    "advance",
    "anniversary_date",
    "defer",
    "enroll",
    "exit",
    "exits_on",
    "is_anniversary",
    "matches",
    "next_opening",
    "pause",
    "preview",
    "replan",
    "resolve_zone",
    "resume",
    "schedule",
    "sequence_target",
    "window_of",
]


class Action(enum.Enum):
    """What can happen to an enrollment; the columns of :data:`TRANSITIONS`."""

    SEND = "send"
    """The due step goes out: it is committed to the outbox and the next one planned."""
    SKIP = "skip"
    """The due step is passed over (inactive, its condition unmet, or expired) and the next one planned."""
    COMPLETE = "complete"
    """The last step is done: the enrollment ends as COMPLETED."""
    PAUSE = "pause"
    """The enrollment stops where it is until resumed."""
    RESUME = "resume"
    """A paused enrollment goes on, its due time moved by the pause policy."""
    EXIT = "exit"
    """The enrollment ends early, with an exit reason."""
    REPLAN = "replan"
    """The sequence was edited: the next due time is planned afresh from the new steps."""
    DEFER = "defer"
    """A due send is held back (a send window, the rate limiter or the frequency cap) to a later time."""


_A = EnrollmentStatus.ACTIVE
_P = EnrollmentStatus.PAUSED
_C = EnrollmentStatus.COMPLETED
_X = EnrollmentStatus.EXITED

#: status -> action -> the status it leads to. A missing entry is illegal.
#: Enrollments start ACTIVE (:func:`enroll`). The docs' state diagram is
#: generated from this table.
TRANSITIONS: Mapping[EnrollmentStatus, Mapping[Action, EnrollmentStatus]] = MappingProxyType(
    {
        _A: MappingProxyType(
            {
                Action.SEND: _A,
                Action.SKIP: _A,
                Action.COMPLETE: _C,
                Action.PAUSE: _P,
                Action.EXIT: _X,
                Action.REPLAN: _A,
                Action.DEFER: _A,
            }
        ),
        _P: MappingProxyType({Action.RESUME: _A, Action.EXIT: _X, Action.REPLAN: _P}),
        _C: MappingProxyType({}),
        _X: MappingProxyType({}),
    }
)
"""The enrollment state machine: status -> action -> the status it leads to.

A missing entry is an illegal transition (:class:`~dripcore.errors.InvalidTransition`).
COMPLETED and EXITED have empty rows: terminal states are absorbing.

>>> TRANSITIONS[EnrollmentStatus.PAUSED][Action.RESUME]
<EnrollmentStatus.ACTIVE: 'active'>
>>> Action.SEND in TRANSITIONS[EnrollmentStatus.COMPLETED]
False
"""


class SequenceAction(enum.Enum):
    """What can happen to a sequence; the columns of :data:`SEQUENCE_TRANSITIONS`."""

    CREATE = "create"
    """A new sequence is stored (in one of SEQUENCE_STARTS)."""
    EDIT = "edit"
    """A new definition is saved over a stored one, keeping its status."""
    ENROLL = "enroll"
    """A contact enters the sequence."""
    ACTIVATE = "activate"
    """A draft goes live (a paused one resumes; an active one stays as it is)."""
    PAUSE = "pause"
    """All sending stops, and new triggers enroll nobody, until it is resumed."""
    RESUME = "resume"
    """A paused sequence goes live again."""
    ARCHIVE = "archive"
    """The sequence ends for good: its live enrollments exit."""


_DRAFT = SequenceStatus.DRAFT
_LIVE = SequenceStatus.ACTIVE
_HELD = SequenceStatus.PAUSED
_ARCHIVED = SequenceStatus.ARCHIVED

SEQUENCE_STARTS: frozenset[SequenceStatus] = frozenset({_DRAFT, _LIVE})
"""The statuses a new sequence may be created in (:attr:`SequenceAction.CREATE`)."""

SEQUENCE_TRANSITIONS: Mapping[SequenceStatus, Mapping[SequenceAction, SequenceStatus]] = MappingProxyType(
    {
        _DRAFT: MappingProxyType(
            {SequenceAction.EDIT: _DRAFT, SequenceAction.ACTIVATE: _LIVE, SequenceAction.ARCHIVE: _ARCHIVED}
        ),
        _LIVE: MappingProxyType(
            {
                SequenceAction.EDIT: _LIVE,
                SequenceAction.ACTIVATE: _LIVE,
                SequenceAction.ENROLL: _LIVE,
                SequenceAction.PAUSE: _HELD,
                SequenceAction.ARCHIVE: _ARCHIVED,
            }
        ),
        _HELD: MappingProxyType(
            {
                SequenceAction.EDIT: _HELD,
                SequenceAction.ACTIVATE: _LIVE,
                SequenceAction.RESUME: _LIVE,
                SequenceAction.ARCHIVE: _ARCHIVED,
            }
        ),
        _ARCHIVED: MappingProxyType({SequenceAction.ARCHIVE: _ARCHIVED}),
    }
)
"""The sequence state machine: status -> action -> the status it leads to.

A missing entry is an illegal operation (:class:`~dripcore.errors.SequenceStateError`,
raised by :func:`sequence_target`). Only an ACTIVE sequence takes new
enrollments (ENROLL) and sends; ACTIVATE on a PAUSED sequence resumes it, and
on an ACTIVE one changes nothing (start-up code may activate every time); an
ARCHIVED sequence is never edited or revived, and archiving it again is
allowed (it lets an interrupted archive finish exiting its enrollments).
New sequences start in one of :data:`SEQUENCE_STARTS`. The docs' sequence
state diagram is generated from this table.

>>> SEQUENCE_TRANSITIONS[SequenceStatus.PAUSED][SequenceAction.RESUME]
<SequenceStatus.ACTIVE: 'active'>
>>> SequenceAction.EDIT in SEQUENCE_TRANSITIONS[SequenceStatus.ARCHIVED]
False
"""

#: How an action reads in an error ("can't enroll into sequence 'x' ...").
_SEQUENCE_VERBS: Mapping[SequenceAction, str] = MappingProxyType({SequenceAction.ENROLL: "enroll into"})

#: Why an action is refused, where the status alone does not say it.
_SEQUENCE_HINTS: Mapping[SequenceAction, str] = MappingProxyType(
    {
        SequenceAction.CREATE: "a new sequence starts as draft or active",
        SequenceAction.ENROLL: "only an active sequence takes new enrollments",
    }
)


def sequence_target(sequence: Sequence, action: SequenceAction) -> SequenceStatus:
    """The status ``action`` leads ``sequence`` to, read from :data:`SEQUENCE_TRANSITIONS`.

    For :attr:`SequenceAction.CREATE` ``sequence`` is the new sequence, and
    its own status must be one of :data:`SEQUENCE_STARTS`. An illegal action
    raises :class:`~dripcore.errors.SequenceStateError` naming the sequence,
    its status and the action.

    >>> from dripcore import Sequence
    >>> draft = Sequence(id="welcome", name="Welcome")
    >>> sequence_target(draft, SequenceAction.ACTIVATE)
    <SequenceStatus.ACTIVE: 'active'>
    >>> sequence_target(draft, SequenceAction.PAUSE)
    Traceback (most recent call last):
    ...
    dripcore.errors.SequenceStateError: can't pause sequence 'welcome' when status=draft
    """
    status = sequence.status
    if action is SequenceAction.CREATE:
        target: SequenceStatus | None = status if status in SEQUENCE_STARTS else None
    else:
        target = SEQUENCE_TRANSITIONS[status].get(action)
    if target is None:
        raise SequenceStateError(
            sequence_id=sequence.id,
            status=status.value,
            action=_SEQUENCE_VERBS.get(action, action.value),
            hint=_SEQUENCE_HINTS.get(action, ""),
        )
    return target


# Read from the table once (it is immutable). Tuples, not sets: ``in`` compares by identity
# first, and an Enum's hash is computed in Python, which shows on advance's hot path.
#: The statuses with an empty row: nothing ever changes them again.
_ABSORBING = tuple(status for status, row in TRANSITIONS.items() if not row)
#: The statuses that may send a step (a PAUSED enrollment waits), and where SEND leads each.
_SENDING = tuple(status for status, row in TRANSITIONS.items() if Action.SEND in row)
_SEND_TARGETS = tuple(TRANSITIONS[status][Action.SEND] for status in _SENDING)


def _target(enrollment: Enrollment, action: Action) -> EnrollmentStatus:
    """The status ``action`` leads ``enrollment`` to; :class:`~dripcore.errors.InvalidTransition` if illegal."""
    try:
        return TRANSITIONS[enrollment.status][action]
    except KeyError:
        raise InvalidTransition(
            enrollment_id=enrollment.id, status=enrollment.status.value, action=action.value
        ) from None


@attrs.frozen
class Advance:
    """The result of a transition: the new ``enrollment``, the ``send`` (a step to
    send now, or None) and the lifecycle ``events`` it produced, in order.

    ``Advance.enrollment is`` the input enrollment when nothing changed.
    """

    enrollment: Enrollment
    """The enrollment after the transition (the input itself when nothing changed)."""
    send: Step | None = None
    """The step to send now, or None."""
    events: tuple[Event, ...] = ()
    """The lifecycle events the transition produced, in order."""


_NO_EVENTS: tuple[Event, ...] = ()


def _now(now: datetime) -> datetime:
    if now.__class__ is datetime and now.tzinfo is UTC and MIN_INSTANT <= now < MAX_INSTANT:
        return now
    return to_utc(now, "now")


# --------------------------------------------------------------------------- time


def resolve_zone(sequence: Sequence, contact: Contact | None) -> zoneinfo.ZoneInfo | None:
    """The zone a contact's steps are timed in: the contact's, else the sequence's
    fallback, else UTC (returned as None)."""
    if contact is not None:
        own = contact.zone
        if own is not None:
            return own
    return sequence.fallback_zone


def _localize(wall: datetime, zone: tzinfo) -> datetime:
    """A naive local wall time in ``zone`` as a UTC instant (fold=0: gaps move forward,
    ambiguous times take their first occurrence)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def add_delay(instant: datetime, delay: Delay | WaitUntil, zone: zoneinfo.ZoneInfo | None) -> datetime:
    """``instant`` plus ``delay``, as a UTC datetime.

    Exact units add elapsed time. Calendar units (days, weeks) add days to the
    local date in ``zone`` and keep the local wall-clock time; a local time in
    a spring-forward gap moves forward by the gap, an ambiguous one resolves
    to its first occurrence. Months do the same on the local date moved by
    whole months with pendulum's arithmetic: the same day of the month, or the
    month's last day when it is shorter (January 31 + 1 month is February 28,
    or 29). A :class:`~dripcore.model.WaitUntil` goes to its next local weekday
    and/or time of day strictly after ``instant``. ``zone=None`` means UTC.
    """
    if isinstance(delay, WaitUntil):
        return _wait_until(instant, delay, zone or UTC)
    if not delay.is_calendar or delay.amount == 0:
        # (A zero calendar delay must not re-resolve the local time: from the second
        # occurrence of an ambiguous hour, fold=0 would land an hour in the past.)
        return instant + delay.nominal
    months = delay.calendar_months
    if months:
        return _add_months(instant, months, zone or UTC)
    if zone is None:
        return instant + delay.nominal
    local = instant.astimezone(zone)
    return _localize(local.replace(tzinfo=None) + timedelta(days=delay.calendar_days), zone)


def _add_months(instant: datetime, months: int, zone: tzinfo) -> datetime:
    """``months`` calendar months after ``instant`` at the same local wall-clock time in ``zone``."""
    import pendulum  # here, not at the top: only month delays pay for importing pendulum

    local = instant.astimezone(zone)
    day = pendulum.Date(local.year, local.month, local.day).add(months=months)
    return _localize(datetime.combine(day, local.time()), zone)


def _wait_until(instant: datetime, wait: WaitUntil, zone: tzinfo) -> datetime:
    local = instant.astimezone(zone)
    clock = wait.at if wait.at is not None else local.time().replace(tzinfo=None, fold=0)
    first = local.date() + timedelta(days=wait.days)
    for i in range(15):
        day = first + timedelta(days=i)
        if wait.weekday is not None and day.weekday() != wait.weekday:
            continue
        candidate = _localize(datetime.combine(day, clock), zone)
        if candidate > instant:
            return candidate
    raise AssertionError("unreachable: a weekday recurs within 15 days")  # pragma: no cover


def next_opening(instant: datetime, window: SendWindow, zone: zoneinfo.ZoneInfo | None) -> datetime:
    """The earliest instant at or after ``instant`` that is inside ``window`` in ``zone``.

    Windows follow local wall-clock time; on the day a window's opening time
    does not exist (clocks spring forward past it), the window opens when the
    clocks do.
    """
    tz: tzinfo = zone or UTC
    local = instant.astimezone(tz)
    if window.contains(local):
        return instant
    opens_at = window.start if window.start is not None else time(0)
    for i in range(15):
        day = local.date() + timedelta(days=i)
        if day.weekday() not in window.days:
            continue
        wall = datetime.combine(day, opens_at)
        candidate = _localize(wall, tz)
        if candidate.astimezone(tz).replace(tzinfo=None) != wall:
            candidate = _end_of_gap(candidate - timedelta(hours=3), candidate, wall, tz)
        if candidate >= instant and window.contains(candidate.astimezone(tz)):
            return candidate
    raise AssertionError(f"window {window!r} never opens")  # pragma: no cover - validated at construction


def _end_of_gap(low: datetime, high: datetime, wall: datetime, tz: tzinfo) -> datetime:
    """The first instant in (low, high] whose local wall time is at or after ``wall``
    (the moment clocks jump over a nonexistent ``wall``), to the microsecond."""
    while high - low > timedelta(microseconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high


def window_of(step: Step, sequence: Sequence) -> SendWindow | None:
    """The window a step obeys: its own, else its sequence's."""
    return step.window if step.window is not None else sequence.window


def schedule(base: datetime, step: Step, sequence: Sequence, zone: zoneinfo.ZoneInfo | None) -> datetime:
    """When ``step`` falls due after ``base``: its delay, then moved into its window."""
    due = add_delay(base, step.delay, zone)
    window = window_of(step, sequence)
    if window is not None and window.outside is WindowAction.MOVE:
        due = next_opening(due, window, zone)
    return due


# --------------------------------------------------------------------------- advance


def _next_step(sequence: Sequence, after: int, skipped: frozenset[int]) -> Step | None:
    step = sequence.next_active_step(after)
    while step is not None and step.position in skipped:
        step = sequence.next_active_step(step.position)
    return step


def _inactive_between(
    enrollment: Enrollment, sequence: Sequence, low: int, high: int | None, at: datetime
) -> list[Event]:
    """StepSkipped(INACTIVE) for the inactive steps strictly between two positions."""
    events: list[Event] = []
    for step in sequence.steps:
        if step.position <= low:
            continue
        if high is not None and step.position >= high:
            break
        if not step.active and step.position not in enrollment.skipped:
            events.append(
                StepSkipped(
                    enrollment_id=enrollment.id,
                    sequence_id=enrollment.sequence_id,
                    contact_id=enrollment.contact_id,
                    at=at,
                    position=step.position,
                    reason=SkipReason.INACTIVE,
                )
            )
    return events


def advance(
    enrollment: Enrollment,
    now: datetime,
    *,
    sequence: Sequence,
    contact: Contact | None = None,
) -> Advance:
    """Move ``enrollment`` along ``sequence`` as of ``now``; see the module docstring.

    Pure and deterministic: the same inputs always give the same result, and
    the input is never modified. At most one step is returned in ``send``.

    >>> from datetime import datetime, timezone
    >>> from dripcore import Delay, Sequence, SequenceStatus, Step
    >>> seq = Sequence(id="welcome", name="Welcome", status=SequenceStatus.ACTIVE, steps=(
    ...     Step(position=1, subject="Hi", text="Welcome!"),
    ...     Step(position=2, delay=Delay.hours(24), subject="Day 2", text="Tips"),
    ... ))
    >>> t0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    >>> first = enroll(seq, None, t0, enrollment_id="e1", contact_id="c1").enrollment
    >>> step1 = advance(first, t0, sequence=seq)
    >>> step1.send.position, step1.enrollment.next_step_due_at.isoformat()
    (1, '2026-01-06T09:00:00+00:00')
    """
    status = enrollment.status
    if status in _ABSORBING:
        return Advance(enrollment)  # rule 1: terminal is absorbing
    now = _now(now)
    if enrollment.sequence_id != sequence.id:
        raise DripcoreError(
            f"enrollment {enrollment.id!r} belongs to sequence {enrollment.sequence_id!r}, not {sequence.id!r}"
        )
    if contact is not None:
        if contact.id != enrollment.contact_id:
            raise DripcoreError(
                f"enrollment {enrollment.id!r} belongs to contact {enrollment.contact_id!r}, not {contact.id!r}"
            )
        if contact.suppressed is not None:  # rule 2
            return _exit(enrollment, contact.suppressed, now)
    seq_status = sequence.status
    if seq_status is SequenceStatus.ARCHIVED:  # rule 3
        return _exit(enrollment, ExitReason.ARCHIVED, now)
    if seq_status is not SequenceStatus.ACTIVE or status not in _SENDING:  # rule 4
        return Advance(enrollment)
    due = enrollment.next_step_due_at
    assert due is not None  # guaranteed for ACTIVE by Enrollment's validation
    if now < due:  # rule 5
        return Advance(enrollment)
    return _due(enrollment, now, sequence, contact, due)


def _due(enrollment: Enrollment, now: datetime, sequence: Sequence, contact: Contact | None, due: datetime) -> Advance:
    """Rules 6 and 7, for an ACTIVE enrollment whose due time has come.

    The candidates are the active steps after the last send, in order. Each
    one goes now (:func:`_send`), waits (:func:`_wait`: outside a MOVE window,
    or its own delay not up yet after a skipped one) or is skipped for good,
    and then the next one is considered. No candidate left: the enrollment
    completes (:func:`_complete`).
    """
    skipped = enrollment.skipped
    events: list[Event] = []
    step = _next_step(sequence, enrollment.last_step_sent, skipped)
    step_due = due  # when the candidate fell due
    while step is not None:
        verdict = _verdict(step, step_due, now, enrollment, sequence, contact)
        if verdict is None:
            return _send(enrollment, step, now, sequence, contact, skipped, events)
        if isinstance(verdict, datetime):
            return _wait(enrollment, verdict, skipped, events)
        skipped = skipped | {step.position}  # rule 6: skipped for good
        events.append(_skip_event(enrollment, step.position, verdict, now))
        step = _next_step(sequence, enrollment.last_step_sent, skipped)
        if step is not None:
            # The next candidate's delay counts from the last send, never from the skipped step,
            # and it is never due earlier than the step it replaces.
            zone = resolve_zone(sequence, contact)
            step_due = max(schedule(enrollment.reference_time, step, sequence, zone), due)
            if step_due > now:
                return _wait(enrollment, step_due, skipped, events)
    return _complete(enrollment, now, sequence, skipped, events)


def _verdict(
    step: Step, step_due: datetime, now: datetime, enrollment: Enrollment, sequence: Sequence,
    contact: Contact | None,
) -> SkipReason | datetime | None:  # fmt: skip
    """Whether the candidate ``step``, due since ``step_due``, may go at ``now``: None if it
    may, the reason it is skipped for good, or (outside a MOVE window) when to look again."""
    expires = step.expires_after
    if expires is not None and now - step_due > expires.nominal:
        return SkipReason.EXPIRED
    window = step.window if step.window is not None else sequence.window  # window_of, inlined: the hot path
    if window is not None:
        zone = resolve_zone(sequence, contact)
        if not window.contains(now.astimezone(zone or UTC)):
            if window.outside is WindowAction.SKIP:
                return SkipReason.WINDOW
            return next_opening(now, window, zone)  # too late for today's window: its next opening
    condition = step.condition
    if condition is not None and not condition.holds(enrollment):
        return SkipReason.CONDITION
    return None


def _send(
    enrollment: Enrollment, step: Step, now: datetime, sequence: Sequence, contact: Contact | None,
    skipped: frozenset[int], events: list[Event],
) -> Advance:  # fmt: skip
    """Rule 7: ``step`` goes now (SEND), and the next active step is planned from now."""
    status = _SEND_TARGETS[_SENDING.index(enrollment.status)]  # SEND is legal here: advance checked (rule 4)
    last, position = enrollment.last_step_sent, step.position
    if sequence.has_inactive_between(last, position):
        events.extend(_inactive_between(enrollment, sequence, last, position, now))
    if step.condition is not None:
        skipped, else_events = _close_else_branch(enrollment, sequence, step, skipped, now)
        events.extend(else_events)
    following = _next_step(sequence, position, skipped)
    if following is None:
        # The last step goes: the enrollment stays ACTIVE, due at once, and the next call
        # completes it. A store does not claim an enrollment whose email is still pending,
        # so COMPLETED comes once the last email was delivered, and after its StepSent.
        next_due = now
    elif following.delay.is_calendar or following.window is not None or sequence.window is not None:
        next_due = schedule(now, following, sequence, resolve_zone(sequence, contact))
    else:
        next_due = now + following.delay.nominal  # the hot path: no zone arithmetic
    sent = _sent(enrollment, position, now, next_due, skipped)
    if status is not enrollment.status:  # (the fast constructor keeps the status; the table may not)
        sent = attrs.evolve(sent, status=status)
    return Advance(sent, step, tuple(events))


def _wait(enrollment: Enrollment, until: datetime, skipped: frozenset[int], events: list[Event]) -> Advance:
    """Nothing goes now; the next candidate is due ``until``. After skipping steps that is a
    SKIP, else (waiting for a window to open) a DEFER."""
    status = _target(enrollment, Action.SKIP if events else Action.DEFER)
    waiting = attrs.evolve(enrollment, status=status, next_step_due_at=until, skipped=skipped)
    return Advance(waiting, None, tuple(events))


def _complete(
    enrollment: Enrollment, now: datetime, sequence: Sequence, skipped: frozenset[int], events: list[Event]
) -> Advance:
    """No active step is left (COMPLETE): a ``StepSkipped`` for each inactive step passed over, then ``Completed``."""
    status = _target(enrollment, Action.COMPLETE)
    last = enrollment.last_step_sent
    if sequence.has_inactive_between(last, None):
        events.extend(_inactive_between(enrollment, sequence, last, None, now))
    events.append(_completed_event(enrollment, now))
    completed = attrs.evolve(enrollment, status=status, next_step_due_at=None, ended_at=now, skipped=skipped)
    return Advance(completed, None, tuple(events))


def _sent(enrollment: Enrollment, position: int, now: datetime, due: datetime, skipped: frozenset[int]) -> Enrollment:
    """``attrs.evolve`` for the hot path (a step sent, more to come), spelled out: the unchanged
    fields were validated when ``enrollment`` was built; of the new ones, the instants are
    converted (``to_utc``: an instant past the accepted range raises) and ``skipped`` is a
    frozenset of positions already."""
    e = enrollment
    return trusted_enrollment(
        id=e.id,
        sequence_id=e.sequence_id,
        contact_id=e.contact_id,
        status=e.status,
        enrolled_at=e.enrolled_at,
        next_step_due_at=to_utc(due, "enrollment.next_step_due_at"),
        last_step_sent=position,
        last_step_sent_at=to_utc(now, "enrollment.last_step_sent_at"),
        exit_reason=e.exit_reason,
        paused_at=e.paused_at,
        ended_at=e.ended_at,
        variables=e.variables,
        opened=e.opened,
        clicked=e.clicked,
        skipped=skipped,
        key=e.key,
        version=e.version,
    )


def _close_else_branch(
    enrollment: Enrollment, sequence: Sequence, sent: Step, skipped: frozenset[int], now: datetime
) -> tuple[frozenset[int], list[Event]]:
    """Pass over the steps that form the else branch of ``sent``: the active steps
    right after it with the same delay and the opposite condition."""
    assert sent.condition is not None
    opposite = sent.condition.negated()
    events: list[Event] = []
    candidate = _next_step(sequence, sent.position, skipped)
    while candidate is not None and candidate.condition == opposite and candidate.delay == sent.delay:
        skipped = skipped | {candidate.position}
        events.append(_skip_event(enrollment, candidate.position, SkipReason.CONDITION, now))
        candidate = _next_step(sequence, candidate.position, skipped)
    return skipped, events


def _skip_event(enrollment: Enrollment, position: int, reason: SkipReason, at: datetime) -> StepSkipped:
    return StepSkipped(
        enrollment_id=enrollment.id,
        sequence_id=enrollment.sequence_id,
        contact_id=enrollment.contact_id,
        at=at,
        position=position,
        reason=reason,
    )


def _completed_event(enrollment: Enrollment, at: datetime) -> Completed:
    return Completed(
        enrollment_id=enrollment.id,
        sequence_id=enrollment.sequence_id,
        contact_id=enrollment.contact_id,
        at=at,
    )


# --------------------------------------------------------------------------- preview


@attrs.frozen(kw_only=True)
class PlannedStep:
    """One line of a :func:`preview`: when a step would go (or why it would not).

    ``at`` is the instant (UTC), ``local`` the same instant in the contact's
    zone, ``start`` the enrollment the preview started from, and :attr:`after`
    says how long after it the step goes, in words.
    """

    position: int
    """The step's position."""
    name: str
    """The step's name (may be empty)."""
    subject: str | None
    """The step's subject template, or None when its content comes from a template id."""
    at: datetime
    """When the step would go, in UTC."""
    local: datetime
    """The same instant in the contact's zone."""
    skipped: SkipReason | None = None
    """Why the step would be passed over, or None when it would be sent."""
    start: datetime | None = None
    """The enrollment time the preview started from."""

    @property
    def after(self) -> str | None:
        """How long after ``start`` the step goes, in English words on the contact's local
        calendar (``"immediately"``, ``"2 days"``, ``"1 month"``, ``"1 day 1 hour"`` across
        a daylight-saving change); None when the step has no ``start``."""
        if self.start is None:
            return None
        return _elapsed_in_words(self.start, self.local)


def _elapsed_in_words(start: datetime, end: datetime) -> str:
    """How long from ``start`` to ``end``, in English words, on the local calendar of ``end``'s zone.

    Counted the way a person reads a calendar (pendulum's precise difference of the
    two local wall-clock times): years, months, weeks, days, hours, minutes and
    seconds, the zero ones left out; ``"immediately"`` when ``end`` is within a
    second of ``start``; the elapsed time when the clocks fell back in between
    so far that the wall clock shows no later time. Always English, whatever
    pendulum's current locale.

    >>> from datetime import datetime, timezone
    >>> utc = timezone.utc
    >>> _elapsed_in_words(datetime(2026, 1, 31, 9, tzinfo=utc), datetime(2026, 2, 28, 9, tzinfo=utc))
    '1 month'
    >>> _elapsed_in_words(datetime(2026, 3, 2, 9, tzinfo=utc), datetime(2026, 3, 4, 10, 30, tzinfo=utc))
    '2 days 1 hour 30 minutes'
    """
    import pendulum  # here, not at the top: only previews pay for importing pendulum

    elapsed = end - start
    if abs(elapsed) < timedelta(seconds=1):
        return "immediately"
    local_start = start.astimezone(end.tzinfo or UTC)
    if end.replace(tzinfo=None) - local_start.replace(tzinfo=None) < timedelta(seconds=1):
        # The clocks fell back in between and the wall clock shows no later time: say the elapsed time.
        return pendulum.duration(seconds=int(elapsed.total_seconds())).in_words(locale="en")
    return (pendulum.instance(end) - pendulum.instance(local_start)).in_words(locale="en")


def preview(
    sequence: Sequence, contact: Contact | None, start: datetime, *, limit: int = 1000
) -> tuple[PlannedStep, ...]:
    """When each step of ``sequence`` would go for ``contact`` if enrolled at ``start``.

    Pure: it runs :func:`advance` on a simulated clock, so delays, zones,
    daylight-saving changes and windows are applied exactly as they will be.
    Engagement is assumed absent (nothing opened or clicked), so conditions
    resolve as for a contact who ignores every email. Works on draft sequences
    too. ``local`` is the instant in the contact's zone (fallback chain: the
    contact's, the sequence's, UTC), and ``after`` how long after ``start``
    the step goes, in words.

    >>> from datetime import datetime, timezone
    >>> from dripcore.prefabs import welcome_series
    >>> plan = preview(welcome_series(), None, datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    >>> [(p.position, f"{p.at:%a %H:%M}") for p in plan]
    [(1, 'Mon 09:00'), (2, 'Tue 09:00'), (3, 'Mon 09:00')]
    >>> [p.after for p in plan]
    ['immediately', '1 day', '1 week']
    """
    start = _now(start)
    runnable = attrs.evolve(sequence, status=SequenceStatus.ACTIVE, paused_at=None)
    enrollment = enroll(
        runnable, None, start, enrollment_id="preview", contact_id="preview" if contact is None else contact.id
    ).enrollment
    if contact is not None and contact.suppressed is not None:
        contact = attrs.evolve(contact, suppressed=None)
    zone: tzinfo = resolve_zone(runnable, contact) or UTC
    steps = {step.position: step for step in runnable.steps}
    planned: list[PlannedStep] = []
    for _ in range(limit):
        if enrollment.is_terminal:
            break
        assert enrollment.next_step_due_at is not None
        now = enrollment.next_step_due_at
        result = advance(enrollment, now, sequence=runnable, contact=contact)
        for event in result.events:
            if isinstance(event, StepSkipped):
                step = steps[event.position]
                planned.append(
                    PlannedStep(
                        position=step.position, name=step.name, subject=step.subject, at=now,
                        local=now.astimezone(zone), skipped=event.reason, start=start,
                    )
                )  # fmt: skip
        if result.send is not None:
            step = result.send
            planned.append(
                PlannedStep(position=step.position, name=step.name, subject=step.subject, at=now,
                            local=now.astimezone(zone), start=start)
            )  # fmt: skip
        enrollment = result.enrollment
    planned.sort(key=lambda p: (p.at, p.position))
    return tuple(planned)


# --------------------------------------------------------------------------- other transitions


def enroll(
    sequence: Sequence,
    contact: Contact | None,
    now: datetime,
    *,
    enrollment_id: str,
    contact_id: str | None = None,
    started_at: datetime | None = None,
    variables: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> Advance:
    """Start ``contact`` on ``sequence``: a new ACTIVE enrollment and a ``Subscribed`` event.

    The first step is due at ``started_at`` (default ``now``) + its delay. A
    sequence that is not ACTIVE raises :class:`~dripcore.errors.SequenceStateError`;
    a suppressed contact raises :class:`~dripcore.errors.ContactSuppressed`.
    Pass ``contact_id`` instead of ``contact`` when no contact record is at hand.
    """
    now = _now(now)
    if contact is not None:
        if contact_id is not None and contact_id != contact.id:
            raise DripcoreError(f"contact_id={contact_id!r} does not match contact.id={contact.id!r}")
        contact_id = contact.id
        if contact.suppressed is not None:
            raise ContactSuppressed(contact_id=contact.id, reason=contact.suppressed.value)
    if contact_id is None:
        raise DripcoreError("enroll() needs a contact or a contact_id")
    sequence_target(sequence, SequenceAction.ENROLL)
    start = now if started_at is None else to_utc(started_at, "started_at")
    first = sequence.next_active_step(0)
    due = start if first is None else schedule(start, first, sequence, resolve_zone(sequence, contact))
    enrollment = Enrollment(
        id=enrollment_id,
        sequence_id=sequence.id,
        contact_id=contact_id,
        status=_A,
        enrolled_at=start,
        next_step_due_at=due,
        variables=variables or {},
        key=key,
    )
    event = Subscribed(enrollment_id=enrollment.id, sequence_id=sequence.id, contact_id=contact_id, at=now, key=key)
    return Advance(enrollment, None, (event,))


def pause(enrollment: Enrollment, now: datetime) -> Advance:
    """Hold an ACTIVE enrollment: it sends nothing until :func:`resume`."""
    now = _now(now)
    status = _target(enrollment, Action.PAUSE)
    return Advance(attrs.evolve(enrollment, status=status, paused_at=now))


def resume(
    enrollment: Enrollment,
    now: datetime,
    *,
    sequence: Sequence,
    policy: PausePolicy | None = None,
) -> Advance:
    """Let a PAUSED enrollment go on, under ``policy`` (default: the sequence's).

    BUMP: a step that fell due during the pause goes at the next advance,
    once; the ones after it count their delays from its actual send. EXTEND: the due time
    moves later by the length of the pause, keeping the remaining wait.
    """
    now = _now(now)
    status = _target(enrollment, Action.RESUME)
    policy = sequence.pause_policy if policy is None else policy
    due = enrollment.next_step_due_at
    paused_at = enrollment.paused_at
    assert due is not None  # guaranteed for PAUSED
    assert paused_at is not None
    if policy is PausePolicy.EXTEND:
        due = due + max(now - paused_at, timedelta(0))
    # BUMP leaves an overdue time as it is: the step goes at the next advance (once),
    # and an ``expires_after`` still measures how late it is.
    return Advance(attrs.evolve(enrollment, status=status, paused_at=None, next_step_due_at=due))


def exit(enrollment: Enrollment, reason: ExitReason, now: datetime) -> Advance:
    """End an ACTIVE or PAUSED enrollment early, with ``reason``; emits ``Cancelled``."""
    return _exit(enrollment, reason, _now(now))


def _exit(enrollment: Enrollment, reason: ExitReason, now: datetime) -> Advance:
    status = _target(enrollment, Action.EXIT)
    if not isinstance(reason, ExitReason):
        raise DripcoreError(f"exit reason must be an ExitReason, not {reason!r}")
    event = Cancelled(
        enrollment_id=enrollment.id,
        sequence_id=enrollment.sequence_id,
        contact_id=enrollment.contact_id,
        at=now,
        reason=reason,
    )
    exited = attrs.evolve(
        enrollment, status=status, exit_reason=reason, next_step_due_at=None, paused_at=None, ended_at=now
    )
    return Advance(exited, None, (event,))


def replan(
    enrollment: Enrollment,
    sequence: Sequence,
    *,
    contact: Contact | None = None,
    previous: Sequence | None = None,
) -> Advance:
    """Fit an in-flight enrollment to an edited ``sequence``.

    It continues from ``last_step_sent`` with the new step list: its next due
    time is recomputed from the last send (or enrollment) plus the new next
    step's delay, so a shortened delay releases it and a lengthened one keeps
    it waiting. When ``previous`` (the sequence before the edit) is given and
    the next step and its delay did not change, the enrollment is left as it
    is, keeping any shift from an EXTEND resume. With no active step left it
    becomes due at once, and the next :func:`advance` completes it. Terminal
    enrollments are returned unchanged.
    """
    if enrollment.status.is_terminal:
        return Advance(enrollment)
    status = _target(enrollment, Action.REPLAN)
    nxt = _next_step(sequence, enrollment.last_step_sent, enrollment.skipped)
    if previous is not None:
        before = _next_step(previous, enrollment.last_step_sent, enrollment.skipped)
        if (before is None and nxt is None) or (
            before is not None
            and nxt is not None
            and before.position == nxt.position
            and before.delay == nxt.delay
            and window_of(before, previous) == window_of(nxt, sequence)
        ):
            return Advance(enrollment)
    base = enrollment.reference_time
    due = base if nxt is None else schedule(base, nxt, sequence, resolve_zone(sequence, contact))
    if due == enrollment.next_step_due_at:
        return Advance(enrollment)
    return Advance(attrs.evolve(enrollment, status=status, next_step_due_at=due))


def defer(enrollment: Enrollment, until: datetime, *, sequence: Sequence, contact: Contact | None = None) -> Advance:
    """Hold an ACTIVE enrollment's next step until ``until`` (moved into the step's window).

    Used when something outside the schedule says "not now" (a frequency cap);
    the step is not skipped, only made to wait.
    """
    status = _target(enrollment, Action.DEFER)
    until = _now(until)
    step = _next_step(sequence, enrollment.last_step_sent, enrollment.skipped)
    if step is not None:
        window = window_of(step, sequence)
        if window is not None and window.outside is WindowAction.MOVE:
            until = next_opening(until, window, resolve_zone(sequence, contact))
    due = enrollment.next_step_due_at
    if due is not None and due >= until:
        return Advance(enrollment)
    return Advance(attrs.evolve(enrollment, status=status, next_step_due_at=until))


# --------------------------------------------------------------------------- triggers


def matches(trigger: Trigger, event: TriggerEvent) -> bool:
    """Whether ``event`` fires ``trigger``.

    Types must be equal; a trigger with no value (the "any" variant) fires for
    every value, one with a value only for that value (tags compare
    case-insensitively). So tagging a contact ``VIP`` fires both a "tag
    added, any" trigger and a "tag added, vip" one.
    """
    if trigger.type is not event.type:
        return False
    if trigger.value is None:
        return True
    if event.value is None:
        return False
    return normalize_trigger_value(trigger.type, trigger.value) == normalize_trigger_value(event.type, event.value)


def exits_on(sequence: Sequence, event: TriggerEvent) -> bool:
    """Whether ``event`` meets one of ``sequence``'s goals (``exit_on``)."""
    return any(matches(goal, event) for goal in sequence.exit_on)


def anniversary_date(origin: date, year: int) -> date:
    """The anniversary of ``origin`` in ``year``; Feb 29 falls on Feb 28 in common years."""
    if origin.month == 2 and origin.day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return date(year, origin.month, origin.day)


def is_anniversary(origin: date, day: date) -> bool:
    """Whether ``day`` is the anniversary of ``origin`` (and not the day itself)."""
    return day > origin and anniversary_date(origin, day.year) == day
