"""The imperative shell: :class:`Drip` wires the ports to the pure core.

Everything that touches the outside world happens here, and only here: reading
the clock, loading and committing through the :class:`~dripcore.ports.Store`,
handing emails to the :class:`~dripcore.ports.MailSender`, publishing events.
The decisions themselves are made by :mod:`dripcore.scheduler`.

Delivery: never lost, never doubled
-----------------------------------

:meth:`Drip.tick` claims due enrollments under a lease, runs
:func:`~dripcore.scheduler.advance` on each, and commits the new states
together with one outbox message per send, in one transaction. It then hands
each message to the sender with the idempotency key
``"{enrollment_id}:{position}"`` and records the outcome. A crash at any point
leaves either the old state, or the new state plus its pending message, which
the next tick (of any worker) delivers once the lease has expired. A sender
that honours the key therefore never sends twice, and nothing is lost.

A transient failure is retried with exponential backoff; a permanent one
becomes ``StepFailed`` and, for a bounce or complaint, suppresses the contact
and exits all their enrollments. One bad row or one bad template is reported
and set aside; it never stops the tick for the others.

How the code is laid out
------------------------

:class:`Drip` (``drip.py``) is a thin facade: each public method hands its work,
with the engine's :class:`~dripcore.engine.context.Context` (ports, settings,
runtime state), to the module that does that job:

- ``config.py``: the settings as value objects (:class:`RetryPolicy`, :class:`Limits`), flat keywords mapped in;
- ``context.py``: the ports, settings and runtime state the modules share, and the plain reads;
- ``lifecycle.py``: a sequence's lifecycle (save and replan, activate, pause, resume, archive);
- ``definitions.py``: sequences kept as code, synced at start-up (:class:`SequenceSync`);
- ``enrolling.py``: enroll, trigger events and goals, suppression exits, anniversaries;
- ``enrollment_actions.py``: an operator's actions on one enrollment (pause, resume, release, resend, cancel);
- ``engagement.py``: opens and clicks;
- ``tick.py``: one tick, gather -> plan (advance, frequency cap, rate limit) -> commit -> deliver;
- ``delivery.py``: messages to the sender, outcomes recorded and settled;
- ``sending.py``: the circuit breaker and the send pool;
- ``commits.py``: transitions written through the store, with their counters;
- ``lookups.py``: a batch's contacts, a bad record told from a directory that is down;
- ``outbox.py``: a step rendered into its outbox message;
- ``running.py``: the run loop;
- ``sender_rules.py``: the host's checks of From addresses (:class:`AuthorizedDomains`), run on save and activate;
- ``queries.py``: read-only questions and figures;
- ``report.py``: :class:`TickReport` and :class:`TickError`;
- ``text.py``: error text safe for any store, and :func:`new_id`.
"""

from __future__ import annotations

from ..planning import CapAction, FrequencyCap
from .config import Limits, RetryPolicy
from .definitions import SequenceSync
from .drip import Drip
from .enrolling import EnrollManyResult, EnrollOutcome
from .report import TickError, TickReport
from .sender_rules import AuthorizedDomains, SenderRule
from .text import new_id

__all__ = [
    "AuthorizedDomains",
    "CapAction",
    "Drip",
    "EnrollManyResult",
    "EnrollOutcome",
    "FrequencyCap",
    "Limits",
    "RetryPolicy",
    "SenderRule",
    "SequenceSync",
    "TickError",
    "TickReport",
    "new_id",
]
