"""The dripcore exception family.

Every error dripcore raises on purpose derives from :class:`DripcoreError`, so a
host can catch the whole family in one place. Errors carry their context as
attributes (the field and value, the enrollment id and status, the path), not
only in the message, so callers can react without parsing text.

The tree::

    DripcoreError
    ├── ValidationError (also ValueError)      bad input, named by field and value
    │   ├── InvalidDelay
    │   ├── InvalidStep
    │   │   └── DuplicateStepPosition
    │   ├── InvalidCondition
    │   ├── NaiveDatetimeError
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
    ├── SendError                              raised by MailSender implementations
    │   ├── TransientSendError                 retry later
    │   └── PermanentSendError                 never retry; may carry a bounce/complaint reason
    └── StoreError                             raised by Store implementations
        └── ConcurrencyConflict                optimistic-concurrency check failed
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConcurrencyConflict",
    "ContactNotFound",
    "ContactSuppressed",
    "DripcoreError",
    "DuplicateStepPosition",
    "EnrollmentConflict",
    "EnrollmentNotFound",
    "InvalidCondition",
    "InvalidContact",
    "InvalidDelay",
    "InvalidEngagement",
    "InvalidEnrollment",
    "InvalidSequence",
    "InvalidStep",
    "InvalidTimezone",
    "InvalidTransition",
    "InvalidTrigger",
    "InvalidTriggerEvent",
    "InvalidWindow",
    "NaiveDatetimeError",
    "NotFound",
    "PermanentSendError",
    "SendError",
    "SequenceNotFound",
    "SequenceStateError",
    "StoreError",
    "TransientSendError",
    "UnknownTriggerType",
    "ValidationError",
]


class DripcoreError(Exception):
    """The root of every error dripcore raises on purpose."""


class ValidationError(DripcoreError, ValueError):
    """A value was rejected at construction.

    ``field`` names the offending field (dotted for nested values, such as
    ``"steps[2].delay"``) and ``value`` holds what was given.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class InvalidDelay(ValidationError):
    """A delay is negative, absurdly long, of an unknown unit, or unparseable."""


class InvalidStep(ValidationError):
    """A step is malformed: a bad position, no content, a bad sender."""


class DuplicateStepPosition(InvalidStep):
    """Two steps of one sequence share a position."""


class InvalidCondition(ValidationError):
    """A step condition is malformed or points at a missing or later step."""


class NaiveDatetimeError(ValidationError):
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


class SendError(DripcoreError):
    """A mail sender could not send a message."""


class TransientSendError(SendError):
    """A temporary failure (a timeout, a 4xx SMTP reply): the message is retried."""


class PermanentSendError(SendError):
    """A failure that retrying will not fix.

    ``reason`` may be ``"bounced"`` or ``"complained"``: the contact is then
    suppressed and exits every sequence.
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
