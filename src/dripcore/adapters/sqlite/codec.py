"""The SQLite row codec: enrollments and outbox messages to and from rows (instants as integer microseconds)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from ...model import UTC, Enrollment, EnrollmentStatus, SenderIdentity
from ...ports import Email, OutboxMessage, OutboxStatus
from .._common import dumps, dumps_text_map

__all__ = [
    "ENROLLMENT_COLUMNS", "EPOCH", "LIVE_STATUSES", "MICROSECOND", "NULL", "OR_NULL", "OUTBOX_COLUMNS",
    "enrollment_from_row", "enrollment_state", "from_instant", "instant", "message_from_row", "message_row",
    "opt_from_instant",
]  # fmt: skip

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_EMPTY: frozenset[Any] = frozenset()
_NO_VARIABLES: Mapping[str, Any] = MappingProxyType({})  # read-only, so every enrollment may share it
LIVE_STATUSES = ("active", "paused")

# CPython's sqlite3 binds None through its adapter registry: about half a
# microsecond a value, ten times an int. The hot statements bind NULL in its
# place and SQL turns it back into NULL (``nullif``). No column holds NULL as a
# value: instants are above datetime.min (-6.2e16 microseconds) and text is
# bound as str.
NULL = -(2**62)
OR_NULL = f"nullif(?, {NULL})"


def instant(value: datetime) -> int:
    """An instant as integer microseconds since the Unix epoch (exact, sortable)."""
    return (value - EPOCH) // MICROSECOND


def from_instant(value: int) -> datetime:
    """The UTC instant of integer microseconds since the Unix epoch."""
    return EPOCH + timedelta(microseconds=value)


def opt_from_instant(value: int | None) -> datetime | None:
    """:func:`from_instant`, None staying None."""
    return None if value is None else EPOCH + timedelta(microseconds=value)


def _map_text(value: Mapping[str, Any]) -> str | None:
    return dumps(dict(value)) if value else None


def _ints_text(value: frozenset[int]) -> str | None:
    return dumps(sorted(value)) if value else None


def _clicks_text(value: frozenset[tuple[int, str]]) -> str | None:
    return dumps(sorted(value)) if value else None


ENROLLMENT_COLUMNS = (
    "id, sequence_id, contact_id, status, enrolled_at, next_due, last_step_sent, last_step_sent_at, "
    "exit_reason, paused_at, ended_at, variables, opened, clicked, skipped, dedupe_key, version"
)


_STATUSES = {status.value: status for status in EnrollmentStatus}


def enrollment_from_row(row: Seq[Any]) -> Enrollment:
    """An enrollment from a row of ``ENROLLMENT_COLUMNS``."""
    (
        id_, sequence_id, contact_id, status, enrolled_at, due, last, last_at,
        reason, paused_at, ended_at, variables, opened, clicked, skipped, key, version,
    ) = row  # fmt: skip
    # Every row goes through the validated constructor. A trusted shortcut for plain rows
    # (skipping the per-field checks) was measured at 1-3% of a tick (bench_sqlite.py's
    # population, one tick's dispatch decoded either way): under the 5% that would pay
    # for a second way to build an enrollment.
    return Enrollment(
        id=id_,
        sequence_id=sequence_id,
        contact_id=contact_id,
        status=_STATUSES.get(status, status),
        enrolled_at=EPOCH + timedelta(microseconds=enrolled_at),
        next_step_due_at=None if due is None else EPOCH + timedelta(microseconds=due),
        last_step_sent=last,
        last_step_sent_at=None if last_at is None else EPOCH + timedelta(microseconds=last_at),
        exit_reason=reason,
        paused_at=None if paused_at is None else EPOCH + timedelta(microseconds=paused_at),
        ended_at=None if ended_at is None else EPOCH + timedelta(microseconds=ended_at),
        variables=json.loads(variables) if variables else _NO_VARIABLES,
        opened=json.loads(opened) if opened else _EMPTY,
        clicked=json.loads(clicked) if clicked else _EMPTY,
        skipped=json.loads(skipped) if skipped else _EMPTY,
        key=key,
        version=version,
    )


def enrollment_state(e: Enrollment) -> tuple[Any, ...]:
    """The mutable columns of an enrollment, in ``_UPDATE_STATE`` order (without the version and rid);
    ``NULL`` stands for NULL."""
    return (
        e.status.value,
        NULL if e.next_step_due_at is None else (e.next_step_due_at - EPOCH) // MICROSECOND,
        e.last_step_sent,
        NULL if e.last_step_sent_at is None else (e.last_step_sent_at - EPOCH) // MICROSECOND,
        NULL if e.exit_reason is None else e.exit_reason.value,
        NULL if e.paused_at is None else (e.paused_at - EPOCH) // MICROSECOND,
        NULL if e.ended_at is None else (e.ended_at - EPOCH) // MICROSECOND,
        _map_text(e.variables) if e.variables else NULL,
        _ints_text(e.opened) if e.opened else NULL,
        _clicks_text(e.clicked) if e.clicked else NULL,
        _ints_text(e.skipped) if e.skipped else NULL,
    )


OUTBOX_COLUMNS = (
    "key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts, "
    "last_error, settled_at, provider_id, email_to, email_subject, email_html, email_text, email_sender, "
    "email_headers, email_identity"
)


@functools.lru_cache(maxsize=256)
def _sender_text(sender: SenderIdentity) -> str:
    return dumps({"from_email": sender.from_email, "from_name": sender.from_name, "reply_to": sender.reply_to})


_NO_EMAIL = (NULL,) * 7


def message_row(m: OutboxMessage, lease_owner: str | None, lease_until: int | None) -> tuple[Any, ...]:
    """An outbox row in ``_INSERT_MESSAGE`` order; ``NULL`` stands for NULL."""
    email = m.email
    if email is None:
        email_fields: tuple[Any, ...] = _NO_EMAIL
    else:
        identity = (email.idempotency_key, email.enrollment_id, email.sequence_id, email.contact_id, email.position)
        own = (m.key, m.enrollment_id, m.sequence_id, m.contact_id, m.position)
        email_fields = (
            email.to,
            email.subject,
            NULL if email.html is None else email.html,
            NULL if email.text is None else email.text,
            NULL if email.sender is None else _sender_text(email.sender),
            dumps_text_map(email.headers) if email.headers else NULL,
            NULL if identity == own else dumps(identity),
        )
    return (
        m.key,
        m.enrollment_id,
        m.sequence_id,
        m.contact_id,
        m.position,
        m.status.value,
        (m.created_at - EPOCH) // MICROSECOND,
        NULL if m.next_attempt_at is None else (m.next_attempt_at - EPOCH) // MICROSECOND,
        m.attempts,
        NULL if m.last_error is None else m.last_error,
        NULL if m.settled_at is None else (m.settled_at - EPOCH) // MICROSECOND,
        NULL if m.provider_id is None else m.provider_id,
        *email_fields,
        NULL if lease_owner is None else lease_owner,
        NULL if lease_until is None else lease_until,
    )


def message_from_row(row: Seq[Any]) -> OutboxMessage:
    """An outbox message from a row of ``OUTBOX_COLUMNS``."""
    (
        key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts,
        last_error, settled_at, provider_id, to, subject, html, text, sender, headers, identity,
    ) = row  # fmt: skip
    email = None
    if to is not None:
        ident = (key, enrollment_id, sequence_id, contact_id, position) if identity is None else json.loads(identity)
        email = Email(
            idempotency_key=ident[0],
            enrollment_id=ident[1],
            sequence_id=ident[2],
            contact_id=ident[3],
            position=ident[4],
            to=to,
            subject=subject,
            html=html,
            text=text,
            sender=None if sender is None else SenderIdentity(**json.loads(sender)),
            headers=json.loads(headers) if headers else _NO_VARIABLES,
        )
    return OutboxMessage(
        key=key,
        enrollment_id=enrollment_id,
        sequence_id=sequence_id,
        contact_id=contact_id,
        position=position,
        email=email,
        status=OutboxStatus(status),
        created_at=from_instant(created_at),
        next_attempt_at=opt_from_instant(next_attempt_at),
        attempts=attempts,
        last_error=last_error,
        settled_at=opt_from_instant(settled_at),
        provider_id=provider_id,
    )
