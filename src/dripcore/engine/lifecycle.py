"""A sequence's lifecycle: save (with the replan of an edit), activate, pause, resume, archive, delete."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta

import attrs

from .. import scheduler
from .._checks import check_flag, check_id, check_opt_enum
from ..errors import (
    ConcurrencyConflict,
    ContactNotFound,
    InvalidArgument,
    SequenceStateError,
)
from ..model import (
    Contact,
    Enrollment,
    EnrollmentStatus,
    ExitReason,
    PausePolicy,
    Sequence,
    SequenceStatus,
)
from ..ports import CounterName
from ..scheduler import SequenceAction, sequence_target
from .commits import PAGE, commit_all, live
from .context import Context, log
from .enrolling import enroll_one
from .lookups import look_up_contacts
from .sender_rules import check_senders

__all__ = [
    "activate",
    "archive",
    "create_active",
    "definition_of",
    "delete_sequence",
    "edit",
    "enroll_members",
    "pause",
    "replan",
    "replan_pending",
    "resume",
    "save_sequence",
    "set_status",
    "take_back",
]

# A sequence-level counter set while an edit's replan is under way (see save_sequence).
REPLAN_PENDING = CounterName.REPLAN_PENDING.value


#: How many times a save reads the stored sequence again and retries when another process saved
#: it in between (several workers syncing the same definitions at start-up); each try is idempotent.
SAVE_ATTEMPTS = 5


def save_sequence(ctx: Context, sequence: Sequence) -> Sequence:
    """Create a sequence or save a new definition of it, keeping its lifecycle; returns what is stored."""
    if not isinstance(sequence, Sequence):
        raise InvalidArgument("sequence", sequence, f"must be a Sequence, not {type(sequence).__name__}")
    check_senders(ctx.sender_rules, sequence)
    current = ctx.store.get_sequence(sequence.id)
    if current is None:
        sequence_target(sequence, SequenceAction.CREATE)
        try:
            if sequence.status is SequenceStatus.ACTIVE:
                return create_active(ctx, sequence)
            now = ctx.now()
            stored = attrs.evolve(sequence, version=1, created_at=now, updated_at=now)
            ctx.store.save_sequence(stored, expected_version=None)
            return stored
        except ConcurrencyConflict:
            # Another process created it first (two workers syncing at start-up): this
            # definition is then an edit of theirs, or the same definition.
            current = ctx.store.get_sequence(sequence.id)
            if current is None:
                raise
    for attempt in range(1, SAVE_ATTEMPTS + 1):
        try:
            return edit(ctx, current, sequence)
        except ConcurrencyConflict:
            # Another process saved it meanwhile: read what it stored and try again (the same
            # definition then writes nothing).
            again = ctx.store.get_sequence(sequence.id)
            if again is None or attempt == SAVE_ATTEMPTS:
                raise
            current = again
    raise AssertionError("unreachable")  # pragma: no cover


def replan_pending(ctx: Context, sequence_id: str) -> int:
    """The replan marker of a sequence: above zero while an edit's replan is under way or was
    interrupted. A negative value (concurrent saves of an earlier version could leave one) is
    repaired to zero."""
    value = ctx.store.counters(sequence_id).get((0, REPLAN_PENDING), 0)
    if value < 0:
        ctx.store.bump([(sequence_id, 0, REPLAN_PENDING, -value)])
        return 0
    return value


def take_back(ctx: Context, sequence_id: str, amount: int) -> None:
    """Lower the replan marker by ``amount``, never below zero (another process may have
    finished the replan, and cleared the marker, first)."""
    value = ctx.store.counters(sequence_id).get((0, REPLAN_PENDING), 0)
    taken = min(amount, value)
    if taken > 0:
        ctx.store.bump([(sequence_id, 0, REPLAN_PENDING, -taken)])


def definition_of(sequence: Sequence, lifecycle: Sequence) -> Sequence:
    """``sequence``'s definition (trigger, steps, settings) with ``lifecycle``'s status, pause,
    version and timestamps: what storing that definition would keep of the stored sequence."""
    return attrs.evolve(
        sequence, status=lifecycle.status, paused_at=lifecycle.paused_at, version=lifecycle.version,
        created_at=lifecycle.created_at, updated_at=lifecycle.updated_at,
    )  # fmt: skip


def edit(ctx: Context, current: Sequence, sequence: Sequence) -> Sequence:
    """Store ``sequence``'s definition over ``current``, which keeps its status: an edit bumps the
    version and replans live enrollments; the same definition again writes nothing."""
    sequence_target(current, SequenceAction.EDIT)
    given = sequence.status
    # A definition's status says where a new sequence starts. Over a stored one, DRAFT (the
    # default) keeps the stored status, so an operator's pause survives a deploy, and ACTIVE
    # activates a draft but does not resume a pause; pausing and archiving are the lifecycle
    # methods' to do.
    if given is not current.status and given not in (SequenceStatus.DRAFT, SequenceStatus.ACTIVE):
        raise SequenceStateError(
            sequence_id=sequence.id, status=current.status.value, action=f"set status={given.value} of",
            hint="use pause(), resume() or archive()",
        )  # fmt: skip
    definition = definition_of(sequence, current)
    pending = replan_pending(ctx, sequence.id)
    if definition == current:
        stored = current
        if pending > 0:
            # An earlier edit's replan was interrupted (or is still under way in another
            # process, which can't be told apart): replan everyone from their last send. Doing
            # it twice is harmless: both land every enrollment on the stored steps.
            replan(ctx, current, None)
            take_back(ctx, sequence.id, pending)
            ctx.wake.set()
    else:
        stored = attrs.evolve(definition, version=current.version + 1, updated_at=ctx.now())
        ctx.store.bump([(sequence.id, 0, REPLAN_PENDING, 1)])
        try:
            ctx.store.save_sequence(stored, expected_version=current.version)
        except ConcurrencyConflict:
            take_back(ctx, sequence.id, 1)  # nothing was stored: nothing to replan
            raise
        # After an interrupted replan some enrollments follow an older plan than ``current``:
        # replan everyone from their last send (losing only EXTEND shifts and cap deferrals).
        changed = replan(ctx, stored, None if pending > 0 else current)
        take_back(ctx, sequence.id, pending + 1)
        if changed:
            ctx.wake.set()
    if given is SequenceStatus.ACTIVE and stored.status is SequenceStatus.DRAFT:
        return activate(ctx, sequence.id)
    return stored


def create_active(ctx: Context, sequence: Sequence) -> Sequence:
    """Store a new sequence given as ACTIVE with :func:`activate`'s checks: an active step to
    send, and (when ``enroll_existing``) the trigger list's members enrolled."""
    if not sequence.active_steps():
        raise SequenceStateError(
            sequence_id=sequence.id, status=sequence.status.value, action="create",
            hint="it has no active step to send: save it as a draft",
        )  # fmt: skip
    now = ctx.now()
    if not sequence.enroll_existing:
        stored = attrs.evolve(sequence, version=1, created_at=now, updated_at=now)
        ctx.store.save_sequence(stored, expected_version=None)
        ctx.wake.set()
        return stored
    # Members are enrolled as activate() does it: from a stored draft, which stays one if a
    # member can't be looked up (activate() again finishes).
    draft = attrs.evolve(sequence, status=SequenceStatus.DRAFT, version=1, created_at=now, updated_at=now)
    ctx.store.save_sequence(draft, expected_version=None)
    return activate(ctx, sequence.id)


def replan(ctx: Context, sequence: Sequence, previous: Sequence | None) -> int:
    """Replan the live enrollments of an edited ``sequence`` (from ``previous``, or from their last send)."""
    contacts: Mapping[str, Contact] = {}

    def transition(e: Enrollment) -> scheduler.Advance:
        return scheduler.replan(e, sequence, contact=contacts.get(e.contact_id), previous=previous)

    def pages() -> Iterator[list[Enrollment]]:
        nonlocal contacts
        for page in live(ctx, sequence_id=sequence.id):
            # A contact that can't be looked up is replanned in the sequence's zone.
            contacts = look_up_contacts(ctx, {e.contact_id for e in page})[0]
            yield page

    return commit_all(ctx, transition, pages())


def set_status(ctx: Context, sequence: Sequence, status: SequenceStatus, paused_at: datetime | None) -> Sequence:
    """Store ``sequence`` with a new status (a version bump, checked against the stored one)."""
    updated = attrs.evolve(sequence, status=status, paused_at=paused_at, version=sequence.version + 1)
    updated = attrs.evolve(updated, updated_at=ctx.now())
    ctx.store.save_sequence(updated, expected_version=sequence.version)
    return updated


def activate(ctx: Context, sequence_id: str, *, enroll_existing: bool | None = None) -> Sequence:
    """Start a draft (or resume a paused) sequence."""
    if enroll_existing is not None:
        check_flag(enroll_existing, "enroll_existing")
    sequence = ctx.sequence(sequence_id)
    target = sequence_target(sequence, SequenceAction.ACTIVATE)
    if sequence.status is SequenceStatus.ACTIVE:
        # Already live: start-up code may activate every time. Asked explicitly, it enrolls
        # the trigger list's members again (a backfill: enrollment is idempotent).
        if enroll_existing:
            enroll_members(ctx, sequence)
        return sequence
    if sequence.status is SequenceStatus.PAUSED:
        return resume(ctx, sequence_id)
    if not sequence.active_steps():
        raise SequenceStateError(
            sequence_id=sequence_id, status=sequence.status.value, action="activate",
            hint="it has no active step to send",
        )  # fmt: skip
    check_senders(ctx.sender_rules, sequence)  # the rules may have changed since it was saved
    active = attrs.evolve(sequence, status=target, paused_at=None, version=sequence.version + 1)
    active = attrs.evolve(active, updated_at=ctx.now())
    if sequence.enroll_existing if enroll_existing is None else enroll_existing:
        enroll_members(ctx, active)
    ctx.store.save_sequence(active, expected_version=sequence.version)
    ctx.wake.set()
    return active


def enroll_members(ctx: Context, sequence: Sequence) -> None:
    """Enroll the trigger list's members into ``sequence`` (as it will be once active).

    Members whose contact can't be looked up are logged, the others enrolled, and then
    :class:`~dripcore.errors.ContactNotFound` is raised naming the first: the sequence
    stays a draft, and :meth:`activate` can be called again once the directory is fixed.
    """
    members = list(dict.fromkeys(ctx.contacts.members(sequence.trigger)))
    unreadable: dict[str, str] = {}
    for start in range(0, len(members), PAGE):
        page = members[start : start + PAGE]
        contacts, failed = look_up_contacts(ctx, set(page))
        for contact_id, why in failed.items():
            log.warning("member %s of %s's trigger list can't be looked up: %s", contact_id, sequence.id, why)
        unreadable.update(failed)
        for contact_id in page:
            contact = contacts.get(contact_id)
            if contact is not None and contact.suppressed is None:
                enroll_one(ctx, sequence, contact)
    if unreadable:
        raise ContactNotFound(next(iter(unreadable)))


def pause(ctx: Context, sequence_id: str) -> Sequence:
    """Stop all sending of a sequence; new triggers do not enroll meanwhile.

    One write, of the sequence: its enrollments stay stored as they are, and the read side
    (engine/queries.py) shows the ACTIVE ones as PAUSED while the sequence is paused. So an
    enrollment stored PAUSED was paused on its own, and resume leaves it paused.
    """
    sequence = ctx.sequence(sequence_id)
    return set_status(ctx, sequence, sequence_target(sequence, SequenceAction.PAUSE), ctx.now())


def resume(ctx: Context, sequence_id: str, *, policy: PausePolicy | None = None) -> Sequence:
    """Resume a paused sequence: the enrollments it held (stored ACTIVE) go on under the policy;
    those paused on their own (stored PAUSED) stay paused."""
    policy = check_opt_enum(policy, PausePolicy, "policy")
    sequence = ctx.sequence(sequence_id)
    target = sequence_target(sequence, SequenceAction.RESUME)
    assert sequence.paused_at is not None
    now = ctx.now()
    resumed = attrs.evolve(sequence, status=target, paused_at=None, version=sequence.version + 1)
    resumed = attrs.evolve(resumed, updated_at=now)
    if (policy or sequence.pause_policy) is PausePolicy.EXTEND:
        shift = max(now - sequence.paused_at, timedelta(0))
        try:
            ctx.store.resume_sequence(resumed, expected_version=sequence.version, shift=shift)
            ctx.wake.set()
            return resumed
        except NotImplementedError:
            log.warning("%s has no resume_sequence: EXTEND shifts page by page", type(ctx.store).__name__)

        def extend(e: Enrollment) -> scheduler.Advance:
            if e.status is not EnrollmentStatus.ACTIVE or e.next_step_due_at is None:
                return scheduler.Advance(e)
            return scheduler.Advance(attrs.evolve(e, next_step_due_at=e.next_step_due_at + shift))

        # Shift before reactivating, so no tick sees the old due times.
        commit_all(ctx, extend, live(ctx, sequence_id=sequence_id))
    ctx.store.save_sequence(resumed, expected_version=sequence.version)
    ctx.wake.set()
    return resumed


def archive(ctx: Context, sequence_id: str) -> Sequence:
    """End a sequence for good: every active or paused enrollment exits (reason ARCHIVED)."""
    sequence = ctx.sequence(sequence_id)
    target = sequence_target(sequence, SequenceAction.ARCHIVE)
    if sequence.status is not target:  # archiving again finishes an interrupted archive's exits
        sequence = set_status(ctx, sequence, target, None)
    now = ctx.now()
    commit_all(ctx, lambda e: scheduler.exit(e, ExitReason.ARCHIVED, now), live(ctx, sequence_id=sequence_id))
    return sequence


def delete_sequence(ctx: Context, sequence_id: str) -> None:
    """Delete a sequence; refused while it has active or paused enrollments."""
    ctx.store.delete_sequence(check_id(sequence_id, "sequence_id"))
