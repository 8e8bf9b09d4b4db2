"""What a tick reports: :class:`TickReport` and :class:`TickError`, and the tally a tick keeps while it runs."""

from __future__ import annotations

import attrs

__all__ = ["Tally", "TickError", "TickReport"]


@attrs.frozen(kw_only=True)
class TickError:
    """Something one tick set aside instead of stopping: which record, and why."""

    kind: str
    """What failed: ``enrollment``, ``sequence``, ``contact``, ``message``, ``messages``, ``events`` or ``store``."""
    id: str
    """The enrollment, message or contact it concerns: an id, or a message key."""
    error: str
    """What went wrong."""


@attrs.define(kw_only=True)
class _TickCounts:
    """The figures of a tick, written once here: :class:`TickReport` freezes them, :class:`Tally` counts them."""

    claimed: int = 0
    """Due enrollments claimed."""
    queued: int = 0
    """Steps committed to the outbox."""
    sent: int = 0
    """Messages the sender accepted."""
    skipped: int = 0
    """Steps passed over."""
    completed: int = 0
    """Enrollments that went through their last step."""
    exited: int = 0
    """Enrollments that left their sequence early."""
    deferred: int = 0
    """Due sends held back by the rate limiter or the frequency cap."""
    retried: int = 0
    """Transient failures scheduled for another attempt."""
    failed: int = 0
    """Messages given up on."""
    held: int = 0
    """Enrollments held because their step's email failed (see ``Drip.release`` and ``Drip.resend``)."""
    conflicts: int = 0
    """Enrollments changed by someone else mid-tick (picked up again next tick)."""
    messages: int = 0
    """Earlier messages (retries) claimed."""
    busy: bool = False
    """A batch came back full, so there is more to do now."""
    circuit_open: bool = False
    """The sender failed for everyone and sending is paused for a while (nothing is claimed meanwhile)."""


@attrs.frozen(kw_only=True)
class TickReport(_TickCounts):
    """What one :meth:`Drip.tick <dripcore.engine.Drip.tick>` did."""

    errors: tuple[TickError, ...] = ()
    """What was set aside, one :class:`TickError` each."""

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
    """What was set aside so far, one :class:`TickError` each."""

    def freeze(self) -> TickReport:
        """The report of what was counted."""
        return TickReport(**{**attrs.asdict(self, recurse=False), "errors": tuple(self.errors)})
