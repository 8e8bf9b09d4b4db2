"""Sequences kept as code: :func:`sync_sequences` brings the store in line with a set of definitions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs

from ..errors import ContactNotFound, InvalidArgument, SequenceStateError
from ..model import Sequence, SequenceStatus
from .context import Context, log
from .lifecycle import definition_of, save_sequence
from .sender_rules import check_senders

__all__ = ["SequenceSync", "sync_sequences"]


def _ids(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _errors(values: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(values))


@attrs.frozen(kw_only=True)
class SequenceSync:
    """What :meth:`Drip.sync_sequences <dripcore.engine.Drip.sync_sequences>` did, as sequence ids.

    ``str()`` is a one-line summary for a log, such as
    ``sequences: 1 created, 2 unchanged; not in code: legacy``.
    """

    created: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    """New sequences stored."""
    updated: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    """Sequences whose definition changed: a new version stored, its live enrollments replanned."""
    activated: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    """Stored drafts that a definition given as ACTIVE made live."""
    unchanged: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    """Definitions already stored as given: nothing written."""
    archived: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    """Definitions of archived sequences: left alone."""
    undefined: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    """Stored sequences, not archived, that no definition names: reported, never touched."""
    failed: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    """Drafts whose activation could not enroll a member of their trigger list (it can't be looked
    up): they stay drafts, and the next sync tries again."""
    errors: Mapping[str, str] = attrs.field(factory=dict, converter=_errors, hash=False)
    """The error of each ``failed`` sequence, by id."""

    @property
    def ok(self) -> bool:
        """Whether every definition was saved as given (nothing ``failed``)."""
        return not self.failed

    @property
    def changed(self) -> bool:
        """Whether anything was written: a sequence created, updated or activated."""
        return bool(self.created or self.updated or self.activated)

    def __str__(self) -> str:
        counts = [
            f"{len(ids)} {name}"
            for name, ids in (("created", self.created), ("updated", self.updated), ("activated", self.activated),
                              ("unchanged", self.unchanged), ("archived (left alone)", self.archived),
                              ("failed", self.failed))
            if ids
        ]  # fmt: skip
        text = "sequences: " + (", ".join(counts) or "none defined")
        if self.failed:
            text += "; failed: " + ", ".join(f"{i} ({self.errors.get(i, '?')})" for i in self.failed)
        if self.undefined:
            text += "; not in code: " + ", ".join(self.undefined)
        return text


def sync_sequences(ctx: Context, definitions: Iterable[Sequence]) -> SequenceSync:
    """Save each definition as :func:`~dripcore.engine.lifecycle.save_sequence` does, after
    checking them all; report what changed."""
    if isinstance(definitions, (Sequence, str, bytes)) or not isinstance(definitions, Iterable):
        raise InvalidArgument("definitions", definitions, "must be an iterable of Sequence")
    given = list(definitions)
    seen: set[str] = set()
    for index, sequence in enumerate(given):
        if not isinstance(sequence, Sequence):
            raise InvalidArgument(
                f"definitions[{index}]", sequence, f"must be a Sequence, not {type(sequence).__name__}"
            )
        if sequence.id in seen:
            raise InvalidArgument("definitions", sequence.id, "defines this sequence id twice")
        seen.add(sequence.id)
        if sequence.status not in (SequenceStatus.DRAFT, SequenceStatus.ACTIVE):
            raise InvalidArgument(
                f"definitions[{index}].status", sequence.status.value,
                "a definition is DRAFT (the default) or ACTIVE: pausing and archiving are pause() and archive()",
            )  # fmt: skip
        if sequence.status is SequenceStatus.ACTIVE and not sequence.active_steps():
            raise SequenceStateError(
                sequence_id=sequence.id, status=sequence.status.value, action="define",
                hint="it is given as ACTIVE with no active step to send",
            )  # fmt: skip
        check_senders(ctx.sender_rules, sequence)
    stored = {s.id: s for s in ctx.store.list_sequences(None)}
    created: list[str] = []
    updated: list[str] = []
    activated: list[str] = []
    unchanged: list[str] = []
    archived: list[str] = []
    failed: dict[str, str] = {}
    for sequence in given:
        before = stored.get(sequence.id)
        if before is not None and before.status is SequenceStatus.ARCHIVED:
            archived.append(sequence.id)
            continue
        try:
            after = save_sequence(ctx, sequence)
        except ContactNotFound as exc:
            # Activating it enrolls its trigger list's members, and one can't be looked up: it
            # is stored as a draft, and the others are synced all the same (the next sync, or
            # activate(), finishes it). One bad member must not stop a worker from starting.
            log.error("sequence %s could not be activated: %s", sequence.id, exc)
            failed[sequence.id] = str(exc)
            continue
        if before is None:
            created.append(sequence.id)
            continue
        if definition_of(sequence, before) != before:
            updated.append(sequence.id)
        if before.status is SequenceStatus.DRAFT and after.status is SequenceStatus.ACTIVE:
            activated.append(sequence.id)
        if after.version == before.version:
            unchanged.append(sequence.id)
    undefined = sorted(i for i, s in stored.items() if i not in seen and s.status is not SequenceStatus.ARCHIVED)
    report = SequenceSync(
        created=created, updated=updated, activated=activated, unchanged=unchanged, archived=archived,
        undefined=undefined, failed=list(failed), errors=failed,
    )  # fmt: skip
    log.info("%s", report)
    return report
