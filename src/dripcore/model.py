"""Immutable value types of dripcore: delays, steps, triggers, sequences, enrollments,
contacts and lifecycle events.

Every type is a frozen attrs class validated at construction: an invalid value
raises a specific :class:`~dripcore.errors.ValidationError` naming the field and
the value, and nothing is silently coerced. The only normalisations are
lossless: instants are converted to UTC (the same instant), mappings are
wrapped read-only, steps are kept sorted by position, and an enum field also
accepts its exact wire value (``"tag_added"`` for ``TriggerType.TAG_ADDED``).

This module imports nothing else of dripcore but its errors, and does no I/O.
"""

from __future__ import annotations

import enum
import math
import re
import zoneinfo
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, overload

import attrs

if TYPE_CHECKING:
    import pendulum

from .errors import (
    DuplicateStepPosition,
    InvalidCondition,
    InvalidContact,
    InvalidDelay,
    InvalidEnrollment,
    InvalidInstant,
    InvalidSequence,
    InvalidStep,
    InvalidTimezone,
    InvalidTrigger,
    InvalidTriggerEvent,
    InvalidWindow,
    NaiveDatetimeError,
    UnknownTriggerType,
    ValidationError,
)

__all__ = [
    "Cancelled",
    "Completed",
    "Condition",
    "ConditionType",
    "Contact",
    "Delay",
    "DelayUnit",
    "Enrollment",
    "EnrollmentStatus",
    "Event",
    "EVENT_TYPES",
    "ExitReason",
    "MAX_INSTANT",
    "MIN_INSTANT",
    "PausePolicy",
    "ReentryPolicy",
    "SendWindow",
    "Sequence",
    "SequenceStatus",
    "SenderIdentity",
    "SkipReason",
    "Step",
    "StepFailed",
    "StepSent",
    "StepSkipped",
    "Subscribed",
    "SUPPRESSION_REASONS",
    "Trigger",
    "TriggerEvent",
    "TriggerType",
    "UnknownVariables",
    "UTC",
    "Wait",
    "WaitUntil",
    "WindowAction",
    "parse_wait",
    "zone",
]

UTC = timezone.utc
"""The UTC time zone every stored instant is expressed in."""

#: The longest delay dripcore accepts: anything longer is a typo, not a plan.
MAX_DELAY = timedelta(days=3660)
_MAX_DELAY_SECONDS = int(MAX_DELAY.total_seconds())

# The instants dripcore accepts: from MIN_INSTANT (included) to MAX_INSTANT (excluded).
# The bounds are chosen so that no arithmetic dripcore does on accepted instants can leave
# the range of ``datetime`` (years 1 to 9999). The largest is an EXTEND resume, which moves a
# due time by the length of a pause: due + (now - paused_at) < MAX + (MAX - MIN) = year 8100;
# then at most one delay (MAX_DELAY, ten years), a send-window move (at most 15 days), a retry
# backoff or a lease (the engine bounds them by MAX_DELAY too), local-time conversions (a day)
# and a DST gap (hours): below year 8200. Any result past MAX_INSTANT is refused with
# InvalidInstant when it is put into a model value, so it never starts further arithmetic.
# Below, nothing subtracts more than a day (or a frequency-cap window) from an accepted instant.
# 1900 leaves room for imported sign-up dates; 5000 is far past any plan and keeps
# MAX + (MAX - MIN) well inside datetime (9000 would not: a pause from 1900 to 8999 would push
# a due time past year 9999).
# Both bounds are midnight on January 1, so for a UTC datetime the test is on the year alone.
_MIN_YEAR = 1900
_MAX_YEAR = 5000
MIN_INSTANT = datetime(_MIN_YEAR, 1, 1, tzinfo=UTC)
"""The earliest instant dripcore accepts (1900-01-01T00:00:00Z); earlier ones raise
:class:`~dripcore.errors.InvalidInstant`."""
MAX_INSTANT = datetime(_MAX_YEAR, 1, 1, tzinfo=UTC)
"""The first instant dripcore no longer accepts (5000-01-01T00:00:00Z): every accepted instant is
before it, so adding any delay, send window, retry or pause shift to one can't overflow."""
_INSTANT_RANGE = "outside the instants dripcore schedules (1900-01-01T00:00:00Z to 5000-01-01T00:00:00Z)"

_ID_MAX = 255
# Positions and versions are stored in 32-bit integer columns (PostgreSQL's ``integer``).
_MAX_INT32 = 2**31 - 1
_E = TypeVar("_E", bound=enum.Enum)


# --------------------------------------------------------------------------- helpers

# Why every converted field has a ``_c_<type>_<field>`` function delegating to an
# ``_impl_<type>_<field>`` closure: the closures come from small factories (``_enum``,
# ``_frozen_mapping``, ``_frozenset_of``...) that bake in the field's name and error class,
# but mypy's attrs plugin only types a converter that is a named function (a closure held
# in a variable is "Unsupported converter"). The one-line named wrapper gives the plugin
# the field's argument and result types; the closure keeps the logic in one place. Instant
# fields all share one converter, :func:`_utc_instant`.


def _enum(cls: type[_E], field: str, error: type[ValidationError] = ValidationError) -> Callable[[Any], _E]:
    """A converter accepting a member of ``cls`` or its exact wire value."""
    by_value = {member.value: member for member in cls}

    def convert(value: Any) -> _E:
        if isinstance(value, cls):
            return value
        try:
            return by_value[value]
        except Exception:  # unknown, or not hashable (or a caller's object whose hash fails)
            choices = ", ".join(repr(v) for v in by_value)
            raise error(field, value, f"not a {cls.__name__}; expected one of {choices}") from None

    return convert


def _opt_enum(cls: type[_E], field: str, error: type[ValidationError] = ValidationError) -> Callable[[Any], _E | None]:
    convert = _enum(cls, field, error)
    return lambda value: None if value is None else convert(value)


def to_utc(value: Any, field: str = "datetime", error: type[ValidationError] = NaiveDatetimeError) -> datetime:
    """Return ``value`` (an aware datetime, pendulum's included) as a plain UTC datetime.

    Raises :class:`~dripcore.errors.NaiveDatetimeError` (or ``error``) for a naive datetime
    and for anything that is not a datetime, and
    :class:`~dripcore.errors.InvalidInstant` for an instant before :data:`MIN_INSTANT` or
    from :data:`MAX_INSTANT` on; ``field`` names the value in the error.
    """
    if value.__class__ is datetime and value.tzinfo is UTC and _MIN_YEAR <= value.year < _MAX_YEAR:
        return value  # already what this returns: the usual case on the hot paths ends here
    if not isinstance(value, datetime):
        raise error(field, value, "expected a timezone-aware datetime")
    try:
        offset = value.utcoffset()
    except Exception:  # a tzinfo of the caller's that fails: the instant is unusable, whatever the cause
        raise error(field, value, "its time zone gives no usable UTC offset") from None
    if offset is None:
        raise error(field, value, "naive datetime: attach a time zone (dripcore stores UTC instants)")
    # An offset is less than a day, so a year outside (MIN - 1, MAX] can't come back into range;
    # checked before the subtraction, which could overflow at the ends of the calendar.
    if not _MIN_YEAR - 1 <= value.year <= _MAX_YEAR:
        raise InvalidInstant(field, value, _INSTANT_RANGE)
    u = value.replace(tzinfo=None) - offset
    if not _MIN_YEAR <= u.year < _MAX_YEAR:
        raise InvalidInstant(field, value, _INSTANT_RANGE)
    return datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond, tzinfo=UTC)


@overload
def _utc_instant(value: Any, field: str, optional: Literal[False]) -> datetime: ...
@overload
def _utc_instant(value: Any, field: str, optional: Literal[True]) -> datetime | None: ...
def _utc_instant(value: Any, field: str, optional: bool) -> datetime | None:
    """The converter of every instant field: ``value`` as a UTC datetime (None too, if ``optional``).

    The usual value, a UTC datetime in range (read back by a store, computed by the
    scheduler), comes back as it is without the work of :func:`to_utc`, which converts
    anything else or raises naming ``field``.
    """
    if value.__class__ is datetime and value.tzinfo is UTC and _MIN_YEAR <= value.year < _MAX_YEAR:
        return value
    if value is None and optional:
        return None
    return to_utc(value, field)


# What no id or single-line text may hold: control characters (NUL, CR, LF, tab, NEL...),
# lone surrogates (undecodable bytes, which no store can encode) and the Unicode line and
# paragraph separators (a line break to a header or a log line).
_NOT_SINGLE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
# What no text at all may hold, multi-line text included: NUL (PostgreSQL can't store it, and it
# ends C strings) and lone surrogates (they have no UTF-8 encoding).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def check_text(
    value: Any, field: str, error: type[ValidationError], *, max_len: int = _ID_MAX, allow_blank: bool = False
) -> str:
    """``value`` if it is a non-blank, single-line string of at most ``max_len`` characters
    with no control character, lone surrogate or line separator; else ``error`` naming ``field``.

    The rule of every id (sequence, enrollment, contact, key) and one-line text of the model;
    stores and the engine apply it to ids given to them directly. With ``allow_blank``, an
    empty or all-spaces string is accepted too (an optional name).
    """
    if value.__class__ is not str and not isinstance(value, str):
        raise error(field, value, f"must be a string, not {type(value).__name__}")
    if not value.isprintable():  # printable text holds none of what is refused: the usual case ends here
        bad = _NOT_SINGLE_LINE.search(value)
        if bad is not None:
            raise error(
                field, value, f"must be a single line of text: character {bad.group()!r} at offset {bad.start()}"
            )
    if len(value) > max_len:
        raise error(field, value, f"longer than {max_len} characters")
    if not allow_blank and (not value or value.isspace()):
        raise error(field, value, "must be a non-empty string")
    return value


def _check_storable(value: str, field: str, error: type[ValidationError]) -> None:
    """Refuse a string holding NUL or a lone surrogate, which no store can encode."""
    if value.isascii() and "\x00" not in value:  # ASCII holds no surrogate: the usual case ends here
        return
    bad = _UNSTORABLE.search(value)
    if bad is not None:
        shown = value if len(value) <= 80 else f"{value[:40]}...<{len(value)} characters>"
        what = "a NUL character (binary content)" if bad.group() == "\x00" else "a lone surrogate (undecodable bytes)"
        raise error(field, shown, f"holds {what} at offset {bad.start()}, which no store can encode")


def _text(
    field: str, error: type[ValidationError], *, max_len: int = _ID_MAX, allow_blank: bool = False
) -> Callable[[Any, Any, Any], None]:
    """A validator for a single-line string (:func:`check_text`)."""

    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        # The usual id ends here (a printable string holds no character check_text refuses).
        if (
            value.__class__ is str
            and value.isprintable()
            and len(value) <= max_len
            and (allow_blank or (value and not value.isspace()))
        ):
            return
        check_text(value, field, error, max_len=max_len, allow_blank=allow_blank)

    return check


def _opt_text(field: str, error: type[ValidationError], *, max_len: int = _ID_MAX) -> Callable[[Any, Any, Any], None]:
    check = _text(field, error, max_len=max_len)

    def opt(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return opt


_MAX_BODY = 1_000_000


def _check_body(value: Any, field: str, error: type[ValidationError]) -> None:
    """Multi-line text (an email body, a description): a string of at most ``_MAX_BODY``
    characters with no NUL or lone surrogate; newlines and tabs are fine."""
    if not isinstance(value, str):
        raise error(field, value, "must be a string")
    if len(value) > _MAX_BODY:
        raise error(field, f"<{len(value)} characters>", f"longer than {_MAX_BODY} characters")
    _check_storable(value, field, error)


def _body(field: str, error: type[ValidationError]) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        # The usual body ends here: ASCII holds no lone surrogate, and NUL is found by a memchr.
        if value.__class__ is str and len(value) <= _MAX_BODY and value.isascii() and "\x00" not in value:
            return
        _check_body(value, field, error)

    return check


def _opt_body(field: str, error: type[ValidationError]) -> Callable[[Any, Any, Any], None]:
    check = _body(field, error)

    def opt(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return opt


def _opt_str(field: str, error: type[ValidationError]) -> Callable[[Any, Any, Any], None]:
    """A validator for free text that is only required to be a string (or None)."""

    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and not isinstance(value, str):
            raise error(field, value, f"must be a string, not {type(value).__name__}")

    return check


# Python refuses to turn an integer of more than 4300 digits into text (and so into JSON);
# 13,000 bits is under 3,914 digits.
_MAX_JSON_INT_BITS = 13_000
_MAX_DEPTH = 32


def _key_path(field: str, key: str) -> str:
    return f"{field}.{key}" if key.isprintable() and key.isascii() else f"{field}[{key!r}]"


def _json_problem(value: Any, depth: int) -> tuple[str, Any, str] | None:
    """What makes ``value`` not JSON-safe and storable, as (path suffix, offending value, reason);
    None when it is fine. The path is built only on failure: the usual small mapping of short
    strings and numbers costs one type test per value."""
    kind = value.__class__
    if kind is str:
        if value.isascii() and "\x00" not in value:
            return None
        bad = _UNSTORABLE.search(value)
        if bad is None:
            return None
        what = "a NUL character" if bad.group() == "\x00" else "a lone surrogate"
        return "", value, f"holds {what} at offset {bad.start()}, which no store can encode"
    if value is None or kind is bool:
        return None
    if kind is int:
        if value.bit_length() > _MAX_JSON_INT_BITS:
            return "", f"<int of {value.bit_length()} bits>", "too large a number for JSON"
        return None
    if kind is float:
        if not math.isfinite(value):
            return "", value, "not a finite number (JSON has no NaN or infinity)"
        return None
    if depth >= _MAX_DEPTH:
        return "", "<nested value>", f"nested more than {_MAX_DEPTH} levels deep"
    if kind is dict or kind is MappingProxyType or isinstance(value, Mapping):
        for key, item in value.items():
            if key.__class__ is not str:
                return "", key, f"mapping keys must be strings, not {type(key).__name__}"
            if not key.isascii() or "\x00" in key:
                problem = _json_problem(key, depth + 1)
                if problem is not None:
                    return _key_path("", key), key, "a key that " + problem[2]
            # The usual values (short ASCII text, small numbers) end here, without a call.
            item_kind = item.__class__
            if item_kind is str:
                if item.isascii() and "\x00" not in item:
                    continue
            elif item_kind is int:
                if item.bit_length() <= _MAX_JSON_INT_BITS:
                    continue
            elif item is None or item_kind is bool:
                continue
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return _key_path("", key) + problem[0], problem[1], problem[2]
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return f"[{i}]{problem[0]}", problem[1], problem[2]
        return None
    # Subclasses of str, int and float (an IntEnum member...) are written to JSON as their value.
    if isinstance(value, str):
        return _json_problem(str.__str__(value), depth)
    if isinstance(value, int):
        return _json_problem(int(value), depth)
    if isinstance(value, float):
        return _json_problem(float(value), depth)
    return "", value, f"{type(value).__name__} is not JSON-safe"


def _json_safe(value: Any, field: str, error: type[ValidationError]) -> None:
    """Refuse what JSON can't hold or no store can encode: objects other than None, booleans,
    numbers, strings, lists and string-keyed mappings; NaN and infinities; integers of thousands
    of digits; NUL or lone surrogates in a string, key or value, at any depth; nesting deeper
    than 32 levels."""
    problem = _json_problem(value, 0)
    if problem is not None:
        path, item, reason = problem
        raise error(field + path, item, reason)


_EMPTY_MAPPING: Mapping[str, Any] = MappingProxyType({})


def _restore(cls: type[Any], proxied: tuple[str, ...], state: tuple[tuple[str, Any], ...]) -> Any:
    """Rebuild a pickled model value without re-running its validation (it was valid when pickled)."""
    value = object.__new__(cls)
    for name, item in state:
        if name in proxied:
            item = MappingProxyType(item) if item else _EMPTY_MAPPING
        object.__setattr__(value, name, item)
    return value


def _reduce_read_only(value: Any, proxied: tuple[str, ...]) -> tuple[Any, ...]:
    """``__reduce__`` for a model type with read-only mapping fields, which pickle can't copy
    as they are: the mappings travel as plain dicts and are wrapped again on loading. Only pickling
    pays for it; construction is unchanged."""
    state = tuple(
        (a.name, dict(getattr(value, a.name)) if a.name in proxied else getattr(value, a.name))
        for a in attrs.fields(type(value))
    )
    return (_restore, (type(value), proxied, state))


def _frozen_mapping(field: str, error: type[ValidationError]) -> Callable[[Any], Mapping[str, Any]]:
    """A converter that validates a JSON-safe mapping and wraps it read-only.

    A read-only mapping is checked but not copied (it is what an evolve passes on)."""

    def convert(value: Any) -> Mapping[str, Any]:
        if value is _EMPTY_MAPPING:
            return value
        kind = value.__class__
        if (kind is dict or kind is MappingProxyType) and not value:
            return _EMPTY_MAPPING  # the default of every record without one: shared, it can't change
        if kind is not dict and kind is not MappingProxyType and not isinstance(value, Mapping):
            raise error(field, value, "expected a mapping of strings to JSON-safe values")
        try:
            _json_safe(value, field, error)
            return value if kind is MappingProxyType else MappingProxyType(dict(value))
        except ValidationError:
            raise
        except Exception:  # a mapping of the caller's that fails as it is read
            raise error(field, value, "a mapping that can't be read") from None

    return convert


def _position(value: Any) -> bool:
    """Whether ``value`` is a step position: an int from 1 to 2**31 - 1 (not a bool)."""
    return value.__class__ is int and 0 < value <= _MAX_INT32


def _frozenset_of(kind: type, field: str, error: type[ValidationError]) -> Callable[[Any], frozenset[Any]]:
    """A converter to a frozenset of step positions (``kind`` int) or of (position, link) clicks
    (``kind`` tuple; a link is any storable string, "" for a click on no particular link)."""

    def check(item: Any) -> Any:
        if kind is int:
            if not _position(item):
                raise error(field, item, "expected step positions (integers from 1 to 2**31 - 1)")
            return item
        if item.__class__ is list:
            item = tuple(item)
        if item.__class__ is not tuple or len(item) != 2 or not _position(item[0]) or not isinstance(item[1], str):
            raise error(field, item, "expected (position, link) pairs")
        _check_storable(item[1], field, error)
        return item

    def convert(value: Any) -> frozenset[Any]:
        if value.__class__ is frozenset:
            if not value:
                return value
            if kind is int:  # (what an evolve passes on: checked again, without a copy)
                for v in value:
                    if v.__class__ is not int or not 0 < v <= _MAX_INT32:
                        break
                else:
                    return value
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise error(field, value, "expected a set")
        try:
            items = list(value)
        except Exception:  # an iterable of the caller's that fails: not a set we can read
            raise error(field, value, "expected a set") from None
        return frozenset([check(v) for v in items])

    return convert


def zone(name: str | None, field: str = "timezone") -> zoneinfo.ZoneInfo | None:
    """Look up an IANA time zone by name; ``None`` stands for UTC.

    Raises :class:`~dripcore.errors.InvalidTimezone` naming ``field`` for an
    unknown name. Zones are cached by :mod:`zoneinfo`.
    """
    if name is None:
        return None
    if not isinstance(name, str) or not name or name != name.strip() or len(name) > _ID_MAX:
        raise InvalidTimezone(field, name, "expected an IANA time zone name such as 'Europe/Paris'")
    try:
        return zoneinfo.ZoneInfo(name)
    except Exception:  # not found, not a zone file, a name the file system refuses: all unknown zones
        raise InvalidTimezone(field, name, "not a known IANA time zone") from None


def _timezone_validator(field: str) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        zone(value, field)

    return check


def _nonneg_int(field: str, error: type[ValidationError]) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value.__class__ is not int or not 0 <= value <= _MAX_INT32:
            raise error(field, value, "must be an integer from 0 to 2**31 - 1")

    return check


def _position_validator(field: str, error: type[ValidationError]) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if not _position(value):
            raise error(field, value, "must be a step position (an integer from 1 to 2**31 - 1)")

    return check


# --------------------------------------------------------------------------- delays


class DelayUnit(enum.Enum):
    """The unit of a :class:`Delay`.

    Seconds, minutes and hours are *exact*: they add elapsed time. Days, weeks
    and months are *calendar* units: they keep the local wall-clock time in the
    contact's time zone, so a "1 day" step goes at the same local hour even
    across a daylight-saving change (when that day is 23 or 25 hours long).
    A month goes to the same day of a later month, or to that month's last day
    when it is shorter: one month after January 31 is February 28 (29 in a
    leap year).
    """

    SECONDS = "seconds"
    """Exact: elapsed seconds."""
    MINUTES = "minutes"
    """Exact: elapsed minutes."""
    HOURS = "hours"
    """Exact: elapsed hours, whatever the calendar does (24 hours stay 24 across a DST change)."""
    DAYS = "days"
    """Calendar: the same local time that many days later."""
    WEEKS = "weeks"
    """Calendar: the same local time that many weeks (of 7 days) later."""
    MONTHS = "months"
    """Calendar: the same day and local time that many months later, or that month's last day."""


_UNIT_SECONDS = {
    DelayUnit.SECONDS: 1,
    DelayUnit.MINUTES: 60,
    DelayUnit.HOURS: 3600,
    DelayUnit.DAYS: 86400,
    DelayUnit.WEEKS: 604800,
    DelayUnit.MONTHS: 30 * 86400,  # nominal only: a month's real length depends on where it starts
}
#: The most months a delay may be: 120 months span at most 3653 days (ten years, three of them
#: leap), within the 3660-day maximum; 121 can reach 3684.
_MAX_MONTHS = 120
_UNIT_WORDS = {
    "s": DelayUnit.SECONDS, "sec": DelayUnit.SECONDS, "secs": DelayUnit.SECONDS,
    "second": DelayUnit.SECONDS, "seconds": DelayUnit.SECONDS,
    "m": DelayUnit.MINUTES, "min": DelayUnit.MINUTES, "mins": DelayUnit.MINUTES,
    "minute": DelayUnit.MINUTES, "minutes": DelayUnit.MINUTES,
    "h": DelayUnit.HOURS, "hr": DelayUnit.HOURS, "hrs": DelayUnit.HOURS,
    "hour": DelayUnit.HOURS, "hours": DelayUnit.HOURS,
    "d": DelayUnit.DAYS, "day": DelayUnit.DAYS, "days": DelayUnit.DAYS,
    "w": DelayUnit.WEEKS, "week": DelayUnit.WEEKS, "weeks": DelayUnit.WEEKS,
    "mo": DelayUnit.MONTHS, "month": DelayUnit.MONTHS, "months": DelayUnit.MONTHS,
}  # fmt: skip
_DELAY_RE = re.compile(r"^(?:after\s+|wait\s+)?(\d{1,12})\s*([a-z]+)$")
_IMMEDIATE_WORDS = frozenset({"immediately", "now", "0", "none", "no delay"})
_ISO_DESIGNATORS = {
    DelayUnit.SECONDS: "PT{}S", DelayUnit.MINUTES: "PT{}M", DelayUnit.HOURS: "PT{}H",
    DelayUnit.DAYS: "P{}D", DelayUnit.WEEKS: "P{}W", DelayUnit.MONTHS: "P{}M",
}  # fmt: skip


_impl_delay_unit = _enum(DelayUnit, "delay.unit", InvalidDelay)


def _c_delay_unit(value: DelayUnit | str) -> DelayUnit:
    return _impl_delay_unit(value)


@attrs.frozen(kw_only=True)
class Delay:
    """How long to wait before a step: an ``amount`` of a :class:`DelayUnit`.

    Build one with the unit constructors or :meth:`parse`:

    >>> Delay.hours(24)
    Delay(amount=24, unit=<DelayUnit.HOURS: 'hours'>)
    >>> Delay.parse("2 days") == Delay.days(2)
    True
    >>> Delay.parse("P1M") == Delay.months(1)
    True
    >>> Delay.parse("immediately").is_zero
    True

    ``Delay.hours(24)`` and ``Delay.days(1)`` differ: the first is always 24
    elapsed hours, the second is "the same local time tomorrow". Negative
    delays and delays over ten years (3660 days, or 120 months) are rejected
    with :class:`~dripcore.errors.InvalidDelay`.
    """

    amount: int
    """How many units: an integer from 0 (send at once) up to ten years' worth."""
    unit: DelayUnit = attrs.field(converter=_c_delay_unit)
    """The unit, a :class:`DelayUnit` or its value (``"days"``)."""
    _exact: timedelta = attrs.field(init=False, eq=False, repr=False)
    # Read on every advance(): one attribute load instead of comparing the unit three times.
    _calendar: bool = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        amount = self.amount
        if amount.__class__ is not int:
            raise InvalidDelay("delay.amount", amount, "must be an integer")
        if amount < 0:
            raise InvalidDelay("delay.amount", amount, "a delay can't be negative")
        unit = self.unit
        seconds = amount * _UNIT_SECONDS[unit]
        if seconds > _MAX_DELAY_SECONDS or (unit is DelayUnit.MONTHS and amount > _MAX_MONTHS):
            raise InvalidDelay("delay.amount", amount, f"{amount} {unit.value} is longer than the 3660-day maximum")
        object.__setattr__(self, "_exact", timedelta(seconds=seconds))
        object.__setattr__(
            self, "_calendar", unit is DelayUnit.DAYS or unit is DelayUnit.WEEKS or unit is DelayUnit.MONTHS
        )

    @classmethod
    def seconds(cls, amount: int) -> Delay:
        """An exact delay of ``amount`` seconds."""
        return cls(amount=amount, unit=DelayUnit.SECONDS)

    @classmethod
    def minutes(cls, amount: int) -> Delay:
        """An exact delay of ``amount`` minutes."""
        return cls(amount=amount, unit=DelayUnit.MINUTES)

    @classmethod
    def hours(cls, amount: int) -> Delay:
        """An exact delay of ``amount`` hours (elapsed time, whatever the calendar)."""
        return cls(amount=amount, unit=DelayUnit.HOURS)

    @classmethod
    def days(cls, amount: int) -> Delay:
        """A calendar delay: the same local wall-clock time ``amount`` days later."""
        return cls(amount=amount, unit=DelayUnit.DAYS)

    @classmethod
    def weeks(cls, amount: int) -> Delay:
        """A calendar delay: the same local wall-clock time ``amount`` weeks later."""
        return cls(amount=amount, unit=DelayUnit.WEEKS)

    @classmethod
    def months(cls, amount: int) -> Delay:
        """A calendar delay: the same local wall-clock time on the same day ``amount`` months
        later, or on that month's last day when it is shorter (January 31 + 1 month is
        February 28, or 29 in a leap year). At most 120 months."""
        return cls(amount=amount, unit=DelayUnit.MONTHS)

    @classmethod
    def immediately(cls) -> Delay:
        """No delay at all."""
        return _IMMEDIATELY

    @classmethod
    def parse(cls, text: str) -> Delay:
        """Parse ``"immediately"``, ``"30 minutes"``, ``"24h"``, ``"2 days"``, ``"after 1 week"``,
        ``"1 month"``, or an ISO 8601 duration: ``"P3D"``, ``"PT30M"``, ``"P1W"``, ``"P1M"``.

        An ISO 8601 duration (read by pendulum's parser) becomes one delay, in the
        coarsest unit that says it exactly:

        - clock time (after the ``T``) is exact: ``"PT1H30M"`` is 90 minutes,
          ``"PT2H"`` and ``"PT120M"`` are 2 hours, ``"PT24H"`` is 24 hours (not a day);
        - days and weeks are calendar days: ``"P14D"`` is 2 weeks, ``"P10D"`` 10 days;
        - years and months are calendar months: ``"P1Y2M"`` is 14 months.

        A duration that no single unit says exactly is refused, not rounded:
        calendar parts with clock time (``"P1DT2H"``: a calendar day is 23 or 25
        hours on the days clocks change), months with days (``"P1M3D"``), part of
        a day (``"P1.5D"``) or of a second (``"PT0.5S"``).

        >>> Delay.parse("PT1H30M")
        Delay(amount=90, unit=<DelayUnit.MINUTES: 'minutes'>)

        Raises :class:`~dripcore.errors.InvalidDelay` naming the text for anything else.
        """
        if not isinstance(text, str):
            raise InvalidDelay("delay", text, "expected a string such as '2 days'")
        cleaned = " ".join(text.strip().lower().split())
        if cleaned in _IMMEDIATE_WORDS:
            return _IMMEDIATELY
        if cleaned.startswith("p"):
            return _parse_iso_duration(text)
        match = _DELAY_RE.match(cleaned)
        unit = _UNIT_WORDS.get(match.group(2)) if match else None
        if match is None or unit is None:
            raise InvalidDelay(
                "delay",
                text,
                "expected 'immediately', '<number> <seconds|minutes|hours|days|weeks|months>' "
                "or an ISO 8601 duration such as 'P3D'",
            )
        return cls(amount=int(match.group(1)), unit=unit)

    @property
    def is_calendar(self) -> bool:
        """True for days, weeks and months, which follow the local calendar."""
        return self._calendar

    @property
    def is_zero(self) -> bool:
        """True when the delay is nothing at all."""
        return self.amount == 0

    @property
    def nominal(self) -> timedelta:
        """The delay as a timedelta (a calendar day counts as 24 hours here, a month as 30 days)."""
        return self._exact

    @property
    def calendar_days(self) -> int:
        """For a delay in days or weeks, its length in days; 0 for exact units and months
        (a month's length in days depends on where it starts: see :attr:`calendar_months`)."""
        if self.unit is DelayUnit.DAYS:
            return self.amount
        if self.unit is DelayUnit.WEEKS:
            return self.amount * 7
        return 0

    @property
    def calendar_months(self) -> int:
        """For a delay in months, its length in months; 0 for every other unit."""
        return self.amount if self.unit is DelayUnit.MONTHS else 0

    def isoformat(self) -> str:
        """The delay as an ISO 8601 duration in its own unit: ``"PT90M"``, ``"P3D"``, ``"P1M"``.

        :meth:`parse` reads it back to a delay that schedules the same: the same
        one, or the same length in a coarser unit (``"PT120M"`` reads as 2 hours).

        >>> Delay.minutes(90).isoformat(), Delay.months(1).isoformat()
        ('PT90M', 'P1M')
        """
        return _ISO_DESIGNATORS[self.unit].format(self.amount)

    def __str__(self) -> str:
        if self.amount == 0:
            return "immediately"
        unit = self.unit.value
        return f"{self.amount} {unit[:-1] if self.amount == 1 else unit}"


_IMMEDIATELY = Delay(amount=0, unit=DelayUnit.SECONDS)

_NOT_ISO_DURATION = "not an ISO 8601 duration such as 'P3D', 'PT30M', 'P1W' or 'P1M'"


def _parse_iso_duration(text: str) -> Delay:
    """An ISO 8601 duration as one :class:`Delay`, by the rules :meth:`Delay.parse` states."""
    # pendulum's Duration folds clock time into days ("PT24H" and "P1D" come out equal), so each
    # half of the text is read on its own: the date half is calendar time, the time half exact.
    code = text.strip().upper()
    date_half, has_time, clock_half = code.partition("T")
    if not code.startswith("P") or (date_half == "P" and not has_time) or (has_time and not clock_half):
        raise InvalidDelay("delay", text, _NOT_ISO_DURATION)
    calendar = _pendulum_duration(date_half, text) if date_half != "P" else None
    clock = _pendulum_duration("PT" + clock_half, text) if has_time else None
    months = days = seconds = 0
    if calendar is not None:
        if calendar.hours or calendar.minutes or calendar.remaining_seconds or calendar.microseconds:
            raise InvalidDelay("delay", text, "days and weeks must be whole: write the part of a day in hours")
        months = calendar.years * 12 + calendar.months
        days = calendar.weeks * 7 + calendar.remaining_days
    if clock is not None:
        if clock.microseconds:
            raise InvalidDelay("delay", text, "a delay is a whole number of seconds")
        seconds = clock.in_seconds()
    if months and days:
        raise InvalidDelay("delay", text, "mixes months with days: no single unit says that exactly")
    if (months or days) and seconds:
        raise InvalidDelay(
            "delay",
            text,
            "mixes calendar days or months with clock time: no single unit says that exactly "
            "(a calendar day is 23 or 25 hours when clocks change); write e.g. 'P1D' or 'PT26H'",
        )
    if months:
        return Delay(amount=months, unit=DelayUnit.MONTHS)
    if days % 7 == 0 and days:
        return Delay(amount=days // 7, unit=DelayUnit.WEEKS)
    if days:
        return Delay(amount=days, unit=DelayUnit.DAYS)
    if seconds:
        for unit in (DelayUnit.HOURS, DelayUnit.MINUTES):
            if seconds % _UNIT_SECONDS[unit] == 0:
                return Delay(amount=seconds // _UNIT_SECONDS[unit], unit=unit)
        return Delay(amount=seconds, unit=DelayUnit.SECONDS)
    return _IMMEDIATELY


def _pendulum_duration(code: str, text: str) -> pendulum.Duration:
    """pendulum's reading of one half of an ISO 8601 duration; InvalidDelay naming ``text`` if it has none."""
    import pendulum  # here, not at the top: only ISO 8601 text pays for importing pendulum

    try:
        parsed = pendulum.parse(code)
    except Exception:  # ParserError, OverflowError, ...: pendulum's ways of saying "not a duration"
        raise InvalidDelay("delay", text, _NOT_ISO_DURATION) from None
    if not isinstance(parsed, pendulum.Duration):
        raise InvalidDelay("delay", text, _NOT_ISO_DURATION)
    return parsed


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_WORDS = {name: i for i, name in enumerate(_WEEKDAYS)} | {name[:3]: i for i, name in enumerate(_WEEKDAYS)}
_CLOCK_RE = re.compile(r"^(\d{1,2})(?::(\d{2}))?\s*(am|pm)?$")


def _parse_clock(text: str, field: str, error: type[ValidationError]) -> time:
    match = _CLOCK_RE.match(text.strip().lower())
    if match is None:
        raise error(field, text, "expected a time of day such as '09:00' or '9am'")
    hour, minute, half = int(match.group(1)), int(match.group(2) or 0), match.group(3)
    if half is not None:
        if not 1 <= hour <= 12:
            raise error(field, text, "an am/pm hour goes from 1 to 12")
        hour = hour % 12 + (12 if half == "pm" else 0)
    if hour > 23 or minute > 59:
        raise error(field, text, "not a time of day")
    return time(hour, minute)


def _check_clock(value: Any, field: str, error: type[ValidationError]) -> None:
    if value is None:
        return
    if not isinstance(value, time) or value.tzinfo is not None:
        raise error(field, value, "expected a local time of day without a zone (datetime.time)")


@attrs.frozen(kw_only=True)
class WaitUntil:
    """Wait until a local weekday and/or time of day: "tomorrow 10:00", "next Tuesday 09:00".

    The step goes at the earliest local instant strictly after the previous
    send (or enrollment) that is at least ``days`` calendar days later, falls on
    ``weekday`` (0 = Monday) when given, and is at ``at`` when given (else at
    the same local time of day). Local means the contact's zone (fallback: the
    sequence's, then UTC).

    >>> WaitUntil.parse("next tuesday 09:00")
    WaitUntil(days=0, weekday=1, at=datetime.time(9, 0))
    >>> WaitUntil.parse("tomorrow 10am")
    WaitUntil(days=1, weekday=None, at=datetime.time(10, 0))
    """

    days: int = 0
    """At least this many calendar days after the previous send (or enrollment): 1 is tomorrow."""
    weekday: int | None = None
    """The local weekday it goes on, 0 (Monday) to 6 (Sunday); None: any day."""
    at: time | None = None
    """The local time of day it goes at (a ``time`` without a zone); None: that of the previous send."""

    def __attrs_post_init__(self) -> None:
        if self.days.__class__ is not int or not 0 <= self.days <= MAX_DELAY.days:
            raise InvalidDelay("wait_until.days", self.days, f"must be an integer from 0 to {MAX_DELAY.days}")
        if self.weekday is not None and (self.weekday.__class__ is not int or not 0 <= self.weekday <= 6):
            raise InvalidDelay("wait_until.weekday", self.weekday, "must be 0 (Monday) to 6 (Sunday)")
        _check_clock(self.at, "wait_until.at", InvalidDelay)
        if self.days == 0 and self.weekday is None and self.at is None:
            raise InvalidDelay("wait_until", None, "give days, a weekday or a time of day (or use Delay.immediately())")

    @classmethod
    def parse(cls, text: str) -> WaitUntil:
        """Parse ``"tomorrow 10:00"``, ``"next tuesday 09:00"``, ``"next friday"``, ``"at 9am"``."""
        if not isinstance(text, str):
            raise InvalidDelay("wait_until", text, "expected text such as 'next tuesday 09:00'")
        words = text.strip().lower().replace(",", " ").split()
        days, weekday, at = 0, None, None
        rest = list(words)
        if rest[:1] == ["tomorrow"]:
            days, rest = 1, rest[1:]
        elif rest[:1] in (["next"], ["on"]) and len(rest) > 1 and rest[1] in _WEEKDAY_WORDS:
            weekday, rest = _WEEKDAY_WORDS[rest[1]], rest[2:]
        elif rest[:1] and rest[0] in _WEEKDAY_WORDS:
            weekday, rest = _WEEKDAY_WORDS[rest[0]], rest[1:]
        if rest[:1] == ["at"]:
            rest = rest[1:]
        if rest:
            at = _parse_clock(" ".join(rest), "wait_until", InvalidDelay)
        if not words or (days, weekday, at) == (0, None, None):
            raise InvalidDelay("wait_until", text, "expected e.g. 'tomorrow 10:00', 'next tuesday 09:00', 'at 9am'")
        return cls(days=days, weekday=weekday, at=at)

    @property
    def is_calendar(self) -> bool:
        """Always true: a wait is computed on the local calendar."""
        return True

    @property
    def nominal(self) -> timedelta:
        """A lower bound of the wait (``days`` whole days)."""
        return timedelta(days=self.days)

    def __str__(self) -> str:
        parts = ["tomorrow" if self.days == 1 else f"after {self.days} days" if self.days else ""]
        if self.weekday is not None:
            parts.append(f"next {_WEEKDAYS[self.weekday]}")
        if self.at is not None:
            parts.append(f"at {self.at:%H:%M}")
        return " ".join(p for p in parts if p)


Wait = Delay | WaitUntil
"""What a step waits for: a :class:`Delay`, or a :class:`WaitUntil` a local weekday/time."""


def parse_wait(text: str) -> Delay | WaitUntil:
    """Parse a delay (``"2 days"``, ``"P1M"``) or a wait (``"next tuesday 09:00"``).

    Text that starts with ``P`` is an ISO 8601 duration: when it is refused, the
    :class:`~dripcore.errors.InvalidDelay` says why (see :meth:`Delay.parse`).
    """
    try:
        return Delay.parse(text)
    except InvalidDelay:
        if isinstance(text, str) and text.strip()[:1] in ("P", "p"):
            raise
        return WaitUntil.parse(text)


class WindowAction(enum.Enum):
    """What happens to a step due outside its send window."""

    MOVE = "move"
    """The step waits for the window's next opening."""
    SKIP = "skip"
    """The step is skipped: ``StepSkipped`` with reason ``outside window``."""


def _c_window_days(value: Iterable[int]) -> frozenset[int]:
    if value.__class__ is frozenset and value <= _ALL_DAYS:
        return value
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidWindow("window.days", value, "expected weekday numbers, 0 (Monday) to 6 (Sunday)")
    try:
        days = list(value)
    except Exception:  # an iterable of the caller's that fails: not weekdays we can read
        raise InvalidWindow("window.days", value, "expected weekday numbers, 0 (Monday) to 6 (Sunday)") from None
    for day in days:
        if day.__class__ is not int or not 0 <= day <= 6:
            raise InvalidWindow("window.days", day, "weekdays go from 0 (Monday) to 6 (Sunday)")
    return frozenset(days)


def _c_window_outside(value: WindowAction | str) -> WindowAction:
    return _impl_window_outside(value)


_impl_window_outside = _enum(WindowAction, "window.outside", InvalidWindow)


_ALL_DAYS = frozenset(range(7))
_BUSINESS_DAYS = frozenset(range(5))
_DAYS_RE = re.compile(r"^([a-z]{3,9})\s*(?:-\s*([a-z]{3,9}))?$")


@attrs.frozen(kw_only=True)
class SendWindow:
    """When a step may go, in the contact's local time: allowed weekdays and a time range.

    ``days`` are weekday numbers (0 = Monday). ``start``/``end`` bound the
    local time of day, ``start`` included and ``end`` excluded. A range that
    wraps past midnight says so with ``overnight=True`` (22:00-06:00 opens on
    each allowed day at 22:00 and closes at 06:00 the next morning); an
    inverted range without it is refused as a likely typo. Without ``start`` and
    ``end`` the whole day is allowed. A step due outside the window moves to
    the next opening, or is skipped with ``StepSkipped(reason="outside
    window")`` when ``outside`` is SKIP.

    >>> SendWindow.parse("tue-thu 09:00-10:00").days
    frozenset({1, 2, 3})
    >>> SendWindow.BUSINESS_DAYS.days == frozenset({0, 1, 2, 3, 4})
    True
    """

    BUSINESS_DAYS: ClassVar[SendWindow]

    days: frozenset[int] = attrs.field(default=_ALL_DAYS, converter=_c_window_days)
    start: time | None = None
    end: time | None = None
    overnight: bool = False
    """Must be True exactly when ``start`` is after ``end``: a range that wraps past midnight."""
    outside: WindowAction = attrs.field(default=WindowAction.MOVE, converter=_c_window_outside)
    """What happens to a step due outside the window: it moves to the next opening, or is skipped."""

    def __attrs_post_init__(self) -> None:
        if not self.days:
            raise InvalidWindow("window.days", sorted(self.days), "no allowed day: the step could never go")
        if any(d.__class__ is not int or not 0 <= d <= 6 for d in self.days):
            raise InvalidWindow("window.days", sorted(self.days, key=repr), "weekdays go from 0 (Monday) to 6 (Sunday)")
        _check_clock(self.start, "window.start", InvalidWindow)
        _check_clock(self.end, "window.end", InvalidWindow)
        if (self.start is None) is not (self.end is None):
            raise InvalidWindow("window.end" if self.end is None else "window.start", None, "give both start and end")
        if self.start is not None and self.start == self.end:
            raise InvalidWindow("window.end", self.end, "a zero-length range (start == end) never opens")
        if self.overnight.__class__ is not bool:
            raise InvalidWindow("window.overnight", self.overnight, "must be True or False")
        if self.start is not None and self.end is not None and (self.start > self.end) is not self.overnight:
            raise InvalidWindow(
                "window.end",
                self.end,
                f"start {self.start:%H:%M} is after end {self.end:%H:%M}: pass overnight=True for a range "
                "that wraps past midnight"
                if self.start > self.end
                else "overnight=True needs a range that wraps past midnight (start after end)",
            )

    @classmethod
    def business_days(cls, start: time | None = None, end: time | None = None) -> SendWindow:
        """Monday to Friday, optionally within ``start``-``end``."""
        return cls(days=_BUSINESS_DAYS, start=start, end=end)

    @classmethod
    def parse(cls, text: str, *, outside: WindowAction = WindowAction.MOVE) -> SendWindow:
        """Parse ``"business days"``, ``"tue-thu 09:00-10:00"``, ``"mon,wed 9am-5pm"``, ``"22:00-06:00 overnight"``."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidWindow("window", text, "expected e.g. 'tue-thu 09:00-10:00' or 'business days'")
        cleaned = " ".join(text.strip().lower().split())
        days: set[int] = set()
        rest = cleaned
        for prefix, chosen in (
            ("business days", _BUSINESS_DAYS),
            ("weekdays", _BUSINESS_DAYS),
            ("every day", _ALL_DAYS),
        ):
            if rest.startswith(prefix):
                days, rest = set(chosen), rest[len(prefix) :].strip()
                break
        else:
            head, _, tail = rest.partition(" ")
            if head and head[0].isalpha():
                for part in head.split(","):
                    match = _DAYS_RE.match(part)
                    if match is None or match.group(1) not in _WEEKDAY_WORDS:
                        raise InvalidWindow("window", text, f"unknown day {part!r}")
                    first = _WEEKDAY_WORDS[match.group(1)]
                    if match.group(2) is None:
                        days.add(first)
                        continue
                    if match.group(2) not in _WEEKDAY_WORDS:
                        raise InvalidWindow("window", text, f"unknown day {match.group(2)!r}")
                    last = _WEEKDAY_WORDS[match.group(2)]
                    days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
                rest = tail.strip()
            else:
                days = set(_ALL_DAYS)
        start = end = None
        overnight = rest.endswith("overnight")
        if overnight:
            rest = rest[: -len("overnight")].strip()
        if rest:
            low, sep, high = rest.partition("-")
            if not sep:
                raise InvalidWindow("window", text, "expected a time range such as '09:00-17:00'")
            start = _parse_clock(low, "window.start", InvalidWindow)
            end = _parse_clock(high, "window.end", InvalidWindow)
        return cls(days=frozenset(days), start=start, end=end, overnight=overnight, outside=outside)

    def contains(self, local: datetime) -> bool:
        """Whether the local wall-clock time ``local`` (naive or aware; its fields are read) is inside."""
        day = local.weekday()
        if self.start is None or self.end is None:
            return day in self.days
        clock = local.time()
        if self.start < self.end:
            return day in self.days and self.start <= clock < self.end
        return (day in self.days and clock >= self.start) or ((day - 1) % 7 in self.days and clock < self.end)


SendWindow.BUSINESS_DAYS = SendWindow.business_days()


# --------------------------------------------------------------------------- steps


class ConditionType(enum.Enum):
    """What a step :class:`Condition` checks about an earlier step."""

    OPENED = "opened"
    """The contact opened the earlier step's email (a click counts as an open)."""
    NOT_OPENED = "not_opened"
    """The contact has not opened the earlier step's email."""
    CLICKED = "clicked"
    """The contact clicked a link (or the ``link``) in the earlier step's email."""
    NOT_CLICKED = "not_clicked"
    """The contact has not clicked a link (or the ``link``) in the earlier step's email."""


_NEGATION = {
    ConditionType.OPENED: ConditionType.NOT_OPENED,
    ConditionType.NOT_OPENED: ConditionType.OPENED,
    ConditionType.CLICKED: ConditionType.NOT_CLICKED,
    ConditionType.NOT_CLICKED: ConditionType.CLICKED,
}


_impl_condition_type = _enum(ConditionType, "condition.type", InvalidCondition)


def _c_condition_type(value: ConditionType | str) -> ConditionType:
    return _impl_condition_type(value)


@attrs.frozen(kw_only=True)
class Condition:
    """Send a step only if the contact opened (or clicked, or did not) an earlier step.

    ``step`` is the position of the earlier step; ``link`` narrows a click
    condition to one URL. Two consecutive steps with the same delay and
    opposite conditions form an if/else: exactly one of them is sent.
    """

    type: ConditionType = attrs.field(converter=_c_condition_type)
    """What to check: opened, not opened, clicked or not clicked."""
    step: int = attrs.field(validator=_nonneg_int("condition.step", InvalidCondition))
    link: str | None = attrs.field(default=None, validator=_opt_text("condition.link", InvalidCondition, max_len=2048))

    def __attrs_post_init__(self) -> None:
        if self.step < 1:
            raise InvalidCondition("condition.step", self.step, "must be the position (>= 1) of an earlier step")
        if self.link is not None and self.type in (ConditionType.OPENED, ConditionType.NOT_OPENED):
            raise InvalidCondition("condition.link", self.link, "a link only narrows clicked/not_clicked")

    def negated(self) -> Condition:
        """The opposite condition (opened <-> not_opened, clicked <-> not_clicked)."""
        return Condition(type=_NEGATION[self.type], step=self.step, link=self.link)

    def holds(self, enrollment: Enrollment) -> bool:
        """Whether the condition is true for ``enrollment``'s engagement so far."""
        kind = self.type
        if kind is ConditionType.OPENED:
            return self.step in enrollment.opened
        if kind is ConditionType.NOT_OPENED:
            return self.step not in enrollment.opened
        if self.link is None:
            clicked = any(position == self.step for position, _ in enrollment.clicked)
        else:
            clicked = (self.step, self.link) in enrollment.clicked
        return clicked if kind is ConditionType.CLICKED else not clicked


# An email address is one plain RFC 5322 addr-spec, as RFC 5321 lets it travel: a dot-atom
# local part (atext: letters, digits and !#$%&'*+-/=?^_`{|}~, and dots; runs of dots and dots
# at either end are accepted too, as some mobile carriers hand such addresses out), one "@",
# and a domain of LDH labels (letters, digits, inner hyphens; 1 to 63 characters) joined by
# dots. No display name, quoted local part, comment or [address literal]: those are where
# "a, b@c", "x>,<v@evil.example" and "a;b@c" hide a second recipient or a header. Lengths
# are RFC 5321's, in UTF-8 octets: 64 for the local part, 254 for the address (its 256-octet
# path less the angle brackets). RFC 6531 addresses are accepted: a local part may hold any
# printable non-ASCII character (no space, control or format character, no lone surrogate),
# and a domain label may be a Unicode one that IDNA encodes to a valid LDH label.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LDH_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ASCII_ADDRESS = re.compile(rf"[.]*{_ATEXT}[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]*@{_LDH_LABEL}(?:\.{_LDH_LABEL})*")
_ASCII_LOCAL = re.compile(rf"{_ATEXT}+")
_ASCII_LABEL = re.compile(_LDH_LABEL)
_MAX_ADDRESS = 254
_MAX_LOCAL = 64


def _address_problem(value: str) -> str | None:
    """Why ``value`` (a string) is not one plain address; None when it is."""
    if len(value) <= _MAX_ADDRESS and _ASCII_ADDRESS.fullmatch(value) is not None:
        return None if value.index("@") <= _MAX_LOCAL else f"a local part longer than {_MAX_LOCAL} characters"
    # The uncommon cases: an internationalized address, or a refusal to explain.
    local, at, domain = value.rpartition("@")
    if not at or "@" in local:
        return "expected exactly one '@'" if "@" in local else "no '@'"
    for char in value:
        if char.isascii():
            if not char.isprintable() or char == " ":
                return f"holds {char!r}: no space or control character"
        elif not char.isprintable():  # (a lone surrogate, NEL, a separator or a format character)
            return f"holds {char!r}: no space, control, format or undecodable character"
    if len(value.encode("utf-8")) > _MAX_ADDRESS:
        return f"longer than {_MAX_ADDRESS} octets (UTF-8)"
    if not local:
        return "nothing before the '@'"
    if len(local.encode("utf-8")) > _MAX_LOCAL:
        return f"a local part longer than {_MAX_LOCAL} octets (UTF-8)"
    if not local.strip("."):
        return "a local part of dots only"
    for atom in local.split("."):  # (runs of dots are accepted: real addresses of some carriers have them)
        for char in atom:  # (non-ASCII characters were checked above)
            if char.isascii() and _ASCII_LOCAL.fullmatch(char) is None:
                return f"holds {char!r}, which a plain address can't (no quoting, display name or list)"
    if not domain:
        return "nothing after the '@'"
    ascii_length = 0
    for label in domain.split("."):
        if label.isascii():
            encoded = label
        else:
            try:
                encoded = label.encode("idna").decode("ascii")
            except UnicodeError:
                return f"the domain label {label!r} is not a valid internationalized name"
        if _ASCII_LABEL.fullmatch(encoded) is None:
            return f"the domain label {label!r} is not a host name label (letters, digits, inner hyphens; 1 to 63)"
        ascii_length += len(encoded) + 1
    if ascii_length - 1 > _MAX_ADDRESS - 2:
        return "a domain longer than 252 characters"
    return None


def _check_email(value: Any, field: str, error: type[ValidationError]) -> str:
    """``value`` if it is one plain email address (see above); else ``error`` naming ``field``."""
    if value.__class__ is not str and not isinstance(value, str):
        raise error(field, value, f"an email address is a string, not {type(value).__name__}")
    problem = _address_problem(value)
    if problem is not None:
        raise error(field, value, f"not a single plain email address: {problem}")
    return value


def _email(field: str, error: type[ValidationError]) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        _check_email(value, field, error)

    return check


def _opt_email(field: str, error: type[ValidationError]) -> Callable[[Any, Any, Any], None]:
    check = _email(field, error)

    def opt(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return opt


@attrs.frozen(kw_only=True)
class SenderIdentity:
    """Who an email comes from: the ``From`` address and name, and an optional ``Reply-To``."""

    from_email: str = attrs.field(validator=_email("sender.from_email", InvalidStep))
    """The ``From`` address (one plain email address)."""
    from_name: str | None = attrs.field(default=None, validator=_opt_text("sender.from_name", InvalidStep))
    """The ``From`` display name; None: the address alone."""
    reply_to: str | None = attrs.field(default=None, validator=_opt_email("sender.reply_to", InvalidStep))
    """The ``Reply-To`` address, or None."""


@attrs.frozen(kw_only=True)
class Step:
    """One email of a sequence.

    ``position`` orders the steps (1, 2, 3, ...; unique within a sequence).
    ``delay`` counts from the previous *sent* step, or from enrollment for the
    first step; inactive or skipped steps do not move that reference point.
    Content is ``template_id``, or a ``subject`` with ``html`` and/or ``text``.
    An inactive step is passed over without breaking the chain. ``condition``
    makes the step depend on engagement with an earlier step. ``window``
    restricts when it may go (default: the sequence's window). With
    ``expires_after``, a step that would go more than that late (after a
    pause or downtime) is dropped: ``StepSkipped(reason="expired")``.
    """

    position: int
    delay: Delay | WaitUntil = attrs.field(factory=Delay.immediately)
    subject: str | None = attrs.field(default=None, validator=_opt_text("step.subject", InvalidStep, max_len=998))
    """The subject, a Liquid template; required without ``template_id``, else it wins over the template's."""
    html: str | None = attrs.field(default=None, validator=_opt_body("step.html", InvalidStep))
    """The HTML body, a Liquid template; with ``template_id``, it wins over the template's."""
    text: str | None = attrs.field(default=None, validator=_opt_body("step.text", InvalidStep))
    """The plain-text body, a Liquid template; with ``template_id``, it wins over the template's."""
    template_id: str | None = attrs.field(default=None, validator=_opt_text("step.template_id", InvalidStep))
    """The id of a stored template to take the content from (the renderer's template store)."""
    active: bool = True
    """False switches the step off: it is passed over (reason INACTIVE) without breaking the chain."""
    sender: SenderIdentity | None = None
    """Who this step's email comes from; None: the sequence's ``sender``."""
    condition: Condition | None = None
    window: SendWindow | None = None
    expires_after: Delay | None = None
    """How late the step may go (after a pause or downtime) before it is dropped; None: no limit."""
    name: str = attrs.field(default="", validator=_text("step.name", InvalidStep, allow_blank=True))
    """A label for people, shown in previews and errors; may be empty."""

    def __attrs_post_init__(self) -> None:
        if not _position(self.position):
            raise InvalidStep("step.position", self.position, "must be an integer from 1 to 2**31 - 1")
        if not isinstance(self.delay, (Delay, WaitUntil)):
            raise InvalidStep("step.delay", self.delay, "must be a Delay or a WaitUntil (see parse_wait)")
        if self.window is not None and not isinstance(self.window, SendWindow):
            raise InvalidWindow("step.window", self.window, "must be a SendWindow (see SendWindow.parse)")
        if self.expires_after is not None and not isinstance(self.expires_after, Delay):
            raise InvalidStep("step.expires_after", self.expires_after, "must be a Delay")
        if self.active.__class__ is not bool:
            raise InvalidStep("step.active", self.active, "must be True or False")
        if self.template_id is None:
            if not (self.html or self.text):
                raise InvalidStep(
                    f"steps[{self.position}]", self.name or None,
                    "a step needs content: a template_id, or html and/or text",
                )  # fmt: skip
            if self.subject is None:
                raise InvalidStep("step.subject", None, "a step with html/text content needs a subject")
        if self.sender is not None and not isinstance(self.sender, SenderIdentity):
            raise InvalidStep("step.sender", self.sender, "must be a SenderIdentity")
        if self.condition is not None:
            if not isinstance(self.condition, Condition):
                raise InvalidCondition("step.condition", self.condition, "must be a Condition")
            if self.condition.step >= self.position:
                raise InvalidCondition(
                    "step.condition.step",
                    self.condition.step,
                    f"step {self.position} can only depend on an earlier step",
                )


# --------------------------------------------------------------------------- triggers


class TriggerType(enum.Enum):
    """What starts a sequence."""

    TAG_ADDED = "tag_added"
    """A tag was applied to the contact (value: the tag, compared case-insensitively)."""
    GROUP_ADDED = "group_added"
    """The contact joined a group (value: the group id)."""
    LIST_ADDED = "list_added"
    """The contact was added to a list (value: the list id)."""
    ANNIVERSARY = "anniversary"
    """The contact's ``birthday`` or sign-up (``created``) date came round: the daily sweep fires it."""
    AFTER_PURCHASE = "after_purchase"
    """A payment was confirmed (value: the product id; key: the order id)."""
    AFTER_FIRST_CLICK = "after_first_click"
    """The contact first clicked a link in a mailing (value: the mailing id)."""
    MANUAL = "manual"
    """An API or dashboard call asked to start the sequence."""


ANNIVERSARY_FIELDS = frozenset({"birthday", "created"})


def _trigger_value(type_: TriggerType, value: Any, field: str, error: type[ValidationError]) -> None:
    if value is None:
        if type_ is TriggerType.ANNIVERSARY and error is InvalidTrigger:
            raise error(field, value, "an anniversary trigger needs 'birthday' or 'created'")
        return
    if not isinstance(value, str):
        raise error(field, value, "must be None (any) or a non-empty string")
    check_text(value, field, error)
    if type_ is TriggerType.ANNIVERSARY and value not in ANNIVERSARY_FIELDS:
        raise error(field, value, "an anniversary trigger needs 'birthday' or 'created'")


def normalize_trigger_value(type_: TriggerType, value: str | None) -> str | None:
    """The form a trigger value is compared in: tags are case-insensitive."""
    if value is not None and type_ is TriggerType.TAG_ADDED:
        return value.strip().casefold()
    return value


_impl_trigger_type = _enum(TriggerType, "trigger.type", UnknownTriggerType)


def _c_trigger_type(value: TriggerType | str) -> TriggerType:
    return _impl_trigger_type(value)


@attrs.frozen(kw_only=True)
class Trigger:
    """What enrolls contacts into a sequence: a :class:`TriggerType` and an optional value.

    ``value=None`` means "any": a "tag added" trigger with no value fires for
    every tag, one with ``value="vip"`` only for that tag (tags compare
    case-insensitively). Anniversary triggers need ``"birthday"`` or
    ``"created"``.
    """

    type: TriggerType = attrs.field(converter=_c_trigger_type)
    """The kind of event that fires it."""
    value: str | None = None
    """The tag, group, list, product or mailing id it fires for (None: any); for ANNIVERSARY, which date."""

    def __attrs_post_init__(self) -> None:
        _trigger_value(self.type, self.value, "trigger.value", InvalidTrigger)

    @property
    def key(self) -> tuple[TriggerType, str | None]:
        """The normalised (type, value) pair triggers are matched on."""
        return (self.type, normalize_trigger_value(self.type, self.value))


_impl_event_type = _enum(TriggerType, "event.type", UnknownTriggerType)


def _c_event_type(value: TriggerType | str) -> TriggerType:
    return _impl_event_type(value)


_impl_event_variables = _frozen_mapping("event.variables", InvalidTriggerEvent)


def _c_event_variables(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return _impl_event_variables(value)


@attrs.frozen(kw_only=True)
class TriggerEvent:
    """Something that happened to a contact and may start (or end) sequences.

    Use the named constructors: ``TriggerEvent.tag_added("c1", "VIP")``,
    ``TriggerEvent.purchase("c1", product_id="p9", order_id="o-1001")``.
    ``key`` deduplicates: a keyed event (an order id) enrolls a contact once
    per key, so two orders give two post-purchase enrollments while a webhook
    delivered twice gives one.
    """

    type: TriggerType = attrs.field(converter=_c_event_type)
    """What happened."""
    contact_id: str = attrs.field(validator=_text("event.contact_id", InvalidTriggerEvent))
    """The contact it happened to."""
    value: str | None = None
    """The tag, group, list, product or mailing id it concerns, if any; for ANNIVERSARY, which date."""
    key: str | None = attrs.field(default=None, validator=_opt_text("event.key", InvalidTriggerEvent))
    variables: Mapping[str, Any] = attrs.field(factory=dict, converter=_c_event_variables, hash=False)
    """Template variables for the enrollments it starts (``order_id`` for a purchase)."""

    def __attrs_post_init__(self) -> None:
        _trigger_value(self.type, self.value, "event.value", InvalidTriggerEvent)

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_read_only(self, ("variables",))

    @classmethod
    def tag_added(cls, contact_id: str, tag: str) -> TriggerEvent:
        """A tag was applied to a contact (fire only on the first apply)."""
        return cls(type=TriggerType.TAG_ADDED, contact_id=contact_id, value=tag)

    @classmethod
    def group_added(cls, contact_id: str, group_id: str) -> TriggerEvent:
        """A contact joined a group."""
        return cls(type=TriggerType.GROUP_ADDED, contact_id=contact_id, value=group_id)

    @classmethod
    def list_added(cls, contact_id: str, list_id: str) -> TriggerEvent:
        """A contact was added to a list."""
        return cls(type=TriggerType.LIST_ADDED, contact_id=contact_id, value=list_id)

    @classmethod
    def purchase(
        cls,
        contact_id: str,
        *,
        product_id: str | None = None,
        order_id: str | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> TriggerEvent:
        """A payment was confirmed; ``order_id`` makes it enroll once per order.

        ``order_id`` is also a template variable (``{{order_id}}``) of the enrollment it
        starts, unless ``variables`` gives one of its own.
        """
        event = cls(
            type=TriggerType.AFTER_PURCHASE,
            contact_id=contact_id,
            value=product_id,
            key=order_id,
            variables={} if variables is None else variables,
        )
        # Built first, so a bad order id is refused as ``event.key``.
        if event.key is not None and "order_id" not in event.variables:
            event = attrs.evolve(event, variables={**event.variables, "order_id": event.key})
        return event

    @classmethod
    def first_click(cls, contact_id: str, mailing_id: str | None = None) -> TriggerEvent:
        """A contact clicked a link for the first time in a mailing."""
        return cls(type=TriggerType.AFTER_FIRST_CLICK, contact_id=contact_id, value=mailing_id)

    @classmethod
    def manual(cls, contact_id: str, value: str | None = None, *, key: str | None = None) -> TriggerEvent:
        """An API or dashboard call asked to start MANUAL sequences."""
        return cls(type=TriggerType.MANUAL, contact_id=contact_id, value=value, key=key)

    @classmethod
    def anniversary(cls, contact_id: str, field: str, *, year: int) -> TriggerEvent:
        """A contact's birthday or sign-up anniversary; keyed by year (once a year)."""
        if year.__class__ is not int or not 1 <= year <= 9999:
            raise InvalidTriggerEvent("event.key", year, "an anniversary's year is an integer from 1 to 9999")
        return cls(type=TriggerType.ANNIVERSARY, contact_id=contact_id, value=field, key=str(year))


# --------------------------------------------------------------------------- sequences


class SequenceStatus(enum.Enum):
    """The lifecycle of a sequence: drafts and paused sequences send nothing; archived is final."""

    DRAFT = "draft"
    """Not started: sends nothing and enrolls no one until activated."""
    ACTIVE = "active"
    """Live: its trigger enrolls contacts and their due steps are sent."""
    PAUSED = "paused"
    """On hold: sends nothing and enrolls no one until resumed; its enrollments read as PAUSED."""
    ARCHIVED = "archived"
    """Ended for good: its enrollments exited (reason ARCHIVED) and it can't be edited."""


class ReentryPolicy(enum.Enum):
    """Whether a contact may go through a sequence again (for the same key).

    ``NEVER``: one enrollment per contact and key, ever. ``AFTER_EXIT``: a new
    enrollment may start once the previous one has ended (completed or exited).
    A contact is never in the same sequence twice at once for the same key.
    """

    NEVER = "never"
    AFTER_EXIT = "after_exit"


class PausePolicy(enum.Enum):
    """What happens to due times when a paused enrollment or sequence resumes.

    ``BUMP``: a step that fell due during the pause goes once, at resume; the
    steps after it keep their delays from that send (stale sends are bumped,
    never flooded). ``EXTEND``: the remaining wait is kept, as if the pause
    had never happened (every due time moves later by the pause's length).
    """

    BUMP = "bump"
    EXTEND = "extend"


def _c_sequence_paused_at(value: datetime | None) -> datetime | None:
    return _utc_instant(value, "sequence.paused_at", True)


def _c_sequence_created_at(value: datetime | None) -> datetime | None:
    return _utc_instant(value, "sequence.created_at", True)


def _c_sequence_updated_at(value: datetime | None) -> datetime | None:
    return _utc_instant(value, "sequence.updated_at", True)


_impl_sequence_status = _enum(SequenceStatus, "sequence.status", InvalidSequence)


def _c_sequence_status(value: SequenceStatus | str) -> SequenceStatus:
    return _impl_sequence_status(value)


_impl_sequence_reentry = _enum(ReentryPolicy, "sequence.reentry", InvalidSequence)


def _c_sequence_reentry(value: ReentryPolicy | str) -> ReentryPolicy:
    return _impl_sequence_reentry(value)


_impl_sequence_pause_policy = _enum(PausePolicy, "sequence.pause_policy", InvalidSequence)


def _c_sequence_pause_policy(value: PausePolicy | str) -> PausePolicy:
    return _impl_sequence_pause_policy(value)


class UnknownVariables(enum.Enum):
    """What a template does with a variable the contact and enrollment don't have.

    ``EMPTY``: it renders as an empty string. ``ERROR``: rendering fails and
    that one message is set aside with an error naming the variable.
    """

    EMPTY = "empty"
    ERROR = "error"


def _c_sequence_unknown_variables(value: UnknownVariables | str) -> UnknownVariables:
    return _impl_sequence_unknown_variables(value)


_impl_sequence_unknown_variables = _enum(UnknownVariables, "sequence.unknown_variables", InvalidSequence)


@attrs.frozen(kw_only=True)
class Sequence:
    """A drip campaign: a trigger and an ordered list of steps.

    ``timezone`` is the fallback zone for contacts without one (the chain is:
    the contact's zone, else this, else UTC). ``exit_on`` lists goal triggers
    that end an enrollment with reason GOAL_MET. ``version`` counts saved
    edits; stores use it for optimistic concurrency. ``paused_at`` is set
    while PAUSED (an EXTEND resume shifts due times by the pause's length).
    ``window`` is the send window of every step that has none of its own.
    ``created_at`` and ``updated_at`` are stamped by the engine from its clock
    when the sequence is created and on every save or status change (the
    model never reads a clock); both are None for a sequence stored before
    dripcore kept them, and ``created_at`` stays None for it (it is unknown).
    """

    id: str = attrs.field(validator=_text("sequence.id", InvalidSequence))
    """Its unique id, which ``save_sequence`` matches a definition to the stored sequence by."""
    name: str = attrs.field(validator=_text("sequence.name", InvalidSequence))
    """A name for people."""
    trigger: Trigger = attrs.field(factory=lambda: Trigger(type=TriggerType.MANUAL))
    """What enrolls contacts (default: a MANUAL trigger)."""
    steps: tuple[Step, ...] = attrs.field(default=())
    """The emails; given in any order, kept sorted by ``position``."""
    status: SequenceStatus = attrs.field(default=SequenceStatus.DRAFT, converter=_c_sequence_status)
    """Where it is in its lifecycle: saved as DRAFT or ACTIVE, then changed by the engine's actions."""
    description: str = attrs.field(default="", validator=_body("sequence.description", InvalidSequence))
    """Free text for people; dripcore does not read it."""
    sender: SenderIdentity | None = None
    """Who its emails come from when a step has no ``sender`` of its own; None: the mail sender's default."""
    enroll_existing: bool = False
    """Whether activating it also enrolls the trigger list's current members."""
    reentry: ReentryPolicy = attrs.field(default=ReentryPolicy.NEVER, converter=_c_sequence_reentry)
    """Whether a contact may go through it again for the same key."""
    exit_on: tuple[Trigger, ...] = ()
    timezone: str | None = attrs.field(default=None, validator=_timezone_validator("sequence.timezone"))
    pause_policy: PausePolicy = attrs.field(default=PausePolicy.BUMP, converter=_c_sequence_pause_policy)
    """What happens to due times when it, or one of its enrollments, resumes from a pause."""
    version: int = attrs.field(default=1, validator=_nonneg_int("sequence.version", InvalidSequence))
    paused_at: datetime | None = attrs.field(default=None, converter=_c_sequence_paused_at)
    unknown_variables: UnknownVariables = attrs.field(
        default=UnknownVariables.EMPTY, converter=_c_sequence_unknown_variables
    )
    """What a template does with a variable it can't find: renders it empty, or fails."""
    window: SendWindow | None = None
    created_at: datetime | None = attrs.field(default=None, converter=_c_sequence_created_at)
    updated_at: datetime | None = attrs.field(default=None, converter=_c_sequence_updated_at)

    _positions: tuple[int, ...] = attrs.field(init=False, eq=False, repr=False)
    _first_active_from: tuple[int, ...] = attrs.field(init=False, eq=False, repr=False)
    _zone: zoneinfo.ZoneInfo | None = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.trigger, Trigger):
            raise InvalidSequence("sequence.trigger", self.trigger, "must be a Trigger")
        steps = self.steps
        if steps.__class__ is not tuple:
            if isinstance(steps, (str, bytes, Mapping)) or not isinstance(steps, Iterable):
                raise InvalidSequence("sequence.steps", steps, "must be a sequence of Step")
            try:
                steps = tuple(steps)
            except Exception:  # an iterable of the caller's that fails as it is read
                raise InvalidSequence("sequence.steps", self.steps, "must be a sequence of Step") from None
        for step in steps:
            if not isinstance(step, Step):
                raise InvalidSequence("sequence.steps", step, "must contain Step objects only")
        ordered = tuple(sorted(steps, key=lambda s: s.position))
        seen: set[int] = set()
        for step in ordered:
            if step.position in seen:
                raise DuplicateStepPosition(
                    "steps.position", step.position, f"two steps of sequence {self.id!r} share this position"
                )
            seen.add(step.position)
        for step in ordered:
            cond = step.condition
            if cond is not None and cond.step not in seen:
                raise InvalidCondition(f"steps[{step.position}].condition.step", cond.step, "no step has that position")
        exit_on = self.exit_on
        if exit_on.__class__ is not tuple:
            if isinstance(exit_on, (str, bytes, Mapping)) or not isinstance(exit_on, Iterable):
                raise InvalidSequence("sequence.exit_on", exit_on, "must be a sequence of Trigger")
            try:
                exit_on = tuple(exit_on)
            except Exception:  # an iterable of the caller's that fails as it is read
                raise InvalidSequence("sequence.exit_on", self.exit_on, "must be a sequence of Trigger") from None
        for goal in exit_on:
            if not isinstance(goal, Trigger):
                raise InvalidSequence("sequence.exit_on", goal, "must contain Trigger objects only")
        for name in ("enroll_existing",):
            if getattr(self, name).__class__ is not bool:
                raise InvalidSequence(f"sequence.{name}", getattr(self, name), "must be True or False")
        if self.sender is not None and not isinstance(self.sender, SenderIdentity):
            raise InvalidSequence("sequence.sender", self.sender, "must be a SenderIdentity")
        if self.window is not None and not isinstance(self.window, SendWindow):
            raise InvalidWindow("sequence.window", self.window, "must be a SendWindow (see SendWindow.parse)")
        if (self.status is SequenceStatus.PAUSED) is (self.paused_at is None):
            raise InvalidSequence(
                "sequence.paused_at", self.paused_at, f"must be set exactly when paused (status={self.status.value})"
            )
        object.__setattr__(self, "steps", ordered)
        object.__setattr__(self, "exit_on", exit_on)
        # first_active_from[i] is the index of the first active step at or after
        # index i (len(steps) when there is none): finding the next step to send
        # is then a bisect plus one lookup, whatever the sequence length.
        first: list[int] = [len(ordered)] * (len(ordered) + 1)
        for i in range(len(ordered) - 1, -1, -1):
            first[i] = i if ordered[i].active else first[i + 1]
        object.__setattr__(self, "_positions", tuple(s.position for s in ordered))
        object.__setattr__(self, "_first_active_from", tuple(first))
        object.__setattr__(self, "_zone", zone(self.timezone, "sequence.timezone"))

    def step(self, position: int) -> Step | None:
        """The step at ``position``, or None."""
        i = bisect_right(self._positions, position) - 1
        if i >= 0 and self._positions[i] == position:
            return self.steps[i]
        return None

    def next_active_step(self, after: int) -> Step | None:
        """The first active step whose position is greater than ``after``."""
        i = self._first_active_from[bisect_right(self._positions, after)]
        return self.steps[i] if i < len(self.steps) else None

    def has_inactive_between(self, low: int, high: int | None) -> bool:
        """Whether an inactive step lies strictly between positions ``low`` and ``high`` (None: the end)."""
        positions = self._positions
        start = bisect_right(positions, low)
        stop = len(positions) if high is None else bisect_right(positions, high - 1)
        return any(not self.steps[i].active for i in range(start, stop))

    def active_steps(self) -> tuple[Step, ...]:
        """The active steps, in order."""
        return tuple(s for s in self.steps if s.active)

    @property
    def fallback_zone(self) -> zoneinfo.ZoneInfo | None:
        """The sequence's fallback zone (None for UTC)."""
        return self._zone


# --------------------------------------------------------------------------- enrollments


class EnrollmentStatus(enum.Enum):
    """Where a contact is in a sequence. COMPLETED and EXITED are terminal."""

    ACTIVE = "active"
    """Going through the steps: each is sent when due."""
    PAUSED = "paused"
    """On hold (on its own, or because its sequence is paused): sends nothing until resumed."""
    COMPLETED = "completed"
    """Went past its last step; terminal."""
    EXITED = "exited"
    """Left early, for an :class:`ExitReason`; terminal."""

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED and EXITED, which never change again."""
        return self is EnrollmentStatus.COMPLETED or self is EnrollmentStatus.EXITED


class ExitReason(enum.Enum):
    """Why an enrollment left its sequence before completing it."""

    UNSUBSCRIBED = "unsubscribed"
    """The contact unsubscribed."""
    BOUNCED = "bounced"
    """The contact's address bounced permanently."""
    COMPLAINED = "complained"
    """The contact marked an email as spam."""
    SUPPRESSED = "suppressed"
    """The contact must not be mailed for another reason, such as an operator's list."""
    MANUAL = "manual"
    """Taken out of the sequence by hand (``cancel_enrollment``)."""
    ARCHIVED = "archived"
    """The sequence was archived."""
    GOAL_MET = "goal_met"
    """A goal trigger of the sequence's ``exit_on`` fired for the contact."""
    INVALID_ADDRESS = "invalid_address"
    """The provider rejected the address as invalid (a validation reject, not a bounce)."""


#: The exit reasons that also describe a suppressed contact.
SUPPRESSION_REASONS = frozenset(
    {
        ExitReason.UNSUBSCRIBED,
        ExitReason.BOUNCED,
        ExitReason.COMPLAINED,
        ExitReason.SUPPRESSED,
        ExitReason.INVALID_ADDRESS,
    }
)

_ACTIVE = EnrollmentStatus.ACTIVE
_PAUSED = EnrollmentStatus.PAUSED
_COMPLETED = EnrollmentStatus.COMPLETED
_EXITED = EnrollmentStatus.EXITED


_impl_enrollment_status = _enum(EnrollmentStatus, "enrollment.status", InvalidEnrollment)


def _c_enrollment_status(value: EnrollmentStatus | str) -> EnrollmentStatus:
    return _impl_enrollment_status(value)


def _c_enrollment_enrolled_at(value: datetime) -> datetime:
    return _utc_instant(value, "enrollment.enrolled_at", False)


def _c_enrollment_next_step_due_at(value: datetime | None) -> datetime | None:
    return _utc_instant(value, "enrollment.next_step_due_at", True)


def _c_enrollment_last_step_sent_at(value: datetime | None) -> datetime | None:
    return _utc_instant(value, "enrollment.last_step_sent_at", True)


_impl_enrollment_exit_reason = _opt_enum(ExitReason, "enrollment.exit_reason", InvalidEnrollment)


def _c_enrollment_exit_reason(value: ExitReason | str | None) -> ExitReason | None:
    return _impl_enrollment_exit_reason(value)


def _c_enrollment_paused_at(value: datetime | None) -> datetime | None:
    return _utc_instant(value, "enrollment.paused_at", True)


def _c_enrollment_ended_at(value: datetime | None) -> datetime | None:
    return _utc_instant(value, "enrollment.ended_at", True)


_impl_enrollment_variables = _frozen_mapping("enrollment.variables", InvalidEnrollment)


def _c_enrollment_variables(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return _impl_enrollment_variables(value)


_impl_enrollment_opened = _frozenset_of(int, "enrollment.opened", InvalidEnrollment)


def _c_enrollment_opened(value: Iterable[Any]) -> frozenset[Any]:
    return _impl_enrollment_opened(value)


_impl_enrollment_clicked = _frozenset_of(tuple, "enrollment.clicked", InvalidEnrollment)


def _c_enrollment_clicked(value: Iterable[Any]) -> frozenset[Any]:
    return _impl_enrollment_clicked(value)


_impl_enrollment_skipped = _frozenset_of(int, "enrollment.skipped", InvalidEnrollment)


def _c_enrollment_skipped(value: Iterable[Any]) -> frozenset[Any]:
    return _impl_enrollment_skipped(value)


@attrs.frozen(kw_only=True)
class Enrollment:
    """One contact's way through one sequence.

    ``last_step_sent`` is the position of the last step sent (0 before the
    first) and ``last_step_sent_at`` when; ``next_step_due_at`` is when
    :func:`~dripcore.scheduler.advance` should next look at it (None once
    terminal). ``paused_at`` is set while PAUSED. ``opened`` and ``clicked``
    are the engagement facts step conditions read; ``skipped`` holds the
    positions passed over because their condition was false. ``key`` is the dedupe key
    of the trigger that started it; ``version`` is maintained by the store.

    The fields must agree with the status: an ACTIVE enrollment has a due
    time and no exit reason, an EXITED one has a reason and no due time, and so
    on; a contradiction raises :class:`~dripcore.errors.InvalidEnrollment`.
    """

    id: str = attrs.field(validator=_text("enrollment.id", InvalidEnrollment))
    """Its unique id (the engine makes it with its ``id_factory``)."""
    sequence_id: str = attrs.field(validator=_text("enrollment.sequence_id", InvalidEnrollment))
    """The sequence it goes through."""
    contact_id: str = attrs.field(validator=_text("enrollment.contact_id", InvalidEnrollment))
    """The contact going through it."""
    status: EnrollmentStatus = attrs.field(converter=_c_enrollment_status)
    """Where it is: ACTIVE, PAUSED, COMPLETED or EXITED."""
    enrolled_at: datetime = attrs.field(converter=_c_enrollment_enrolled_at)
    """When the contact entered the sequence."""
    next_step_due_at: datetime | None = attrs.field(default=None, converter=_c_enrollment_next_step_due_at)
    last_step_sent: int = 0
    last_step_sent_at: datetime | None = attrs.field(default=None, converter=_c_enrollment_last_step_sent_at)
    """When the last step was sent (None before the first)."""
    exit_reason: ExitReason | None = attrs.field(default=None, converter=_c_enrollment_exit_reason)
    """Why it exited; None unless EXITED."""
    paused_at: datetime | None = attrs.field(default=None, converter=_c_enrollment_paused_at)
    ended_at: datetime | None = attrs.field(default=None, converter=_c_enrollment_ended_at)
    """When it completed or exited; None while ACTIVE or PAUSED."""
    variables: Mapping[str, Any] = attrs.field(factory=dict, converter=_c_enrollment_variables, hash=False)
    """Template variables of this enrollment (from its trigger event or ``enroll``), over the contact's metadata."""
    opened: frozenset[int] = attrs.field(default=frozenset(), converter=_c_enrollment_opened)
    clicked: frozenset[tuple[int, str]] = attrs.field(default=frozenset(), converter=_c_enrollment_clicked)
    skipped: frozenset[int] = attrs.field(default=frozenset(), converter=_c_enrollment_skipped)
    key: str | None = attrs.field(default=None, validator=_opt_text("enrollment.key", InvalidEnrollment))
    version: int = 0

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_read_only(self, ("variables",))

    def __attrs_post_init__(self) -> None:
        # Written as straight-line checks rather than attrs validators: this
        # runs on every evolve of the dispatch hot path.
        status = self.status
        last = self.last_step_sent
        if last.__class__ is not int or not 0 <= last <= _MAX_INT32:
            raise InvalidEnrollment("enrollment.last_step_sent", last, "must be an integer from 0 to 2**31 - 1")
        if (last == 0) is not (self.last_step_sent_at is None):
            raise InvalidEnrollment(
                "enrollment.last_step_sent_at",
                self.last_step_sent_at,
                f"must be set exactly when a step was sent (last_step_sent={last})",
            )
        if self.version.__class__ is not int or not 0 <= self.version < _MAX_INT32:
            # (below the column's largest value: every commit stores version + 1)
            raise InvalidEnrollment("enrollment.version", self.version, "must be an integer from 0 to 2**31 - 2")
        due = self.next_step_due_at
        reason = self.exit_reason
        if status is _ACTIVE or status is _PAUSED:
            if due is None:
                raise InvalidEnrollment(
                    "enrollment.next_step_due_at", None, f"an enrollment with status={status.value} needs a due time"
                )
            if reason is not None:
                raise InvalidEnrollment(
                    "enrollment.exit_reason", reason.value, f"only an exited enrollment has one (status={status.value})"
                )
            if self.ended_at is not None:
                raise InvalidEnrollment(
                    "enrollment.ended_at", self.ended_at, f"an enrollment with status={status.value} has not ended"
                )
            if (status is _PAUSED) is (self.paused_at is None):
                raise InvalidEnrollment(
                    "enrollment.paused_at", self.paused_at, f"must be set exactly when paused (status={status.value})"
                )
        else:
            if due is not None:
                raise InvalidEnrollment(
                    "enrollment.next_step_due_at", due, f"a {status.value} enrollment has no next step"
                )
            if self.paused_at is not None:
                raise InvalidEnrollment(
                    "enrollment.paused_at", self.paused_at, f"a {status.value} enrollment is not paused"
                )
            if self.ended_at is None:
                raise InvalidEnrollment("enrollment.ended_at", None, f"a {status.value} enrollment needs its end time")
            if (status is _EXITED) is (reason is None):
                raise InvalidEnrollment(
                    "enrollment.exit_reason",
                    None if reason is None else reason.value,
                    "an exited enrollment needs a reason, a completed one has none",
                )

    @property
    def is_terminal(self) -> bool:
        """True once COMPLETED or EXITED."""
        return self.status.is_terminal

    @property
    def reference_time(self) -> datetime:
        """The instant the next step's delay counts from: the last send, else enrollment."""
        return self.last_step_sent_at or self.enrolled_at


# --------------------------------------------------------------------------- contacts


def _c_contact_created_at(value: datetime | None) -> datetime | None:
    return _utc_instant(value, "contact.created_at", True)


_impl_contact_metadata = _frozen_mapping("contact.metadata", InvalidContact)


def _c_contact_metadata(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return _impl_contact_metadata(value)


_impl_contact_suppressed = _opt_enum(ExitReason, "contact.suppressed", InvalidContact)


def _c_contact_suppressed(value: ExitReason | str | None) -> ExitReason | None:
    return _impl_contact_suppressed(value)


@attrs.frozen(kw_only=True)
class Contact:
    """A person who receives sequence emails.

    ``timezone`` (an IANA name) decides local send times; ``suppressed`` holds
    why the contact must not be mailed (UNSUBSCRIBED, BOUNCED, COMPLAINED,
    SUPPRESSED or INVALID_ADDRESS), or None. ``metadata`` values are available to templates.
    """

    id: str = attrs.field(validator=_text("contact.id", InvalidContact))
    """The host application's id for the contact."""
    email: str = attrs.field(validator=_email("contact.email", InvalidContact))
    """The address its emails go to (one plain email address)."""
    first_name: str = attrs.field(default="", validator=_text("contact.first_name", InvalidContact, allow_blank=True))
    """The first name, for templates (``{{first_name}}``); may be empty."""
    last_name: str = attrs.field(default="", validator=_text("contact.last_name", InvalidContact, allow_blank=True))
    """The last name, for templates (``{{last_name}}``); may be empty."""
    birthday: date | None = None
    """The date of birth, for ``birthday`` anniversary triggers; None: unknown."""
    created_at: datetime | None = attrs.field(default=None, converter=_c_contact_created_at)
    """When the contact signed up, for ``created`` anniversary triggers; None: unknown."""
    timezone: str | None = attrs.field(default=None, validator=_timezone_validator("contact.timezone"))
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_c_contact_metadata, hash=False)
    suppressed: ExitReason | None = attrs.field(default=None, converter=_c_contact_suppressed)
    _zone: zoneinfo.ZoneInfo | None = attrs.field(init=False, eq=False, repr=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_read_only(self, ("metadata",))

    def __attrs_post_init__(self) -> None:
        if self.birthday is not None and (not isinstance(self.birthday, date) or isinstance(self.birthday, datetime)):
            raise InvalidContact("contact.birthday", self.birthday, "must be a date (not a datetime)")
        if self.suppressed is not None and self.suppressed not in SUPPRESSION_REASONS:
            raise InvalidContact(
                "contact.suppressed",
                self.suppressed.value,
                "must be unsubscribed, bounced, complained, suppressed or invalid_address",
            )
        object.__setattr__(self, "_zone", zone(self.timezone, "contact.timezone"))

    @property
    def zone(self) -> zoneinfo.ZoneInfo | None:
        """The contact's own zone (None when it has none)."""
        return self._zone


_new_object = object.__new__
_set_field = object.__setattr__


def trusted_enrollment(
    *,
    id: str,
    sequence_id: str,
    contact_id: str,
    status: EnrollmentStatus,
    enrolled_at: datetime,
    next_step_due_at: datetime | None,
    last_step_sent: int,
    last_step_sent_at: datetime | None,
    exit_reason: ExitReason | None,
    paused_at: datetime | None,
    ended_at: datetime | None,
    variables: Mapping[str, Any],
    opened: frozenset[int],
    clicked: frozenset[tuple[int, str]],
    skipped: frozenset[int],
    key: str | None,
    version: int,
) -> Enrollment:
    """``Enrollment(...)`` without the per-field checks, for values that are already valid.

    The one fast constructor of the package. It skips every per-field validator and
    converter, so the caller passes each field in its converted form: ids and keys
    that pass the id rule, enum members, UTC datetimes within the accepted range (what
    :func:`to_utc` returns), frozensets, read-only mappings; in practice, fields copied
    from a validated enrollment plus a few new ones converted by the caller. The
    cross-field rules of ``__attrs_post_init__`` still run, so a status contradicting
    its fields raises :class:`~dripcore.errors.InvalidEnrollment`. Anything not known to
    be valid goes through ``Enrollment(...)``.

    Its one user is the scheduler's step sent (``advance``'s hot path), where it is
    worth more than 5%: with the validated constructor instead, ``advance()`` on
    exact-unit steps runs 10-30% slower (``benchmarks/bench_core.py``). Stores don't use
    it: decoding rows through it was worth 1-3% of a SQLite tick. A property test pins
    it to the validated constructor (same fields, same result; the same cross-field errors).
    """
    e: Enrollment = _new_object(Enrollment)
    _set_field(e, "id", id)
    _set_field(e, "sequence_id", sequence_id)
    _set_field(e, "contact_id", contact_id)
    _set_field(e, "status", status)
    _set_field(e, "enrolled_at", enrolled_at)
    _set_field(e, "next_step_due_at", next_step_due_at)
    _set_field(e, "last_step_sent", last_step_sent)
    _set_field(e, "last_step_sent_at", last_step_sent_at)
    _set_field(e, "exit_reason", exit_reason)
    _set_field(e, "paused_at", paused_at)
    _set_field(e, "ended_at", ended_at)
    _set_field(e, "variables", variables)
    _set_field(e, "opened", opened)
    _set_field(e, "clicked", clicked)
    _set_field(e, "skipped", skipped)
    _set_field(e, "key", key)
    _set_field(e, "version", version)
    e.__attrs_post_init__()
    return e


# --------------------------------------------------------------------------- events


class SkipReason(enum.Enum):
    """Why a step was passed over without being sent."""

    INACTIVE = "inactive"
    """The step is switched off."""
    CONDITION = "condition"
    """Its engagement condition was false."""
    WINDOW = "outside window"
    """It was due outside a send window that skips."""
    EXPIRED = "expired"
    """It would have gone later than its ``expires_after``."""
    FREQUENCY_CAP = "frequency cap"
    """The contact already had their share of emails."""
    SUPPRESSED = "suppressed"
    """Its email was dropped before delivery: the contact was suppressed meanwhile."""
    CANCELLED = "cancelled"
    """Its email was dropped before delivery: the enrollment exited meanwhile."""


def _event_text(field: str) -> Callable[[Any, Any, Any], None]:
    return _text(field, ValidationError)


def _event_key(_instance: Any, _attribute: Any, value: Any) -> None:
    # Free text as far as the model goes (the published event schema asks only for a
    # non-empty string); the engine builds it as "<enrollment id>:<position>".
    if not isinstance(value, str) or not value:
        raise ValidationError("event.idempotency_key", value, "must be a non-empty string")


def _c_event_at(value: datetime) -> datetime:
    return _utc_instant(value, "event.at", False)


@attrs.frozen(kw_only=True)
class _LifecycleEvent:
    """Fields every lifecycle event carries."""

    wire_name: ClassVar[str] = ""

    enrollment_id: str = attrs.field(validator=_event_text("event.enrollment_id"))
    """The enrollment it happened to."""
    sequence_id: str = attrs.field(validator=_event_text("event.sequence_id"))
    """The enrollment's sequence."""
    contact_id: str = attrs.field(validator=_event_text("event.contact_id"))
    """The enrollment's contact."""
    at: datetime = attrs.field(converter=_c_event_at)
    """When it happened."""


@attrs.frozen(kw_only=True)
class Subscribed(_LifecycleEvent):
    """A contact entered a sequence (wire name ``sequence.subscribed``)."""

    wire_name: ClassVar[str] = "sequence.subscribed"

    key: str | None = attrs.field(default=None, validator=_opt_str("event.key", ValidationError))
    """The dedupe key of the trigger that started the enrollment (an order id, a year), or None."""


@attrs.frozen(kw_only=True)
class StepSent(_LifecycleEvent):
    """A step was handed to the mail sender and accepted (``sequence.step.sent``)."""

    wire_name: ClassVar[str] = "sequence.step.sent"

    position: int = attrs.field(validator=_position_validator("event.position", ValidationError))
    """The step's position."""
    idempotency_key: str = attrs.field(validator=_event_key)
    """The email's idempotency key (``<enrollment id>:<position>``), the same on every attempt."""


@attrs.frozen(kw_only=True)
class StepFailed(_LifecycleEvent):
    """A step could not be sent and will not be retried (``sequence.step.failed``)."""

    wire_name: ClassVar[str] = "sequence.step.failed"

    position: int = attrs.field(validator=_position_validator("event.position", ValidationError))
    """The step's position."""
    error: str = attrs.field(validator=_opt_str("event.error", ValidationError))
    """What went wrong."""
    reason: str | None = attrs.field(default=None, validator=_opt_str("event.reason", ValidationError))
    """Why: a send error's reason (``bounced``, ``invalid_address``...), ``render``, ``retries exhausted``, or None."""


_impl_event_reason = _enum(SkipReason, "event.reason")


def _c_event_reason(value: SkipReason | str) -> SkipReason:
    return _impl_event_reason(value)


@attrs.frozen(kw_only=True)
class StepSkipped(_LifecycleEvent):
    """A step was passed over: inactive, or its condition was false (``sequence.step.skipped``)."""

    wire_name: ClassVar[str] = "sequence.step.skipped"

    position: int = attrs.field(validator=_position_validator("event.position", ValidationError))
    """The step's position."""
    reason: SkipReason = attrs.field(converter=_c_event_reason)
    """Why it was passed over."""


@attrs.frozen(kw_only=True)
class Completed(_LifecycleEvent):
    """The enrollment has no step left (``sequence.completed``)."""

    wire_name: ClassVar[str] = "sequence.completed"


_impl_exit_reason = _enum(ExitReason, "event.reason")


def _c_event_exit_reason(value: ExitReason | str) -> ExitReason:
    return _impl_exit_reason(value)


@attrs.frozen(kw_only=True)
class Cancelled(_LifecycleEvent):
    """The enrollment exited early, with its reason (``sequence.cancelled``)."""

    wire_name: ClassVar[str] = "sequence.cancelled"

    reason: ExitReason = attrs.field(converter=_c_event_exit_reason)
    """Why the enrollment exited."""


Event = Subscribed | StepSent | StepFailed | StepSkipped | Completed | Cancelled
"""Any lifecycle event."""

#: Event classes by wire name.
EVENT_TYPES: Mapping[str, type[Event]] = MappingProxyType(
    {cls.wire_name: cls for cls in (Subscribed, StepSent, StepFailed, StepSkipped, Completed, Cancelled)}
)
