"""The facade: :class:`Drip`, the engine's public methods, each handing its work to the module that does that job."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any, Generic, TypeVar, overload

import attrs

from .._checks import check_flag, check_id
from ..errors import InvalidArgument
from ..model import Enrollment, EnrollmentStatus, ExitReason, PausePolicy, Sequence, SequenceStatus, TriggerEvent
from ..planning import FrequencyCap
from ..ports import (
    Clock,
    ContactDirectory,
    EnrollmentOrder,
    EventSink,
    MailSender,
    RateLimiter,
    Renderer,
    SequenceStats,
    SequenceSummary,
    Store,
    SystemClock,
)
from ..render import LiquidRenderer
from . import definitions as definitions_module
from . import engagement, enrolling, enrollment_actions, lifecycle, queries, running, tick
from .config import (
    DEFAULT_CATCH_UP_DAYS,
    DEFAULT_SWEEP_AT,
    Limits,
    RetryPolicy,
    check_catch_up_days,
    check_sweep_at,
    settings_from,
)
from .context import Context
from .definitions import SequenceSync
from .enrolling import EnrollManyResult
from .report import TickReport
from .sender_rules import SenderRule, check_rules
from .text import new_id

__all__ = ["Drip"]

_T = TypeVar("_T")


class _Forwarded(Generic[_T]):
    """An attribute of :class:`Drip` kept on its context (so the modules see a change to it)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, drip: None, owner: type) -> _Forwarded[_T]: ...
    @overload
    def __get__(self, drip: Drip, owner: type) -> _T: ...
    def __get__(self, drip: Drip | None, owner: type) -> _T | _Forwarded[_T]:
        if drip is None:
            return self
        value: _T = getattr(drip._context, self.name)
        return value

    def __set__(self, drip: Drip, value: _T) -> None:
        setattr(drip._context, self.name, value)


class _Setting(Generic[_T]):
    """A flat setting of earlier versions, read from (and set into) its value object."""

    def __init__(self, holder: str, field: str) -> None:
        self.holder, self.field = holder, field

    @overload
    def __get__(self, drip: None, owner: type) -> _Setting[_T]: ...
    @overload
    def __get__(self, drip: Drip, owner: type) -> _T: ...
    def __get__(self, drip: Drip | None, owner: type) -> _T | _Setting[_T]:
        if drip is None:
            return self
        value: _T = getattr(getattr(drip._context, self.holder), self.field)
        return value

    def __set__(self, drip: Drip, value: _T) -> None:
        holder = getattr(drip._context, self.holder)
        setattr(drip._context, self.holder, attrs.evolve(holder, **{self.field: value}))


class Drip:
    """A drip-campaign engine: your ports in, correct scheduling out.

    >>> from dripcore import Drip, Sequence, SequenceStatus, Step, Contact
    >>> from dripcore.adapters.memory import MemoryStore
    >>> from dripcore.testing import FakeClock, MemoryContacts, RecordingSender
    >>> contacts = MemoryContacts([Contact(id="ana", email="ana@example.com", first_name="Ana")])
    >>> sender = RecordingSender()
    >>> drip = Drip(store=MemoryStore(), sender=sender, clock=FakeClock(), contacts=contacts)
    >>> _ = drip.save_sequence(Sequence(id="hello", name="Hello", status=SequenceStatus.ACTIVE,
    ...     steps=(Step(position=1, subject="Hi {{firstName}}", text="Welcome!"),)))
    >>> enrollment, created = drip.enroll("hello", "ana")
    >>> drip.tick().sent
    1
    >>> sender.sent[0].subject
    'Hi Ana'

    Ports are keyword arguments. ``contacts`` resolves contact ids to email
    addresses, zones and suppression; ``events`` receives lifecycle events;
    ``rate_limiter`` caps sends; ``renderer`` turns steps into content (the
    default is :class:`~dripcore.render.LiquidRenderer` with a placeholder
    unsubscribe link: pass ``LiquidRenderer(unsubscribe_url=...)`` in production).
    A sender that sends real mail (``sender.sends_real_mail``: every sender but the
    test fakes) with that placeholder raises :class:`~dripcore.errors.InvalidArgument`
    naming ``unsubscribe_url``, unless ``allow_placeholder_unsubscribe=True`` (a staging
    server whose mail goes to a sink). :class:`~dripcore.unsubscribe.UnsubscribeLinks`
    makes signed links.

    Settings come as value objects: ``retry`` (a :class:`~dripcore.engine.RetryPolicy`)
    and ``limits`` (a :class:`~dripcore.engine.Limits`). The flat keywords of earlier
    versions still work and mean the same fields: ``retry_base``, ``retry_cap``,
    ``retry_for`` (``RetryPolicy.give_up_after``) and ``max_attempts``; ``batch_size``,
    ``lease``, ``set_aside_for`` and ``concurrency``. Giving one both ways raises
    :class:`~dripcore.errors.InvalidArgument`, as does any bad setting, naming it.
    The configuration reference page lists every setting.

    :meth:`run` sweeps anniversaries itself once a day at ``anniversary_sweep_at``
    (a ``datetime.time`` read as UTC; 00:00 by default; None turns it off), and a
    worker that starts catches up the ``anniversary_catch_up_days`` (1 by default,
    at most 31) before the latest due day: see :meth:`run`.

    ``sender_rules`` (a list of :data:`~dripcore.engine.SenderRule`, such as
    ``[AuthorizedDomains({"example.com"})]``) check the From address of a sequence and
    of each of its steps whenever it is saved or activated: a refused one raises
    :class:`~dripcore.errors.SenderNotAllowed` and nothing is stored.
    """

    store = _Forwarded[Store]()
    """Where state lives."""
    sender = _Forwarded[MailSender]()
    """How email goes out."""
    contacts = _Forwarded[ContactDirectory]()
    """The host's contacts."""
    clock = _Forwarded[Clock]()
    """What time it is."""
    events = _Forwarded["EventSink | None"]()
    """Where lifecycle events go, if anywhere."""
    rate_limiter = _Forwarded["RateLimiter | None"]()
    """What caps sends, if anything."""
    renderer = _Forwarded[Renderer]()
    """What turns steps into content."""
    retry = _Forwarded[RetryPolicy]()
    """How transient send failures are retried."""
    limits = _Forwarded[Limits]()
    """How much one worker takes on at a time, and for how long."""
    frequency_cap = _Forwarded["FrequencyCap | None"]()
    """The cap on emails per contact across sequences, if any."""
    worker_id = _Forwarded[str]()
    """The name of this worker's leases."""
    batch_size = _Setting[int]("limits", "batch_size")
    """``limits.batch_size`` (settable: a new ``limits`` with it)."""
    lease = _Setting[timedelta]("limits", "lease")
    """``limits.lease``."""
    set_aside_for = _Setting[timedelta]("limits", "set_aside_for")
    """``limits.set_aside_for``."""
    concurrency = _Setting["int | None"]("limits", "concurrency")
    """``limits.concurrency``."""
    retry_base = _Setting[timedelta]("retry", "base")
    """``retry.base``."""
    retry_cap = _Setting[timedelta]("retry", "cap")
    """``retry.cap``."""
    retry_for = _Setting[timedelta]("retry", "give_up_after")
    """``retry.give_up_after``."""
    max_attempts = _Setting["int | None"]("retry", "max_attempts")
    """``retry.max_attempts``."""

    def __init__(
        self,
        *,
        store: Store,
        sender: MailSender,
        contacts: ContactDirectory,
        clock: Clock | None = None,
        events: EventSink | None = None,
        rate_limiter: RateLimiter | None = None,
        renderer: Renderer | None = None,
        retry: RetryPolicy | None = None,
        limits: Limits | None = None,
        batch_size: int | None = None,
        lease: timedelta | None = None,
        set_aside_for: timedelta | None = None,
        max_attempts: int | None = None,
        retry_base: timedelta | None = None,
        retry_cap: timedelta | None = None,
        retry_for: timedelta | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
        id_factory: Callable[[], str] | None = None,
        frequency_cap: FrequencyCap | None = None,
        anniversary_sweep_at: time | None = DEFAULT_SWEEP_AT,
        anniversary_catch_up_days: int = DEFAULT_CATCH_UP_DAYS,
        sender_rules: Iterable[SenderRule] | None = None,
        allow_placeholder_unsubscribe: bool = False,
    ) -> None:
        retry, limits = settings_from(
            retry, limits,
            {"retry_base": retry_base, "retry_cap": retry_cap, "retry_for": retry_for, "max_attempts": max_attempts,
             "batch_size": batch_size, "lease": lease, "set_aside_for": set_aside_for, "concurrency": concurrency},
        )  # fmt: skip
        if worker_id is not None:
            check_id(worker_id, "worker_id")
        required: tuple[tuple[str, object, type], ...] = (
            ("store", store, Store), ("sender", sender, MailSender), ("contacts", contacts, ContactDirectory),
        )  # fmt: skip
        optional: tuple[tuple[str, object, type], ...] = (
            ("clock", clock, Clock), ("events", events, EventSink), ("rate_limiter", rate_limiter, RateLimiter),
            ("renderer", renderer, Renderer), ("frequency_cap", frequency_cap, FrequencyCap),
        )  # fmt: skip
        for name, port, kind in (*required, *((n, p, k) for n, p, k in optional if p is not None)):
            if not isinstance(port, kind):
                raise InvalidArgument(name, port, f"must be a {kind.__name__}, not {type(port).__name__}")
        check_flag(allow_placeholder_unsubscribe, "allow_placeholder_unsubscribe")
        renderer = renderer or LiquidRenderer()
        if (
            isinstance(renderer, LiquidRenderer) and renderer.uses_placeholder_unsubscribe_url
            and sender.sends_real_mail and not allow_placeholder_unsubscribe
        ):  # fmt: skip
            raise InvalidArgument(
                "unsubscribe_url", "https://unsubscribe.invalid/...",
                f"{type(sender).__name__} sends real mail, and every email would carry this placeholder "
                "unsubscribe link, which never resolves: pass renderer=LiquidRenderer(unsubscribe_url=...) "
                "with your endpoint, such as UnsubscribeLinks('https://example.com/unsubscribe/{token}', "
                "secret=...), or allow_placeholder_unsubscribe=True for a server whose mail reaches no customer",
            )  # fmt: skip
        if id_factory is not None and not callable(id_factory):
            raise InvalidArgument("id_factory", id_factory, "must be a callable returning a new id")
        if frequency_cap is not None and "frequency_cap" not in store.capabilities:
            raise InvalidArgument(
                "frequency_cap", frequency_cap,
                f"can't be enforced with {type(store).__name__}: it does not declare the 'frequency_cap' capability",
            )  # fmt: skip
        self._context = Context(
            store=store,
            sender=sender,
            contacts=contacts,
            clock=clock or SystemClock(),
            events=events,
            rate_limiter=rate_limiter,
            renderer=renderer,
            retry=retry,
            limits=limits,
            frequency_cap=frequency_cap,
            worker_id=worker_id or f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}",
            new_id=id_factory or new_id,
            anniversary_sweep_at=check_sweep_at(anniversary_sweep_at),
            anniversary_catch_up_days=check_catch_up_days(anniversary_catch_up_days),
            sender_rules=check_rules(sender_rules),
        )

    @property
    def anniversary_sweep_at(self) -> time | None:
        """When (UTC) :meth:`run` sweeps anniversaries each day; None: it doesn't (settable)."""
        return self._context.anniversary_sweep_at

    @anniversary_sweep_at.setter
    def anniversary_sweep_at(self, value: time | None) -> None:
        self._context.anniversary_sweep_at = check_sweep_at(value)

    @property
    def anniversary_catch_up_days(self) -> int:
        """How many days before the latest due sweep a starting worker sweeps too (settable)."""
        return self._context.anniversary_catch_up_days

    @anniversary_catch_up_days.setter
    def anniversary_catch_up_days(self, value: int) -> None:
        self._context.anniversary_catch_up_days = check_catch_up_days(value)

    def save_sequence(self, sequence: Sequence) -> Sequence:
        """Create a sequence, or store a new definition of it; returns what is stored.

        Idempotent and safe to run on every deploy, so sequences can live in code:

        - an unknown id is created with the status given (DRAFT by default; ACTIVE
          passes :meth:`activate`'s checks: an active step, ``enroll_existing`` honoured);
        - a stored sequence gets the new definition (name, trigger, steps, settings) and
          keeps its lifecycle: its status and pause, so an operator's pause survives a
          redeploy. The version goes up by one and its live enrollments are replanned:
          they go on from where they were with the new steps (see the explanation of
          ``advance`` for the exact rules);
        - a definition equal to what is stored writes nothing and returns the stored one;
        - given ``status=ACTIVE``, a stored draft is then activated; a paused one stays
          paused (:meth:`resume` it). Given PAUSED or ARCHIVED while the stored status
          differs raises :class:`~dripcore.errors.SequenceStateError`: :meth:`pause` and
          :meth:`archive` do that. An archived sequence can't be edited.

        :meth:`sync_sequences` saves a whole set of definitions and reports what changed.

        Retry-safe: the edit is stored first (every tick from then on reads the
        new steps), then its enrollments are replanned page by page. A marker
        (the counter ``replan:pending``) is set before and cleared after, so if
        the replan fails part-way (a store error, a crash), saving again (the
        same edit, or a newer one) replans every live enrollment afresh from
        its last send, which finishes it.
        """
        return lifecycle.save_sequence(self._context, sequence)

    def sync_sequences(self, definitions: Iterable[Sequence]) -> SequenceSync:
        """Bring the stored sequences in line with ``definitions`` (sequences kept as code).

        Every definition is checked first (a duplicate id, a status other than DRAFT or
        ACTIVE, or a refused sender raises before anything is written); then each is
        saved as :meth:`save_sequence` does: created, updated in place keeping its
        lifecycle, activated (a draft given as ACTIVE), or left as it is. Archived
        sequences are left alone, and stored sequences that no definition names are
        reported as ``undefined``, never changed. A draft whose activation can't enroll a
        member of its trigger list (:class:`~dripcore.errors.ContactNotFound`) stays a draft
        and is reported in ``failed`` while the others are synced, so one bad contact does
        not stop a worker from starting. Returns a
        :class:`~dripcore.engine.SequenceSync` (its ``str()`` is a line for your log; it is
        also logged on the ``dripcore`` logger at INFO).

        Run it at start-up, in each process or once per deploy: it is idempotent, so
        processes starting together are safe (a save that finds another process saved the
        sequence in between reads it again and retries), and a sync that failed part-way is
        finished by running it again.
        """
        return definitions_module.sync_sequences(self._context, definitions)

    def get_sequence(self, sequence_id: str) -> Sequence:
        """The sequence, or :class:`~dripcore.errors.SequenceNotFound`."""
        return queries.get_sequence(self._context, sequence_id)

    def sequences(self, status: SequenceStatus | None = None) -> list[Sequence]:
        """Every sequence (of one status), ordered by id."""
        return queries.sequences(self._context, status)

    def activate(self, sequence_id: str, *, enroll_existing: bool | None = None) -> Sequence:
        """Start a draft (or resume a paused) sequence; an active one is returned unchanged
        (with ``enroll_existing=True`` given, its trigger list's members are enrolled: a backfill).

        With ``enroll_existing`` (default: the sequence's own setting) the
        trigger list's current members are enrolled at once.

        Retry-safe: the members are enrolled first, while the sequence is still
        a draft (nothing is sent to them before it is active), and the status
        changes last. If that fails part-way, the sequence is still a draft, and
        calling ``activate`` again enrolls the rest (enrollment is idempotent)
        and activates it. A member whose contact can't be looked up keeps it a
        draft too (:class:`~dripcore.errors.ContactNotFound` naming it).
        """
        return lifecycle.activate(self._context, sequence_id, enroll_existing=enroll_existing)

    def pause(self, sequence_id: str) -> Sequence:
        """Stop all sending of a sequence; new triggers do not enroll meanwhile.

        While it is paused, its active enrollments show as PAUSED (since the
        sequence's pause) in :meth:`enrollments`, :meth:`get_enrollment`,
        :meth:`stats` and :meth:`overview`; :meth:`resume` gives them back as
        active. The pause is one write of the sequence (its enrollments are not
        rewritten), so a pause that fails changed nothing and can be called again.
        """
        return lifecycle.pause(self._context, sequence_id)

    def resume(self, sequence_id: str, *, policy: PausePolicy | None = None) -> Sequence:
        """Resume a paused sequence.

        BUMP (the default policy of a sequence): an overdue step goes once per
        contact, now, and later steps keep their delays: stale sends are
        bumped, never flooded. EXTEND: every due time moves later by the
        length of the pause.

        All or nothing: the new status and (under EXTEND) every shifted due
        time are written in one transaction
        (:meth:`Store.resume_sequence <dripcore.ports.Store.resume_sequence>`),
        so a resume that fails changed nothing and can simply be called again.
        (On a store without that method, EXTEND shifts page by page and a
        failure part-way leaves it half done.)
        """
        return lifecycle.resume(self._context, sequence_id, policy=policy)

    def archive(self, sequence_id: str) -> Sequence:
        """End a sequence for good: every active or paused enrollment exits (reason ARCHIVED).

        Retry-safe: the sequence is archived first (nothing more is sent), then
        its enrollments exit page by page. If that fails part-way, calling
        ``archive`` again on the archived sequence exits the rest.
        """
        return lifecycle.archive(self._context, sequence_id)

    def delete_sequence(self, sequence_id: str) -> None:
        """Delete a sequence; refused while it has active or paused enrollments."""
        lifecycle.delete_sequence(self._context, sequence_id)

    def enroll(
        self,
        sequence_id: str,
        contact_id: str,
        *,
        started_at: datetime | None = None,
        variables: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> tuple[Enrollment, bool]:
        """Enroll a contact directly (an API or manual trigger); returns ``(enrollment, created)``.

        Idempotent: an existing ACTIVE or PAUSED enrollment is returned with
        ``created=False``. A finished one raises
        :class:`~dripcore.errors.EnrollmentConflict` unless the sequence's
        re-entry policy allows a new one. Draft, paused and archived sequences
        raise :class:`~dripcore.errors.SequenceStateError`; a suppressed
        contact raises :class:`~dripcore.errors.ContactSuppressed`.
        """
        return enrolling.enroll(
            self._context, sequence_id, contact_id, started_at=started_at, variables=variables, key=key
        )

    def enroll_many(
        self,
        sequence_id: str,
        contact_ids: list[str] | tuple[str, ...],
        *,
        started_at: datetime | None = None,
        variables: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> EnrollManyResult:
        """Enroll many contacts at once (an API call with ``contactIds``, an import); returns
        an :class:`~dripcore.engine.EnrollManyResult`: each contact's
        :class:`~dripcore.engine.EnrollOutcome` and enrollment.

        Each contact gets what :meth:`enroll` would do, reported instead of raised:
        CREATED, EXISTING (already ACTIVE or PAUSED in it), CONFLICT (finished it,
        no re-entry), SUPPRESSED, UNKNOWN_CONTACT; the others are enrolled all
        the same. A contact id given twice counts once. The created ones publish
        their ``Subscribed`` events and wake :meth:`run` once. One contact look-up
        (:meth:`ContactDirectory.get_many <dripcore.ports.ContactDirectory.get_many>`)
        and one store write per 10,000 contacts
        (:meth:`Store.add_enrollment_batch <dripcore.ports.Store.add_enrollment_batch>`).

        Bad input writes nothing: ``contact_ids`` not a list or tuple, or an id in
        it that is not a valid id, raises :class:`~dripcore.errors.InvalidArgument`
        naming it (``contact_ids[3]``); a draft, paused or archived sequence
        raises :class:`~dripcore.errors.SequenceStateError`, as :meth:`enroll` does.
        Retry-safe: if the store fails part-way, calling it again enrolls the rest
        (those already in come back EXISTING).
        """
        return enrolling.enroll_many(
            self._context, sequence_id, contact_ids, started_at=started_at, variables=variables, key=key
        )

    def notify(self, event: TriggerEvent) -> list[Enrollment]:
        """A trigger event happened: exit enrollments whose goal it meets, and enroll
        the contact into every ACTIVE sequence it fires (both the "any" and the
        value-scoped variants). Returns the enrollments created.

        Re-firing a trigger for a contact already enrolled is a no-op; a keyed
        event (an order id) enrolls once per key.
        """
        return enrolling.notify(self._context, event)

    def pause_enrollment(self, enrollment_id: str) -> Enrollment:
        """Hold one contact's enrollment; nothing is sent until it is resumed."""
        return enrollment_actions.pause_enrollment(self._context, enrollment_id)

    def resume_enrollment(self, enrollment_id: str, *, policy: PausePolicy | None = None) -> Enrollment:
        """Resume one paused enrollment (policy: the sequence's, unless given)."""
        return enrollment_actions.resume_enrollment(self._context, enrollment_id, policy=policy)

    def release(self, enrollment_id: str) -> Enrollment:
        """Let an enrollment held by a failed email go on to its next step, without that email.

        An enrollment whose step's email failed for good (retries exhausted, refused by
        the provider, a template that can't be rendered) is held (PAUSED) rather than
        moved on silently; this is the operator's "skip it". The next step keeps its
        delay from the failed one. See also :meth:`resend`.
        """
        return enrollment_actions.release(self._context, enrollment_id)

    def resend(self, enrollment_id: str) -> Enrollment:
        """Send again the step whose email failed, then let the held enrollment go on.

        The step is rendered afresh (so a fixed template or contact takes effect) and its
        message put back in the outbox with the same idempotency key; the enrollment resumes
        and goes on to its next step once that email is delivered. Calling it again after a
        failure half-way finishes it. Raises :class:`~dripcore.errors.InvalidTransition` when
        the enrollment's last step did not fail, and the :class:`~dripcore.render.RenderError`
        if the step still can't be rendered. Needs a store with
        :meth:`~dripcore.ports.Store.requeue_message`. See also :meth:`release`.
        """
        return enrollment_actions.resend(self._context, enrollment_id)

    def cancel_enrollment(self, enrollment_id: str) -> Enrollment:
        """Take one contact out of a sequence (reason MANUAL)."""
        return enrollment_actions.cancel_enrollment(self._context, enrollment_id)

    def contact_unsubscribed(self, contact_id: str) -> int:
        """The contact unsubscribed: suppress them and exit all their enrollments. Returns how many exited."""
        return enrolling.contact_exits(self._context, contact_id, ExitReason.UNSUBSCRIBED)

    def contact_bounced(self, contact_id: str) -> int:
        """The contact's address bounced permanently: suppress and exit everything."""
        return enrolling.contact_exits(self._context, contact_id, ExitReason.BOUNCED)

    def contact_complained(self, contact_id: str) -> int:
        """The contact marked an email as spam: suppress and exit everything."""
        return enrolling.contact_exits(self._context, contact_id, ExitReason.COMPLAINED)

    def contact_suppressed(self, contact_id: str, reason: ExitReason | str) -> int:
        """The contact must not be mailed, for ``reason``: suppress them and exit all their enrollments.

        ``reason`` is a suppression reason (an :class:`ExitReason` or its value):
        UNSUBSCRIBED, BOUNCED, COMPLAINED, INVALID_ADDRESS (the provider rejected the
        address), or SUPPRESSED (any other cause, such as an operator's list).
        :meth:`contact_unsubscribed`, :meth:`contact_bounced` and :meth:`contact_complained`
        are its special cases. Another reason raises :class:`~dripcore.errors.InvalidArgument`.
        Returns how many enrollments exited.
        """
        return enrolling.contact_exits(self._context, contact_id, reason)

    def record_open(self, enrollment_id: str, position: int) -> bool:
        """Record that the contact opened a step's email. Idempotent; returns True the first time.

        Raises :class:`~dripcore.errors.InvalidEngagement` for a step whose email was never sent.
        """
        return engagement.record_open(self._context, enrollment_id, position)

    def record_click(self, enrollment_id: str, position: int, link: str | None = None) -> bool:
        """Record a click on a step's email (optionally which link). Idempotent per link.

        The first click in a step also counts as an open, and fires the
        AFTER_FIRST_CLICK trigger with the mailing id ``"{sequence_id}:{position}"``.
        Raises :class:`~dripcore.errors.InvalidEngagement` for a step whose
        email was never sent (a click for an unknown mailing).
        """
        return engagement.record_click(self._context, enrollment_id, position, link)

    def sweep_anniversaries(self, day: date) -> list[Enrollment]:
        """Enroll every contact whose birthday (or sign-up date) falls on ``day``
        into the ACTIVE anniversary sequences, once per contact per year.

        Feb 29 anniversaries are swept on Feb 28 in common years. The first step
        counts its delay from 00:00 of ``day`` in the contact's zone (fallback:
        the sequence's, then UTC), so a birthday email arrives on the birthday
        where the contact lives: sweep early (at 00:00 UTC, as the reference
        products do, or a little before the first zone's midnight) and the
        enrollments wait for their local midnight.

        :meth:`run` calls it itself once a day (see ``anniversary_sweep_at``).
        Sweeping a day again enrolls nobody twice: a year's enrollment blocks
        another for that year even once it completed or exited, whatever the
        sequence's reentry policy.
        """
        return enrolling.sweep_anniversaries(self._context, day)

    def tick(self) -> TickReport:
        """One round of work: advance due enrollments, commit, deliver, retry.

        Safe to run from several workers at once: claims are leased. Whatever
        goes wrong for one enrollment, contact, message or sequence (its
        decoding, contact look-up, rendering, encoding for the store, send or
        settle) is reported in :attr:`TickReport.errors` and set aside for
        ``set_aside_for``; the rest of the batch goes on in this same tick.
        Only a fault of the whole (the store or the contact directory failing
        for everyone) raises, leaving the batch to be picked up again.
        """
        return tick.tick(self._context)

    def next_wake_at(self) -> datetime | None:
        """When there will next be work: the earliest due enrollment or retry, or the
        next anniversary sweep (see :meth:`run`) while an ACTIVE sequence has an
        anniversary trigger."""
        return running.next_wake_at(self._context)

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        idle: float = 30.0,
        on_tick: Callable[[TickReport], None] | None = None,
        max_ticks: int | None = None,
    ) -> None:
        """Tick until stopped, sleeping until the next due time rather than polling.

        A new enrollment in this process wakes it early, and so does one in
        another process when the store can hear it (PostgreSQL's ``LISTEN``,
        SQLite's ``data_version``, within about 0.1 s); otherwise ``idle``
        bounds the sleep, so work written by other processes is picked up
        within that time. A ``stop`` event is looked at twice a second while
        idle, without ticking.

        The loop does not die of a fault in the data or the ports. One bad
        record is set aside by the tick itself (see :meth:`tick`); a tick
        that fails as a whole (the store down, the contact directory down, a
        bug meeting odd data) is logged with its traceback and tried again
        after a pause that doubles from 0.5 s up to ``idle``, for as long as
        it takes; leases and idempotency keys make the next tick pick up
        cleanly. What ends the loop: :meth:`stop` or setting ``stop`` (after
        the current batch), ``max_ticks`` ticks that ran (a failed one is not counted), a
        ``KeyboardInterrupt``/``SystemExit``, and an exception raised by your
        own ``on_tick`` callback, which is yours to handle.

        It also runs :meth:`sweep_anniversaries` itself, before the first
        tick and then once a day when ``anniversary_sweep_at`` (UTC) comes
        (:meth:`next_wake_at` wakes it for that while an ACTIVE sequence has
        an anniversary trigger). On starting it sweeps the latest due day and
        the ``anniversary_catch_up_days`` before it, the days missed while no
        worker ran. Sweeping a day again enrolls nobody twice, so several
        workers and restarts are safe. A failing sweep is logged and tried
        again after a pause that doubles from 0.5 s up to ``idle``; it never
        stops the loop or the ticks.
        """
        running.run(self._context, stop=stop, idle=idle, on_tick=on_tick, max_ticks=max_ticks)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch."""
        running.stop(self._context)

    def enrollments(
        self,
        sequence_id: str,
        *,
        status: EnrollmentStatus | None = None,
        contact_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        last_step_sent: int | None = None,
        order: EnrollmentOrder = EnrollmentOrder.ID,
    ) -> list[Enrollment]:
        """Who is in a sequence: which step they are on and when the next is due.

        ``contact_id`` narrows it to one contact's enrollments (oldest first).
        ``last_step_sent`` keeps those whose last sent step is at that position
        (0: none sent yet). ``order=EnrollmentOrder.NEXT_DUE`` (or ``"next_due"``)
        lists the soonest due first, those with nothing due last, ties by id.
        A negative position or an unknown order raises
        :class:`~dripcore.errors.InvalidArgument`.
        """
        return queries.enrollments(
            self._context, sequence_id, status=status, contact_id=contact_id, limit=limit, offset=offset,
            last_step_sent=last_step_sent, order=order,
        )  # fmt: skip

    def get_enrollment(self, enrollment_id: str) -> Enrollment:
        """One enrollment, or :class:`~dripcore.errors.EnrollmentNotFound`."""
        return queries.get_enrollment(self._context, enrollment_id)

    def overview(self) -> list[SequenceSummary]:
        """Every sequence with its trigger, step counts and enrollment counts (for a list page)."""
        return queries.overview(self._context)

    def stats(self, sequence_id: str) -> SequenceStats:
        """Recipients, active, paused, completed, exited by reason, completion rate, per-step counts."""
        return queries.stats(self._context, sequence_id)
