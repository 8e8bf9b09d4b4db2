"""JSON-safe conversion of every dripcore value type, with cattrs.

:func:`make_converter` returns a fresh converter (no global state) that turns
model values into plain JSON-safe structures and back:

- instants become ISO 8601 strings in UTC (``"2026-03-01T09:00:00Z"``); on the
  way in, a string without an offset is rejected, never guessed;
- enums become their wire values (``"tag_added"``);
- dates become ``"YYYY-MM-DD"``, times of day ``"HH:MM:SS"``, sets become sorted lists;
- lifecycle events carry their wire name in ``"type"``, so the :data:`Event`
  union round-trips.

>>> from dripcore import Delay, make_converter
>>> conv = make_converter()
>>> conv.unstructure(Delay.days(2))
{'amount': 2, 'unit': 'days'}
>>> conv.structure({'amount': 2, 'unit': 'days'}, Delay) == Delay.days(2)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any, get_origin

import cattrs
from cattrs.gen import make_dict_unstructure_fn

from .errors import DripcoreError, NaiveDatetimeError, ValidationError
from .model import EVENT_TYPES, Delay, Event, WaitUntil, to_utc

__all__ = ["event_from_json", "event_to_json", "format_instant", "make_converter", "parse_instant"]


def format_instant(value: datetime) -> str:
    """An instant as ISO 8601 in UTC with a ``Z`` suffix."""
    utc = to_utc(value)
    text = utc.replace(tzinfo=None).isoformat()
    return text + "Z"


def parse_instant(value: Any, field: str = "datetime") -> datetime:
    """Parse an ISO 8601 string that carries an offset (or ``Z``) into a UTC datetime."""
    if isinstance(value, datetime):
        return to_utc(value, field)
    if not isinstance(value, str):
        raise NaiveDatetimeError(field, value, "expected an ISO 8601 string with an offset")
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise NaiveDatetimeError(field, value, "not an ISO 8601 instant") from None
    if parsed.tzinfo is None:
        raise NaiveDatetimeError(field, value, "no UTC offset: dripcore never guesses a time zone")
    return to_utc(parsed, field)


def _structure_date(value: Any, _type: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValidationError("date", value, "expected YYYY-MM-DD") from None


def _is_set_type(t: Any) -> bool:
    return t in (frozenset, set) or get_origin(t) in (frozenset, set)


def _is_tuple_type(t: Any) -> bool:
    return t is tuple or get_origin(t) is tuple


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _structure_time(value: Any, _type: Any) -> time:
    if isinstance(value, time):
        return value
    try:
        parsed = time.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValidationError("time", value, "expected HH:MM[:SS]") from None
    if parsed.tzinfo is not None:
        raise ValidationError("time", value, "a local time of day has no offset")
    return parsed


def make_converter() -> cattrs.Converter:
    """A new cattrs converter for every dripcore model type, JSON-safe both ways."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=False)
    conv.register_unstructure_hook(datetime, format_instant)
    conv.register_structure_hook(datetime, lambda value, _t: parse_instant(value))
    conv.register_unstructure_hook(date, lambda value: value.isoformat())
    conv.register_structure_hook(date, _structure_date)
    conv.register_unstructure_hook_func(_is_set_type, lambda value: sorted(_plain(conv.unstructure(v)) for v in value))
    conv.register_unstructure_hook_func(_is_tuple_type, lambda value: [_plain(conv.unstructure(v)) for v in value])
    conv.register_unstructure_hook(Mapping, lambda value: {k: conv.unstructure(v) for k, v in value.items()})
    conv.register_structure_hook(Any, lambda value, _t: value)
    conv.register_unstructure_hook(time, lambda value: value.isoformat())
    conv.register_structure_hook(time, _structure_time)

    def structure_wait(value: Any, _type: Any) -> Delay | WaitUntil:
        # A Delay always has "unit"; a WaitUntil never does. Deciding by key keeps
        # the choice independent of cattrs' union heuristics.
        if isinstance(value, Mapping) and "unit" in value:
            return conv.structure(value, Delay)
        return conv.structure(value, WaitUntil)

    conv.register_structure_hook_func(lambda t: t == Delay | WaitUntil, structure_wait)

    for cls in EVENT_TYPES.values():
        base = make_dict_unstructure_fn(cls, conv)

        def unstructure_event(event: Any, _base: Any = base, _name: str = cls.wire_name) -> dict[str, Any]:
            return {"type": _name, **_base(event)}

        conv.register_unstructure_hook(cls, unstructure_event)

    def structure_event(value: Any, _type: Any) -> Event:
        if not isinstance(value, Mapping) or "type" not in value:
            raise ValidationError("event", value, "expected an object with a 'type' wire name")
        cls = EVENT_TYPES.get(value["type"])
        if cls is None:
            raise ValidationError("event.type", value["type"], f"not one of {sorted(EVENT_TYPES)}")
        fields = {k: v for k, v in value.items() if k != "type"}
        return conv.structure(fields, cls)

    conv.register_structure_hook(Event, structure_event)
    for cls in EVENT_TYPES.values():
        base_structure = conv.get_structure_hook(cls)

        def structure_one(value: Any, t: Any, _base: Any = base_structure, _name: str = cls.wire_name) -> Any:
            if isinstance(value, Mapping) and "type" in value:
                if value["type"] != _name:
                    raise ValidationError("event.type", value["type"], f"expected {_name!r}")
                value = {k: v for k, v in value.items() if k != "type"}
            return _base(value, t)

        conv.register_structure_hook(cls, structure_one)
    return conv


_DEFAULT = make_converter()


def event_to_json(event: Event) -> dict[str, Any]:
    """The JSON payload of a lifecycle event: ``{"type": <wire name>, ...fields}``."""
    return _DEFAULT.unstructure(event)  # type: ignore[no-any-return]


def event_from_json(payload: Mapping[str, Any]) -> Event:
    """Rebuild a lifecycle event from :func:`event_to_json`'s payload."""
    try:
        return _DEFAULT.structure(payload, Event)  # type: ignore[arg-type]
    except DripcoreError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError("event", dict(payload), f"not a valid event payload ({exc})") from exc
