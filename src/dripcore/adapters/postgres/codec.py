"""The PostgreSQL row codec: enrollments and outbox messages to and from rows, and batches as JSON documents."""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta
from typing import Any

from ...model import UTC, Enrollment, SenderIdentity
from ...ports import Email, OutboxMessage, OutboxStatus
from .._common import dumps

__all__ = [
    "ENROLLMENT_COLUMNS", "EPOCH", "OUTBOX_COLUMNS", "enrollment_columns", "enrollment_doc", "enrollment_from_row",
    "iso", "message_doc", "message_from_row", "micros", "text_array",
]  # fmt: skip

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EMPTY: frozenset[Any] = frozenset()


def micros(value: datetime) -> int:
    """An instant as integer microseconds since the Unix epoch (a NOTIFY payload)."""
    return (value - EPOCH) // _MICROSECOND


ENROLLMENT_COLUMNS = (
    "id, sequence_id, contact_id, status, enrolled_at, next_due, last_step_sent, last_step_sent_at, "
    "exit_reason, paused_at, ended_at, variables::text, opened::text, clicked::text, skipped::text, dedupe_key, version"
)
OUTBOX_COLUMNS = (
    "key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts, "
    "last_error, settled_at, provider_id, email::text"
)


def enrollment_from_row(row: Seq[Any]) -> Enrollment:
    """An enrollment from a row of ``ENROLLMENT_COLUMNS`` (validated by ``Enrollment``)."""
    (
        id_, sequence_id, contact_id, status, enrolled_at, due, last, last_at,
        reason, paused_at, ended_at, variables, opened, clicked, skipped, key, version,
    ) = row  # fmt: skip
    return Enrollment(
        id=id_,
        sequence_id=sequence_id,
        contact_id=contact_id,
        status=status,
        enrolled_at=enrolled_at,
        next_step_due_at=due,
        last_step_sent=last,
        last_step_sent_at=last_at,
        exit_reason=reason,
        paused_at=paused_at,
        ended_at=ended_at,
        variables=json.loads(variables) if variables else {},
        opened=json.loads(opened) if opened else _EMPTY,
        clicked=json.loads(clicked) if clicked else _EMPTY,
        skipped=json.loads(skipped) if skipped else _EMPTY,
        key=key,
        version=version,
    )


def enrollment_columns(e: Enrollment) -> tuple[Any, ...]:
    """Every stored column of ``e`` but the version, as statement parameters (JSON columns as text)."""
    return (
        e.id,
        e.sequence_id,
        e.contact_id,
        e.key,
        e.status.value,
        e.enrolled_at,
        e.next_step_due_at,
        e.last_step_sent,
        e.last_step_sent_at,
        None if e.exit_reason is None else e.exit_reason.value,
        e.paused_at,
        e.ended_at,
        dumps(dict(e.variables)) if e.variables else None,
        dumps(sorted(e.opened)) if e.opened else None,
        dumps(sorted(e.clicked)) if e.clicked else None,
        dumps(sorted(e.skipped)) if e.skipped else None,
    )


# A batch travels to the server as one JSON document (an array of rows, each an
# array of columns) that the statement unpacks with jsonb_array_elements: one
# C-speed json.dumps instead of psycopg's per-element array dumping, which
# dominated a commit's client time.


def iso(value: datetime | None) -> str | None:
    """An instant as ISO 8601 text for a JSON batch (None stays None)."""
    return None if value is None else value.isoformat()


def enrollment_doc(e: Enrollment, version: int) -> list[Any]:
    """``e`` as a JSON row for ``_UPDATE_ENROLLMENTS``."""
    return [
        e.id, e.sequence_id, e.contact_id, e.key, e.status.value, e.enrolled_at.isoformat(),
        iso(e.next_step_due_at), e.last_step_sent, iso(e.last_step_sent_at),
        None if e.exit_reason is None else e.exit_reason.value, iso(e.paused_at), iso(e.ended_at),
        e.variables or None, sorted(e.opened) if e.opened else None, sorted(e.clicked) if e.clicked else None,
        sorted(e.skipped) if e.skipped else None, version,
    ]  # fmt: skip


def text_array(values: Iterable[str]) -> str:
    """A PostgreSQL ``text[]`` literal (psycopg's list dumping is slow for long lists)."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _email_doc(m: OutboxMessage) -> dict[str, Any] | None:
    email = m.email
    if email is None:
        return None
    document: dict[str, Any] = {"to": email.to, "subject": email.subject}
    if email.html is not None:
        document["html"] = email.html
    if email.text is not None:
        document["text"] = email.text
    if email.sender is not None:
        sender = email.sender
        document["sender"] = {
            "from_email": sender.from_email,
            "from_name": sender.from_name,
            "reply_to": sender.reply_to,
        }
    if email.headers:
        document["headers"] = dict(email.headers)
    identity = [email.idempotency_key, email.enrollment_id, email.sequence_id, email.contact_id, email.position]
    if identity != [m.key, m.enrollment_id, m.sequence_id, m.contact_id, m.position]:
        document["identity"] = identity
    return document


def message_doc(m: OutboxMessage, lease_owner: str | None, lease_until: datetime | None) -> list[Any]:
    """``m`` as a JSON row for ``_INSERT_MESSAGES``."""
    return [
        m.key, m.enrollment_id, m.sequence_id, m.contact_id, m.position, m.status.value, m.created_at.isoformat(),
        iso(m.next_attempt_at), m.attempts, m.last_error, iso(m.settled_at), m.provider_id, _email_doc(m),
        lease_owner, iso(lease_until),
    ]  # fmt: skip


def message_from_row(row: Seq[Any]) -> OutboxMessage:
    """An outbox message from a row of ``OUTBOX_COLUMNS``."""
    (
        key, enrollment_id, sequence_id, contact_id, position, status, created_at, next_attempt_at, attempts,
        last_error, settled_at, provider_id, email_text,
    ) = row  # fmt: skip
    email = None
    if email_text is not None:
        doc = json.loads(email_text)
        ident = doc.get("identity") or (key, enrollment_id, sequence_id, contact_id, position)
        sender = doc.get("sender")
        email = Email(
            idempotency_key=ident[0],
            enrollment_id=ident[1],
            sequence_id=ident[2],
            contact_id=ident[3],
            position=ident[4],
            to=doc["to"],
            subject=doc["subject"],
            html=doc.get("html"),
            text=doc.get("text"),
            sender=None if sender is None else SenderIdentity(**sender),
            headers=doc.get("headers") or {},
        )
    return OutboxMessage(
        key=key,
        enrollment_id=enrollment_id,
        sequence_id=sequence_id,
        contact_id=contact_id,
        position=position,
        email=email,
        status=OutboxStatus(status),
        created_at=created_at,
        next_attempt_at=next_attempt_at,
        attempts=attempts,
        last_error=last_error,
        settled_at=settled_at,
        provider_id=provider_id,
    )
