"""What every engine module works with: the ports, the settings, this worker's runtime state and the plain reads.

A :class:`Context` is made once by :class:`~dripcore.engine.Drip` and handed to the
functions of the other modules. It holds nothing of one tick or one call: per-batch
state lives in those functions (ticks may run on several threads at once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from collections.abc import Sequence as Seq
from datetime import date, datetime, time
from typing import TYPE_CHECKING

from .._checks import check_id
from ..errors import ContactNotFound, EnrollmentNotFound, SequenceNotFound
from ..model import Contact, Enrollment, Event, Sequence, to_utc
from ..ports import Clock, ContactDirectory, EventSink, MailSender, RateLimiter, Renderer, Store
from .config import DEFAULT_CATCH_UP_DAYS, DEFAULT_SWEEP_AT, Limits, RetryPolicy
from .report import TickError
from .sender_rules import SenderRule
from .sending import Breaker, SendPool
from .text import describe

if TYPE_CHECKING:
    from ..planning import FrequencyCap

__all__ = ["Context", "log"]

log = logging.getLogger("dripcore")


class Context:
    """The engine's ports, settings and runtime state (breaker, send pool, wake-up and stop events)."""

    def __init__(
        self,
        *,
        store: Store,
        sender: MailSender,
        contacts: ContactDirectory,
        clock: Clock,
        events: EventSink | None,
        rate_limiter: RateLimiter | None,
        renderer: Renderer,
        retry: RetryPolicy,
        limits: Limits,
        frequency_cap: FrequencyCap | None,
        worker_id: str,
        new_id: Callable[[], str],
        anniversary_sweep_at: time | None = DEFAULT_SWEEP_AT,
        anniversary_catch_up_days: int = DEFAULT_CATCH_UP_DAYS,
        sender_rules: tuple[SenderRule, ...] = (),
    ) -> None:
        self.store = store
        self.sender = sender
        self.contacts = contacts
        self.clock = clock
        self.events = events
        self.rate_limiter = rate_limiter
        self.renderer = renderer
        self.retry = retry
        self.limits = limits
        self.frequency_cap = frequency_cap
        self.worker_id = worker_id
        self.new_id = new_id
        self.sender_rules = sender_rules
        self.breaker = Breaker()
        self.pool = SendPool()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.anniversary_sweep_at = anniversary_sweep_at
        self.anniversary_catch_up_days = anniversary_catch_up_days
        # The last day whose anniversary sweep this worker finished (None: not yet since it started).
        self.swept_through: date | None = None

    def now(self) -> datetime:
        """The clock's time, in UTC."""
        return to_utc(self.clock.now(), "clock.now()")

    def sequence(self, sequence_id: str) -> Sequence:
        """A sequence, or :class:`~dripcore.errors.SequenceNotFound`."""
        sequence = self.store.get_sequence(check_id(sequence_id, "sequence_id"))
        if sequence is None:
            raise SequenceNotFound(sequence_id)
        return sequence

    def contact(self, contact_id: str) -> Contact:
        """A contact, or :class:`~dripcore.errors.ContactNotFound`."""
        contact = self.contacts.get(check_id(contact_id, "contact_id"))
        if contact is None:
            raise ContactNotFound(contact_id)
        return contact

    def enrollment(self, enrollment_id: str) -> Enrollment:
        """An enrollment, or :class:`~dripcore.errors.EnrollmentNotFound`."""
        enrollment = self.store.get_enrollment(check_id(enrollment_id, "enrollment_id"))
        if enrollment is None:
            raise EnrollmentNotFound(enrollment_id)
        return enrollment

    def publish(self, events: Seq[Event], errors: list[TickError] | None = None) -> None:
        """Hand events to the sink. A sink that raises on a batch is given its events one at a
        time, so one bad event costs only itself (the events it took before raising may reach
        it twice: sinks are at least once); each failure is reported under its enrollment."""
        if not events or self.events is None:
            return
        try:
            self.events.publish(events)
            return
        except Exception as exc:
            if len(events) == 1:
                log.exception("event sink failed on %s of %s", events[0].wire_name, events[0].enrollment_id)
                if errors is not None:
                    errors.append(TickError(kind="events", id=events[0].enrollment_id, error=describe(exc)))
                return
            log.warning("event sink failed on %d events (%s); one at a time now", len(events), describe(exc))
        for event in events:
            self.publish((event,), errors)
