"""What a tick reports: :class:`TickReport` and :class:`TickError`, and the tally a tick keeps while it runs."""

from __future__ import annotations

import attrs

__all__ = ["Tally", "TickError", "TickReport"]


@attrs.frozen(kw_only=True)
class TickError:
    """Something one tick set aside instead of stopping: which record, and why."""

    kind: str
    id: str
    error: str


@attrs.define(kw_only=True)
class _TickCounts:
    """The figures of a tick, written once here: :class:`TickReport` freezes them, :class:`Tally` counts them."""

    claimed: int = 0
    queued: int = 0
    sent: int = 0
    skipped: int = 0
    completed: int = 0
    exited: int = 0
    deferred: int = 0
    retried: int = 0
    failed: int = 0
    held: int = 0
    conflicts: int = 0
    messages: int = 0
    busy: bool = False
    circuit_open: bool = False


@attrs.frozen(kw_only=True)
class TickReport(_TickCounts):
    """What one :meth:`Drip.tick <dripcore.engine.Drip.tick>` did.

    ``claimed``: due enrollments claimed; ``queued``: steps committed to the
    outbox; ``sent``: messages the sender accepted; ``skipped``: steps passed
    over; ``completed``/``exited``: enrollments that finished; ``deferred``:
    due sends held back by the rate limiter or the frequency cap;
    ``retried``: transient failures scheduled for another attempt;
    ``failed``: messages given up on; ``held``: enrollments held because their
    step's email failed (see :meth:`Drip.release <dripcore.engine.Drip.release>`
    and :meth:`Drip.resend <dripcore.engine.Drip.resend>`); ``conflicts``:
    enrollments changed by someone else mid-tick (picked up again next tick);
    ``messages``: earlier messages (retries) claimed; ``busy``: a batch came
    back full, so there is more to do now; ``circuit_open``: the sender failed
    for everyone and sending is paused for a while (nothing is claimed
    meanwhile); ``errors``: what was set aside, one :class:`TickError` each.
    """

    errors: tuple[TickError, ...] = ()

    def summary(self) -> str:
        """A one-line summary for logs and terminals."""
        parts = [
            f"claimed={self.claimed}",
            f"sent={self.sent}",
            f"skipped={self.skipped}",
            f"completed={self.completed}",
            f"exited={self.exited}",
            f"deferred={self.deferred}",
            f"retried={self.retried}",
            f"failed={self.failed}",
        ]
        if self.held:
            parts.append(f"held={self.held}")
        if self.conflicts:
            parts.append(f"conflicts={self.conflicts}")
        if self.circuit_open:
            parts.append("circuit=open")
        if self.errors:
            parts.append(f"errors={len(self.errors)}")
        return " ".join(parts)


@attrs.define(kw_only=True)
class Tally(_TickCounts):
    """A tick's figures while it runs (one per tick, never on the engine: ticks may run in parallel)."""

    errors: list[TickError] = attrs.Factory(list)

    def freeze(self) -> TickReport:
        """The report of what was counted."""
        return TickReport(**{**attrs.asdict(self, recurse=False), "errors": tuple(self.errors)})
