"""The dripcore exception family.

Every error dripcore raises on purpose derives from :class:`DripcoreError`, so a
host can catch the whole family in one place. Errors carry their context as
attributes (the field and value, the enrollment id and status, the path), not
only in the message, so callers can react without parsing text.

The tree::

    DripcoreError
    ├── ValidationError (also ValueError)      bad input, named by field and value
    │   ├── InvalidArgument                    a call's argument of the wrong type or out of range
    │   ├── InvalidInstant                     not an aware datetime, or outside the years dripcore schedules
    │   │   └── NaiveDatetimeError
    │   ├── DecodeError                        JSON or a stored row that does not decode exactly
    │   ├── InvalidDelay
    │   ├── InvalidStep
    │   │   └── DuplicateStepPosition
    │   ├── InvalidCondition
    │   ├── UnknownTriggerType
    │   ├── InvalidTrigger
    │   ├── InvalidTriggerEvent
    │   ├── InvalidTimezone
    │   ├── InvalidWindow
    │   ├── InvalidSequence
    │   ├── InvalidEnrollment
    │   ├── InvalidContact
    │   └── InvalidEngagement
    ├── InvalidTransition                      an action the state machine forbids
    ├── NotFound (also LookupError)
    │   ├── SequenceNotFound
    │   ├── ContactNotFound
    │   └── EnrollmentNotFound
    ├── SequenceStateError                     a lifecycle operation the sequence's status forbids
    ├── EnrollmentConflict                     enrolling again where the re-entry policy forbids it
    ├── ContactSuppressed                      enrolling a contact who unsubscribed, bounced or complained
    ├── InvalidUnsubscribeToken                an unsubscribe link's token that is malformed, tampered with or foreign
    ├── RenderError                            one step can't be rendered for one contact (names sequence, step, field)
    │   ├── UnknownVariable                    a template output a variable the contact doesn't have (policy ERROR)
    │   ├── TemplateNotFound                   a step's template_id is not in the template store
    │   ├── InvalidContent                     oversized, binary or not text
    │   └── RenderLimitExceeded                past one of the RenderLimits (time, items, size, loops)
    ├── SendError                              raised by MailSender implementations
    │   ├── TransientSendError                 retry later
    │   │   └── SenderUnavailable              the sender as a whole is down or misconfigured
    │   └── PermanentSendError                 never retry; may carry a bounce/complaint reason
    └── StoreError                             raised by Store implementations
        ├── ConcurrencyConflict                optimistic-concurrency check failed
        ├── SchemaTooNew                       a database written by a newer dripcore (SQL adapters)
        ├── UnreadableRecord                   a stored row that can't be read back (named by table and id)
        │   └── CorruptRecord                  the SQL adapters' unreadable row, naming where it is stored
        └── RecordRejected                     records the store can't hold as given (named by id)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConcurrencyConflict",
    "ContactNotFound",
    "ContactSuppressed",
    "CorruptRecord",
    "DecodeError",
    "DripcoreError",
    "DuplicateStepPosition",
    "EnrollmentConflict",
    "EnrollmentNotFound",
    "InvalidArgument",
    "InvalidCondition",
    "InvalidContact",
    "InvalidContent",
    "InvalidDelay",
    "InvalidEngagement",
    "InvalidEnrollment",
    "InvalidInstant",
    "InvalidSequence",
    "InvalidStep",
    "InvalidTimezone",
    "InvalidTransition",
    "InvalidTrigger",
    "InvalidTriggerEvent",
    "InvalidUnsubscribeToken",
    "InvalidWindow",
    "NaiveDatetimeError",
    "NotFound",
    "PermanentSendError",
    "RecordRejected",
    "RenderError",
    "RenderLimitExceeded",
    "SchemaTooNew",
    "SendError",
    "SenderNotAllowed",
    "SenderRuleFailed",
    "SenderUnavailable",
    "SequenceNotFound",
    "SequenceStateError",
    "StoreError",
    "TemplateNotFound",
    "TransientSendError",
    "UnknownTriggerType",
    "UnknownVariable",
    "UnreadableRecord",
    "ValidationError",
]


class DripcoreError(Exception):
    """The root of every error dripcore raises on purpose."""


def _shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut short when long; never raises (an int of
    thousands of digits can't be written, a value's own ``__repr__`` may fail)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__} that can't be shown>"
    return text if len(text) <= 300 else f"{text[:200]}...<{len(text)} characters>"


class ValidationError(DripcoreError, ValueError):
    """A value was rejected at construction.

    ``field`` names the offending field (dotted for nested values, such as
    ``"steps[2].delay"``) and ``value`` holds what was given.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={_shown(value)}: {reason}")


class InvalidArgument(ValidationError):
    """A call was given an argument of the wrong type or out of range: an id that is not
    a clean single-line string, a negative or non-integer limit, a status that is not the
    enum, a day that is not a date, a setting out of its bounds. ``field`` names the argument."""


class InvalidInstant(ValidationError):
    """An instant dripcore can't use: not a timezone-aware datetime, or outside the years it
    schedules (so that adding a delay, a window or a retry never overflows)."""


class DecodeError(ValidationError):
    """JSON (or a stored row) that does not decode to a dripcore value exactly: a missing or
    unknown key, a value of the wrong JSON type (``"false"`` for a boolean, ``1.9`` for an
    integer). ``field`` is the path to the offending value, such as ``"steps[1].active"``."""


class InvalidDelay(ValidationError):
    """A delay is negative, absurdly long, of an unknown unit, or unparseable."""


class InvalidStep(ValidationError):
    """A step is malformed: a bad position, no content, a bad sender."""


class DuplicateStepPosition(InvalidStep):
    """Two steps of one sequence share a position."""


class InvalidCondition(ValidationError):
    """A step condition is malformed or points at a missing or later step."""


class NaiveDatetimeError(InvalidInstant):
    """A datetime without a time zone was given where an instant is required."""


class UnknownTriggerType(ValidationError):
    """A trigger type that dripcore does not know."""


class InvalidTrigger(ValidationError):
    """A trigger value that does not fit its type."""


class InvalidTriggerEvent(ValidationError):
    """A trigger event that is malformed (no contact, a bad key, a bad value)."""


class InvalidTimezone(ValidationError):
    """A time zone name that is not in the IANA database."""


class InvalidWindow(ValidationError):
    """A send window with no allowed day, a bad or zero-length time range."""


class InvalidSequence(ValidationError):
    """A sequence whose fields are inconsistent or malformed."""


class InvalidEnrollment(ValidationError):
    """An enrollment whose fields contradict each other or its status."""


class InvalidContact(ValidationError):
    """A contact with a malformed field."""


class InvalidEngagement(ValidationError):
    """An open or click for a step whose email was never sent, or a malformed link."""


class InvalidTransition(DripcoreError):
    """The enrollment state machine does not allow this action in this status."""

    def __init__(self, *, enrollment_id: str, status: str, action: str) -> None:
        self.enrollment_id = enrollment_id
        self.status = status
        self.action = action
        super().__init__(f"can't {action} enrollment {enrollment_id!r} when status={status}")


class NotFound(DripcoreError, LookupError):
    """Something looked up by id does not exist."""

    kind = "object"

    def __init__(self, id: str) -> None:
        self.id = id
        super().__init__(f"no {self.kind} with id {id!r}")


class SequenceNotFound(NotFound):
    """No sequence with that id."""

    kind = "sequence"


class ContactNotFound(NotFound):
    """No contact with that id."""

    kind = "contact"


class EnrollmentNotFound(NotFound):
    """No enrollment with that id."""

    kind = "enrollment"


class SequenceStateError(DripcoreError):
    """The sequence's status forbids the requested operation."""

    def __init__(self, *, sequence_id: str, status: str, action: str, hint: str = "") -> None:
        self.sequence_id = sequence_id
        self.status = status
        self.action = action
        message = f"can't {action} sequence {sequence_id!r} when status={status}"
        super().__init__(f"{message}: {hint}" if hint else message)


class SenderNotAllowed(DripcoreError):
    """A sender rule refused a sequence's or a step's From address (the sequence is not saved
    or activated). ``sequence_id``, ``position`` (None for the sequence's own sender), ``step_name``,
    ``address`` and ``reason`` (what the rule said) name it."""

    def __init__(self, *, sequence_id: str, position: int | None, step_name: str, address: str, reason: str) -> None:
        self.sequence_id = sequence_id
        self.position = position
        self.step_name = step_name
        self.address = address
        self.reason = reason
        if position is None:
            where = "the sender"
        else:
            where = f"step {position}" + (f" ({step_name!r})" if step_name else "") + "'s sender"
        super().__init__(f"sequence {sequence_id!r}: {where} {address!r} is not allowed: {reason}")


class SenderRuleFailed(DripcoreError):
    """A sender rule raised instead of answering: ``rule`` names it, ``sequence_id`` and
    ``position`` (None for the sequence's own sender) say what it was checking, and the
    rule's exception is the ``__cause__``. The sequence is not saved or activated."""

    def __init__(self, *, rule: str, sequence_id: str, position: int | None, error: str) -> None:
        self.rule = rule
        self.sequence_id = sequence_id
        self.position = position
        where = "its sender" if position is None else f"step {position}'s sender"
        super().__init__(f"sender rule {rule} failed checking sequence {sequence_id!r} ({where}): {error}")


class EnrollmentConflict(DripcoreError):
    """The contact already went through the sequence and may not enter again."""

    def __init__(self, *, sequence_id: str, contact_id: str, enrollment_id: str, status: str) -> None:
        self.sequence_id = sequence_id
        self.contact_id = contact_id
        self.enrollment_id = enrollment_id
        self.status = status
        super().__init__(
            f"contact {contact_id!r} already has enrollment {enrollment_id!r} in sequence "
            f"{sequence_id!r} with status={status}, and the sequence's re-entry policy "
            "forbids a new one"
        )


class ContactSuppressed(DripcoreError):
    """The contact unsubscribed, bounced or complained and must not be enrolled."""

    def __init__(self, *, contact_id: str, reason: str) -> None:
        self.contact_id = contact_id
        self.reason = reason
        super().__init__(f"contact {contact_id!r} is suppressed ({reason}) and can't be enrolled")


class InvalidUnsubscribeToken(DripcoreError):
    """An unsubscribe link's token that :meth:`~dripcore.unsubscribe.UnsubscribeLinks.verify`
    refuses: malformed, tampered with, or signed with a secret it does not know. ``reason``
    says which; ``token`` is what was given (cut short in the message). Answer it with a 400
    and unsubscribe nobody."""

    def __init__(self, *, token: object, reason: str) -> None:
        self.token = token
        self.reason = reason
        # Only the start is shown: a log of refusals should not be a list of working links.
        shown = f"{token[:12]!r}..." if isinstance(token, str) and len(token) > 12 else _shown(token)
        super().__init__(f"unsubscribe token {shown}: {reason}")


class SendError(DripcoreError):
    """A mail sender could not send a message."""


class TransientSendError(SendError):
    """A temporary failure (a timeout, a 4xx SMTP reply): the message is retried."""


class SenderUnavailable(TransientSendError):
    """The sender as a whole can't send right now, whatever the message: its credentials were
    refused, it is misconfigured, or its service is down. Never the message's fault: the engine
    opens its circuit breaker (no message is charged an attempt while it is open) and tries again
    later, so fixing the configuration loses no email."""


class PermanentSendError(SendError):
    """A failure that retrying will not fix.

    ``reason`` may be ``"bounced"``, ``"complained"`` or ``"invalid_address"``
    (the provider rejected the address as invalid): the contact is then
    suppressed and exits every sequence with that :class:`~dripcore.ExitReason`.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(message)


class StoreError(DripcoreError):
    """A storage adapter failed."""


class ConcurrencyConflict(StoreError):
    """A write was based on a stale version of a row (optimistic concurrency)."""

    def __init__(self, *, kind: str, id: str, expected: int, actual: int | None) -> None:
        self.kind = kind
        self.id = id
        self.expected = expected
        self.actual = actual
        found = "it no longer exists" if actual is None else f"found version {actual}"
        super().__init__(f"{kind} {id!r}: expected version {expected}, {found}")


class UnreadableRecord(StoreError):
    """A stored row can't be read back (broken JSON, an unknown enum value): the row is at
    fault, not the store. Each adapter's ``CorruptRecord`` is one; it carries ``table``,
    ``id`` and ``error``. The engine sets such a record aside and goes on with the others."""

    table: str
    id: str
    error: str


class RecordRejected(StoreError):
    """The store can't hold some records as they are (text it can't encode, a value out of its
    range), while the store itself is fine. ``kind`` is ``"enrollment"`` or ``"message"`` and
    ``reasons`` maps each offending id to why; nothing of the write was applied, and the engine
    sets those records aside and writes the others again."""

    def __init__(self, *, kind: str, reasons: dict[str, str]) -> None:
        self.kind = kind
        self.reasons = dict(reasons)
        shown = "; ".join(f"{id!r}: {why}" for id, why in list(self.reasons.items())[:3])
        more = f" (and {len(self.reasons) - 3} more)" if len(self.reasons) > 3 else ""
        super().__init__(f"the store can't hold {len(self.reasons)} {kind} record(s) as given: {shown}{more}")

    @property
    def ids(self) -> tuple[str, ...]:
        """The ids of the rejected records."""
        return tuple(self.reasons)


# --------------------------------------------------------------------------- rendering


class RenderError(DripcoreError):
    """A step could not be rendered; names the sequence, the step and, when known, the field and line.

    ``field`` is ``"subject"``, ``"html"``, ``"text"``, ``"template_id"`` or
    ``"unsubscribe_url"``; ``template_id`` is set when the content came from
    a :class:`~dripcore.ports.TemplateStore`; ``line`` is 1-based within that field.
    """

    def __init__(
        self,
        *,
        sequence_id: str,
        position: int,
        reason: str,
        line: int | None = None,
        field: str | None = None,
        template_id: str | None = None,
    ) -> None:
        self.sequence_id = sequence_id
        self.position = position
        self.reason = reason
        self.line = line
        self.field = field
        self.template_id = template_id
        where = f"sequence {sequence_id!r} step {position}"
        if template_id is not None:
            where += f" (template {template_id!r})"
        if field is not None:
            where += f" {field}"
        if line is not None:
            where += f" line {line}"
        super().__init__(f"{where}: {reason}")


class UnknownVariable(RenderError):
    """A template output a variable the contact and enrollment don't have (policy ERROR)."""

    def __init__(self, *, variable: str, **where: Any) -> None:
        self.variable = variable
        super().__init__(reason=f"unknown variable {variable!r}", **where)


class TemplateNotFound(RenderError):
    """A step's ``template_id`` is not in the template store (or there is no store)."""


class InvalidContent(RenderError):
    """Content that can't be an email: oversized, binary, or not text. ``field`` names it."""


class RenderLimitExceeded(RenderError):
    """A rendering went past one of its :class:`~dripcore.render.RenderLimits`; ``limit`` names which.

    ``limit`` is ``"time"``, ``"max_items"``, ``"max_body"`` (a string a filter
    takes or makes), ``"loop_iterations"`` or ``"namespace"`` (what
    ``assign`` and ``capture`` may hold).
    """

    def __init__(self, *, limit: str, **where: Any) -> None:
        self.limit = limit
        super().__init__(**where)


# --------------------------------------------------------------------------- errors of the SQL adapters
# Defined once here, so both SQL stores raise the same classes (``isinstance`` holds across
# them); each adapter package re-exports them under its own name, as before
# (``dripcore.adapters.sqlite.CorruptRecord`` is ``dripcore.errors.CorruptRecord``).


class SchemaTooNew(StoreError):
    """The database's schema was written by a newer dripcore, whose schema this version does not know.

    ``where`` names the database (a file's path, or a server and schema; never a
    password); ``found`` is the version stored and ``supported`` the newest this code
    knows. Nothing was written: upgrade dripcore to open it.
    """

    def __init__(self, where: str, found: int, supported: int) -> None:
        self.where = where
        self.found = found
        self.supported = supported
        super().__init__(
            f"{where}: schema version {found} was written by a newer dripcore; this version knows schema "
            f"versions up to {supported}. Upgrade dripcore to open it (the database is left untouched)"
        )


class CorruptRecord(UnreadableRecord):
    """A stored row of a SQL store can't be read back (broken JSON, an unknown enum value).

    ``where`` names the database (as in :class:`SchemaTooNew`), ``table`` and ``id`` the row,
    ``error`` what was wrong with it.
    """

    def __init__(self, where: str, table: str, id: str, error: str) -> None:
        self.where = where
        self.table = table
        self.id = id
        self.error = error
        super().__init__(f"{where}: {table} row {id!r} is corrupt and can't be read: {error}")
