"""Checks of what public entry points are given: each returns the value (normalised only
losslessly: an enum's exact wire value becomes the member) or raises
:class:`~dripcore.errors.InvalidArgument` naming the argument and the value.

Used at the edges, by :class:`~dripcore.engine.Drip` and the stores, so that a wrong
type or a hostile string fails there with a dripcore error instead of deep inside as a
``TypeError``, an ``OverflowError`` or a ``UnicodeEncodeError``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from .errors import InvalidArgument, InvalidInstant
from .model import check_text, to_utc

__all__ = [
    "MAX_COUNT",
    "MAX_SPAN",
    "check_claim",
    "check_count",
    "check_counters",
    "check_day",
    "check_enum",
    "check_enums",
    "check_flag",
    "check_id",
    "check_ids",
    "check_instant",
    "check_key",
    "check_opt_enum",
    "check_opt_id",
    "check_opt_instant",
    "check_opt_position",
    "check_record",
    "check_records",
    "check_span",
]

_E = TypeVar("_E", bound=enum.Enum)
#: The largest count (a limit, an offset, a batch size) any entry point accepts: beyond it a
#: store's integer columns and parameters overflow.
MAX_COUNT = 2**31 - 1


def check_id(value: Any, field: str) -> str:
    """An id (sequence, enrollment, contact, message key, worker): the model's single-line text rule."""
    if value.__class__ is str and value.isprintable() and 0 < len(value) <= 255 and not value.isspace():
        return value  # the usual id, checked by the cheaper test that implies the full rule
    return check_text(value, field, InvalidArgument)


def check_opt_id(value: Any, field: str) -> str | None:
    """:func:`check_id`, or None."""
    return None if value is None else check_id(value, field)


def check_ids(values: Any, field: str) -> list[str]:
    """An iterable of ids (not a single string), as a list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidArgument(field, values, "expected an iterable of ids")
    return [check_id(v, f"{field}[{i}]") for i, v in enumerate(values)]


def check_count(value: Any, field: str, *, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    """An integer (not a bool, not a float) from ``minimum`` to ``maximum``."""
    if value.__class__ is not int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(field, value, f"must be an integer, not {type(value).__name__}")
        value = int(value)
    if not minimum <= value <= maximum:
        raise InvalidArgument(field, value, f"must be from {minimum} to {maximum}")
    return int(value)


def check_flag(value: Any, field: str) -> bool:
    """A real bool (``"false"`` is not False)."""
    if value is not True and value is not False:
        raise InvalidArgument(field, value, f"must be True or False, not {type(value).__name__}")
    return bool(value)


def check_enum(value: Any, cls: type[_E], field: str) -> _E:
    """A member of ``cls``, or its exact wire value (``"active"``)."""
    if isinstance(value, cls):
        return value
    for member in cls:
        if value.__class__ is str and member.value == value:
            return member
    choices = ", ".join(repr(m.value) for m in cls)
    raise InvalidArgument(field, value, f"not a {cls.__name__}; expected one of {choices}")


def check_opt_enum(value: Any, cls: type[_E], field: str) -> _E | None:
    """:func:`check_enum`, or None."""
    return None if value is None else check_enum(value, cls, field)


def check_instant(value: Any, field: str) -> datetime:
    """A timezone-aware datetime in the range dripcore schedules, as UTC (:func:`~dripcore.model.to_utc`)."""
    return to_utc(value, field, InvalidInstant)


def check_opt_instant(value: Any, field: str) -> datetime | None:
    """:func:`check_instant`, or None."""
    return None if value is None else check_instant(value, field)


def check_day(value: Any, field: str) -> date:
    """A calendar date (not a datetime, not a string)."""
    if not isinstance(value, date) or isinstance(value, datetime):
        raise InvalidArgument(field, value, f"must be a datetime.date, not {type(value).__name__}")
    return value


def check_span(
    value: Any, field: str, *, minimum: timedelta = timedelta(0), maximum: timedelta | None = None
) -> timedelta:
    """A ``timedelta`` of at least ``minimum`` (and at most ``maximum``)."""
    if not isinstance(value, timedelta):
        raise InvalidArgument(field, value, f"must be a datetime.timedelta, not {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise InvalidArgument(field, value, f"must be {bounds}")
    return value


def check_key(value: Any, field: str = "key") -> str:
    """A message key (``"{enrollment_id}:{position}"``): single-line text, a little longer than an id."""
    if value.__class__ is str and value.isprintable() and 0 < len(value) <= 300 and not value.isspace():
        return value
    return check_text(value, field, InvalidArgument, max_len=300)


def check_record(value: Any, kind: type, field: str) -> None:
    """``value`` is an instance of the model or port record ``kind``."""
    if not isinstance(value, kind):
        raise InvalidArgument(field, value, f"must be a {kind.__name__}, not {type(value).__name__}")


def check_records(values: Any, kind: type, field: str) -> None:
    """``values`` is a sequence of ``kind`` records (a list or tuple; not a single record)."""
    if not isinstance(values, (list, tuple)):
        raise InvalidArgument(field, values, f"must be a list of {kind.__name__}, not {type(values).__name__}")
    for i, value in enumerate(values):
        if value.__class__ is not kind and not isinstance(value, kind):
            raise InvalidArgument(f"{field}[{i}]", value, f"must be a {kind.__name__}, not {type(value).__name__}")


def check_enums(values: Any, cls: type[_E], field: str) -> list[_E] | None:
    """None, or an iterable of members of ``cls`` (or their wire values), as a list."""
    if values is None:
        return None
    if isinstance(values, (str, bytes, enum.Enum)) or not isinstance(values, Iterable):
        raise InvalidArgument(field, values, f"expected an iterable of {cls.__name__}")
    return [check_enum(v, cls, f"{field}[{i}]") for i, v in enumerate(values)]


def check_counters(counters: Any, field: str = "counters") -> list[tuple[str, int, str, int]]:
    """Counter increments: ``(sequence_id, position, name, delta)`` tuples, as a list."""
    if isinstance(counters, (str, bytes)) or not isinstance(counters, Iterable):
        raise InvalidArgument(field, counters, "expected an iterable of (sequence_id, position, name, delta)")
    checked = []
    for i, counter in enumerate(counters):
        if not isinstance(counter, tuple) or len(counter) != 4:
            raise InvalidArgument(f"{field}[{i}]", counter, "expected (sequence_id, position, name, delta)")
        sequence_id, position, name, delta = counter
        checked.append((
            check_id(sequence_id, f"{field}[{i}].sequence_id"),
            check_count(position, f"{field}[{i}].position"),
            check_id(name, f"{field}[{i}].name"),
            check_count(delta, f"{field}[{i}].delta", minimum=-MAX_COUNT),
        ))  # fmt: skip
    return checked


#: The longest span (a lease, a resume's shift) a store accepts: ten years, the longest delay's order.
MAX_SPAN = timedelta(days=3660)


def check_claim(now: Any, limit: Any, lease: Any, owner: Any) -> tuple[datetime, int, timedelta, str]:
    """The arguments of a claim (``claim_due``, ``claim_messages``), checked."""
    return (
        check_instant(now, "now"),
        check_count(limit, "limit"),
        check_span(lease, "lease", maximum=MAX_SPAN),
        check_id(owner, "owner"),
    )


def check_opt_position(value: Any, field: str) -> int | None:
    """A step position (0 and up), or None."""
    return None if value is None else check_count(value, field)
