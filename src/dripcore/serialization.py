"""JSON-safe conversion of every dripcore value type, with cattrs.

:func:`make_converter` returns a fresh converter (no global state) that turns
model values into plain JSON-safe structures and back:

- instants become ISO 8601 strings in UTC (``"2026-03-01T09:00:00Z"``); on the
  way in, a string without an offset is rejected, never guessed;
- enums become their wire values (``"tag_added"``);
- dates become ``"YYYY-MM-DD"``, times of day ``"HH:MM:SS"``, sets become sorted lists;
- lifecycle events carry their wire name in ``"type"``, so the :data:`Event`
  union round-trips.

Decoding is exact, because JSON from a web request or a stored row takes this
path: a value of the wrong JSON type (``"false"`` or ``0`` for a boolean, ``1.9``
or ``true`` for an integer, a list where an object is expected), a missing
required key or an unknown key raises :class:`~dripcore.errors.DecodeError`, and
a value the model refuses raises the model's own error (``InvalidStep``,
``InvalidInstant``...). Either way ``field`` is the path to the value in the
document (``"steps[1].active"``), or the type's name (``"sequence"``) for the
document as a whole. Nothing else escapes ``structure``.

>>> from dripcore import Delay, make_converter
>>> conv = make_converter()
>>> conv.unstructure(Delay.days(2))
{'amount': 2, 'unit': 'days'}
>>> conv.structure({'amount': 2, 'unit': 'days'}, Delay) == Delay.days(2)
True
>>> conv.structure({'amount': 1.9, 'unit': 'days'}, Delay)
Traceback (most recent call last):
...
dripcore.errors.DecodeError: amount=1.9: expected an integer, not float
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from enum import Enum
from typing import Any, TypeVar, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

from .errors import DecodeError, NaiveDatetimeError, ValidationError
from .model import (
    EVENT_TYPES,
    Condition,
    Contact,
    Delay,
    Enrollment,
    Event,
    SenderIdentity,
    SendWindow,
    Sequence,
    Step,
    Trigger,
    TriggerEvent,
    WaitUntil,
    to_utc,
)

__all__ = ["event_from_json", "event_to_json", "format_instant", "make_converter", "parse_instant"]

_T = TypeVar("_T")


def format_instant(value: datetime) -> str:
    """An instant as ISO 8601 in UTC with a ``Z`` suffix."""
    utc = to_utc(value)
    text = utc.replace(tzinfo=None).isoformat()
    return text + "Z"


def parse_instant(value: Any, field: str = "datetime") -> datetime:
    """Parse an ISO 8601 string that carries an offset (or ``Z``) into a UTC datetime.

    Raises :class:`~dripcore.errors.NaiveDatetimeError` for text that is not an
    instant or has no offset, and :class:`~dripcore.errors.InvalidInstant` for an
    instant outside the range dripcore schedules; ``field`` names the value.
    """
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


# --------------------------------------------------------------------------- strict leaves
#
# Every structure hook below refuses a value of the wrong JSON type with a DecodeError whose
# field is "" ("here"); the converter's ``structure`` replaces it with the path to the value.


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _wrong(value: Any, expected: str) -> DecodeError:
    return DecodeError("", value, f"expected {expected}, not {_type_name(value)}")


def _structure_int(value: Any, _type: Any) -> int:
    if value.__class__ is int:
        return value
    raise _wrong(value, "an integer")


def _structure_bool(value: Any, _type: Any) -> bool:
    if value is True or value is False:
        return value
    raise _wrong(value, "true or false")


def _structure_str(value: Any, _type: Any) -> str:
    if value.__class__ is str or isinstance(value, str):
        return value
    raise _wrong(value, "a string")


def _structure_any(value: Any, _type: Any) -> Any:
    return value


def _structure_instant(value: Any, _type: Any) -> datetime:
    if value.__class__ is str or isinstance(value, datetime):
        return parse_instant(value, "")
    raise _wrong(value, "an ISO 8601 instant with an offset, such as '2026-03-01T09:00:00Z'")


_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME_TEXT = re.compile(r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?")


def _structure_date(value: Any, _type: Any) -> date:
    if value.__class__ is str:
        if _DATE_TEXT.fullmatch(value) is not None:
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise DecodeError("", value, "not a calendar date written YYYY-MM-DD")
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    raise _wrong(value, "a date, 'YYYY-MM-DD'")


def _structure_time(value: Any, _type: Any) -> time:
    if value.__class__ is str:
        if _TIME_TEXT.fullmatch(value) is not None:
            try:
                return time.fromisoformat(value)
            except ValueError:
                pass
        raise DecodeError("", value, "not a time of day written HH:MM[:SS[.ffffff]] (a local time has no offset)")
    if isinstance(value, time) and value.tzinfo is None:
        return value
    raise _wrong(value, "a time of day, 'HH:MM:SS'")


# --------------------------------------------------------------------------- paths


class _Step(str):
    """A note on an exception: one step of the path to the value that raised it
    (a key or an index), added as the exception passes a collection hook."""

    def __new__(cls, step: str | int) -> _Step:
        note = super().__new__(cls, f"at {step!r}")
        note.step = step
        return note

    step: str | int


def _at(exc: BaseException, step: str | int) -> BaseException:
    # As cattrs does (``add_note`` is Python 3.11's): notes go innermost first.
    exc.__notes__ = [*getattr(exc, "__notes__", ()), _Step(step)]  # type: ignore[attr-defined]
    return exc


def _each(values: Any, structure: Callable[[Any, Any], Any], item_type: Any) -> list[Any]:
    """Every item of ``values`` structured as ``item_type``; an error names the item's index."""
    out = []
    for i, v in enumerate(values):
        try:
            out.append(structure(v, item_type))
        except Exception as exc:
            raise _at(exc, i) from None
    return out


def _is_list(value: Any) -> bool:
    return value.__class__ is list or isinstance(value, (list, tuple))


_NONE = type(None)


def _union_args(t: Any) -> tuple[Any, ...]:
    return get_args(t) if get_origin(t) in (Union, types.UnionType) else ()


def _is_optional(t: Any) -> bool:
    args = _union_args(t)
    return len(args) == 2 and _NONE in args


def _is_set_type(t: Any) -> bool:
    return t in (frozenset, set) or get_origin(t) in (frozenset, set)


def _is_tuple_type(t: Any) -> bool:
    return t is tuple or get_origin(t) is tuple


def _is_mapping_type(t: Any) -> bool:
    return get_origin(t) in (Mapping, dict)


def _is_enum_type(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, Enum)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


#: The name each model type gives itself in its errors (``"step.subject"``), so that an error
#: raised by a nested constructor is renamed to its path in the document.
_OWN_NAMES: Mapping[Any, str] = {
    Event: "event",
    Delay: "delay",
    WaitUntil: "wait_until",
    SendWindow: "window",
    Condition: "condition",
    SenderIdentity: "sender",
    Step: "step",
    Trigger: "trigger",
    TriggerEvent: "event",
    Sequence: "sequence",
    Enrollment: "enrollment",
    Contact: "contact",
    **dict.fromkeys(EVENT_TYPES.values(), "event"),
}
_STEP_BY_POSITION = re.compile(r"steps\[\d+\]")  # how a Step names itself in a content error


def _format_path(steps: list[str | int]) -> str:
    out = []
    for step in steps:
        if isinstance(step, int):
            out.append(f"[{step}]")
        elif step.isidentifier():
            out.append(f".{step}" if out else step)
        else:
            out.append(f"[{step!r}]")
    return "".join(out)


def _join(path: str, rest: str) -> str:
    if not path:
        return rest
    if not rest:
        return path
    return f"{path}{rest}" if rest.startswith("[") else f"{path}.{rest}"


_MISSING = object()


def _step_index_field(field: str, value: Any, steps: Any) -> str:
    """A Sequence names a step by its position ("steps[3].condition.step", "steps.position" for a
    duplicate); in the document it is named by its index in the list."""
    head, dot, rest = field.partition(".")
    if head == "steps" and rest == "position":
        wanted: Any = value  # a duplicate position: name the later of the two
    elif _STEP_BY_POSITION.fullmatch(head):
        wanted = int(head[6:-1])
    else:
        return field
    if not isinstance(steps, list):
        return field
    found = [i for i, step in enumerate(steps) if isinstance(step, Mapping) and step.get("position") == wanted]
    if not found:
        return field
    return f"steps[{found[-1] if head == 'steps' else found[0]}]{dot}{rest}"


def _dig(document: Any, steps: list[str | int]) -> Any:
    """The value at ``steps`` in ``document``, or _MISSING."""
    for step in steps:
        try:
            document = document[step]
        except Exception:
            return _MISSING
    return document


def _decode_error(exc: Exception, document: Any, target: Any) -> ValidationError:
    """The DripcoreError to raise for ``exc``, raised while structuring ``document`` as ``target``:
    the first failure found in it, named by its path in the document."""
    steps: list[str | int] = []
    owner: Any = None  # the class whose structuring the failure happened in...
    owner_depth = 0  # ...and the length of the path to that object
    leaf: BaseException = exc
    while True:
        for note in reversed(getattr(leaf, "__notes__", ())):
            if isinstance(note, AttributeValidationNote):
                steps.append(note.name)
            elif isinstance(note, _Step):
                steps.append(note.step)
            elif isinstance(note, IterableValidationNote):
                steps.append(note.index)
        if isinstance(leaf, BaseValidationError) and leaf.exceptions:
            if isinstance(leaf, ClassValidationError):
                owner, owner_depth = leaf.cl, len(steps)
            leaf = leaf.exceptions[0]
            continue
        break
    path = _format_path(steps)
    root = _OWN_NAMES.get(target, "$")
    if isinstance(leaf, ForbiddenExtraKeysError):
        key = sorted(leaf.extra_fields, key=repr)[0]
        known = ", ".join(a.name for a in attrs.fields(leaf.cl) if a.init)
        return DecodeError(
            _format_path([*steps, key]), _dig(document, [*steps, key]), f"unknown key; a {leaf.cl.__name__} has {known}"
        )
    if isinstance(leaf, KeyError) and len(steps) > owner_depth:
        return DecodeError(path, None, "a required key is missing")
    if isinstance(leaf, ValidationError):
        field = leaf.field
        if field == "" or len(steps) > owner_depth:  # raised by a hook for the value at the path
            field = path or root
        else:  # raised by the constructor of the object at the path
            own = _OWN_NAMES.get(owner)
            head, _, rest = field.partition(".")
            if own is not None and (head == own or (owner is Step and _STEP_BY_POSITION.fullmatch(head))):
                field = _join(path, rest) or (path or _OWN_NAMES.get(owner, root))
            else:
                if owner is Sequence:
                    field = _step_index_field(field, leaf.value, _dig(document, [*steps, "steps"]))
                field = _join(path, field)
        try:
            return type(leaf)(field, leaf.value, leaf.reason)
        except Exception:  # a subclass of the caller's with another signature
            return DecodeError(field, leaf.value, leaf.reason)
    value = _dig(document, steps)
    expected = getattr(owner or target, "__name__", str(target))
    reason = f"can't be decoded as {expected} ({type(leaf).__name__}: {leaf})"
    return DecodeError(path or root, None if value is _MISSING else value, reason)


# --------------------------------------------------------------------------- the converter


class _StrictConverter(cattrs.Converter):
    """The converter :func:`make_converter` returns: ``structure`` raises only
    :class:`~dripcore.errors.ValidationError` subclasses, named by the path in the document."""

    def structure(self, obj: Any, cl: type[_T]) -> _T:
        """Structure ``obj`` as ``cl``; see the module docstring for what is refused."""
        try:
            return super().structure(obj, cl)
        except Exception as exc:
            raise _decode_error(exc, obj, cl) from None


def make_converter() -> cattrs.Converter:
    """A new cattrs converter for every dripcore model type, JSON-safe both ways.

    ``structure`` decodes exactly (see the module docstring) and raises only
    :class:`~dripcore.errors.ValidationError` subclasses naming the path of the
    offending value; ``structure(unstructure(x), type(x)) == x`` for every model value.
    """
    conv = _StrictConverter(forbid_extra_keys=True, detailed_validation=True)
    hook = conv.get_structure_hook

    # -- to JSON
    conv.register_unstructure_hook(datetime, format_instant)
    conv.register_unstructure_hook(date, lambda value: value.isoformat())
    conv.register_unstructure_hook(time, lambda value: value.isoformat())
    conv.register_unstructure_hook_func(_is_set_type, lambda value: sorted(_plain(conv.unstructure(v)) for v in value))
    conv.register_unstructure_hook_func(_is_tuple_type, lambda value: [_plain(conv.unstructure(v)) for v in value])
    conv.register_unstructure_hook(Mapping, lambda value: {k: conv.unstructure(v) for k, v in value.items()})

    # -- from JSON: the leaves
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(Any, _structure_any)
    conv.register_structure_hook(datetime, _structure_instant)
    conv.register_structure_hook(date, _structure_date)
    conv.register_structure_hook(time, _structure_time)

    def enum_hook(cls: type[Enum]) -> Callable[[Any, Any], Any]:
        by_value = {member.value: member for member in cls}
        choices = ", ".join(repr(v) for v in by_value)

        def structure_enum(value: Any, _type: Any) -> Any:
            if value.__class__ is str:
                # An unknown name goes on to the model, whose error says which field it is.
                return by_value.get(value, value)
            if isinstance(value, cls):
                return value
            raise _wrong(value, f"one of {choices}")

        return structure_enum

    conv.register_structure_hook_factory(_is_enum_type, enum_hook)

    # -- from JSON: containers
    def optional_hook(t: Any) -> Callable[[Any, Any], Any]:
        inner_type = next(arg for arg in get_args(t) if arg is not _NONE)
        inner = hook(inner_type)
        return lambda value, _type: None if value is None else inner(value, inner_type)

    conv.register_structure_hook_factory(_is_optional, optional_hook)

    def tuple_hook(t: Any) -> Callable[[Any, Any], Any]:
        args = get_args(t)
        if len(args) == 2 and args[1] is Ellipsis:
            item_type, item = args[0], hook(args[0])

            def structure_items(value: Any, _type: Any) -> tuple[Any, ...]:
                if not _is_list(value):
                    raise _wrong(value, "a list")
                return tuple(_each(value, item, item_type))

            return structure_items
        parts = [(arg, hook(arg)) for arg in args]

        def structure_fixed(value: Any, _type: Any) -> tuple[Any, ...]:
            if not _is_list(value):
                raise _wrong(value, f"a list of {len(parts)} items")
            if len(value) != len(parts):
                raise DecodeError("", value, f"expected a list of {len(parts)} items, not {len(value)}")
            out = []
            for i, ((part_type, part), v) in enumerate(zip(parts, value, strict=True)):
                try:
                    out.append(part(v, part_type))
                except Exception as exc:
                    raise _at(exc, i) from None
            return tuple(out)

        return structure_fixed

    conv.register_structure_hook_factory(_is_tuple_type, tuple_hook)

    def set_hook(t: Any) -> Callable[[Any, Any], Any]:
        item_type = get_args(t)[0] if get_args(t) else Any
        item = hook(item_type)

        def structure_set(value: Any, _type: Any) -> frozenset[Any]:
            if not _is_list(value) and not isinstance(value, (set, frozenset)):
                raise _wrong(value, "a list")
            return frozenset(_each(value, item, item_type))

        return structure_set

    conv.register_structure_hook_factory(_is_set_type, set_hook)

    def structure_mapping(value: Any, _type: Any) -> Mapping[str, Any]:
        # Passed on as it is: the model checks keys and values (JSON-safe, storable) and copies it.
        if value.__class__ is dict or isinstance(value, Mapping):
            return value
        raise _wrong(value, "an object")

    conv.register_structure_hook_factory(_is_mapping_type, lambda _t: structure_mapping)

    def attrs_hook(cl: Any) -> Callable[[Any, Any], Any]:
        generated = make_dict_structure_fn(cl, conv)
        expected = f"an object (a {cl.__name__})"

        def structure_object(value: Any, _type: Any) -> Any:
            if value.__class__ is not dict and not isinstance(value, Mapping):
                raise _wrong(value, expected)
            return generated(value, cl)

        return structure_object

    conv.register_structure_hook_factory(attrs.has, attrs_hook)

    def structure_wait(value: Any, _type: Any) -> Delay | WaitUntil:
        # A Delay always has "unit"; a WaitUntil never does. Deciding by key keeps
        # the choice independent of cattrs' union heuristics.
        if value.__class__ is not dict and not isinstance(value, Mapping):
            raise _wrong(value, "an object (a Delay or a WaitUntil)")
        if "unit" in value:
            return hook(Delay)(value, Delay)  # type: ignore[no-any-return]
        return hook(WaitUntil)(value, WaitUntil)  # type: ignore[no-any-return]

    conv.register_structure_hook_func(lambda t: t == Delay | WaitUntil, structure_wait)

    # -- lifecycle events, tagged with their wire name
    for cls in EVENT_TYPES.values():
        base = make_dict_unstructure_fn(cls, conv)

        def unstructure_event(event: Any, _base: Any = base, _name: str = cls.wire_name) -> dict[str, Any]:
            return {"type": _name, **_base(event)}

        conv.register_unstructure_hook(cls, unstructure_event)

    def without_type(value: Any) -> dict[str, Any]:
        return {k: v for k, v in value.items() if k != "type"}

    def structure_event(value: Any, _type: Any) -> Event:
        if value.__class__ is not dict and not isinstance(value, Mapping):
            raise _wrong(value, "an object with a 'type' wire name")
        if "type" not in value:
            raise _at(DecodeError("", None, "a required key is missing"), "type")
        name = value["type"]
        cls = EVENT_TYPES.get(name) if name.__class__ is str else None
        if cls is None:
            raise _at(DecodeError("", name, f"not one of {sorted(EVENT_TYPES)}"), "type")
        return hook(cls)(without_type(value), cls)  # type: ignore[no-any-return]

    conv.register_structure_hook(Event, structure_event)
    for cls in EVENT_TYPES.values():
        structure_plain = attrs_hook(cls)

        def structure_one(value: Any, t: Any, _plain: Any = structure_plain, _name: str = cls.wire_name) -> Any:
            if isinstance(value, Mapping) and "type" in value:
                if value["type"] != _name:
                    raise _at(DecodeError("", value["type"], f"expected {_name!r}"), "type")
                value = without_type(value)
            return _plain(value, t)

        conv.register_structure_hook(cls, structure_one)
    return conv


_DEFAULT = make_converter()


def event_to_json(event: Event) -> dict[str, Any]:
    """The JSON payload of a lifecycle event: ``{"type": <wire name>, ...fields}``."""
    return _DEFAULT.unstructure(event)  # type: ignore[no-any-return]


def event_from_json(payload: Mapping[str, Any]) -> Event:
    """Rebuild a lifecycle event from :func:`event_to_json`'s payload.

    Raises a :class:`~dripcore.errors.ValidationError` subclass naming the field for a
    payload that is not exactly one (see :func:`make_converter`).
    """
    return _DEFAULT.structure(payload, Event)  # type: ignore[arg-type]
