"""Helpers the SQL adapters share: compact JSON, counter sums, error descriptions, and
finding the records of a failed write that no store could hold."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from json.encoder import encode_basestring  # C-accelerated, as the encoder uses without ensure_ascii
from typing import Any

import attrs

from .._checks import check_counters
from ..errors import RecordRejected
from ..model import Enrollment
from ..ports import Change, Counter, Delivery

__all__ = [
    "describe", "dumps", "dumps_text_map", "rejected_changes", "rejected_deliveries", "sum_counters", "unstorable",
    "checked_counters",
]  # fmt: skip


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# One encoder for the module: json.dumps with options builds a new encoder per call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default).encode


def dumps(value: Any) -> str:
    """Compact JSON (read-only mappings included), without escaping non-ASCII text."""
    return _ENCODE(value)


def dumps_text_map(value: Mapping[str, str]) -> str:
    """``dumps`` of a flat mapping of text to text (an email's headers), the same JSON
    without the encoder's set-up per call, which costs more than the encoding itself."""
    return "{" + ",".join([f"{encode_basestring(k)}:{encode_basestring(v)}" for k, v in value.items()]) + "}"


def describe(exc: BaseException) -> str:
    """``"ErrorType: message"``, for errors that name what failed."""
    return f"{type(exc).__name__}: {exc}"


def checked_counters(counters: Callable[[Enrollment], Iterable[Counter]]) -> Callable[[Enrollment], list[Counter]]:
    """``counters`` with each result checked (:func:`~dripcore._checks.check_counters`); a result
    that is the very object returned the time before is not checked again (the engine gives every
    new enrollment of a batch the same list, and checking it 10,000 times costs a fifth of the batch)."""
    last: list[Any] = [None, None]  # [the result returned last, its checked form]; holding it keeps its id unique

    def checked(enrollment: Enrollment) -> list[Counter]:
        raw = counters(enrollment)
        if raw is not last[0]:
            last[0], last[1] = raw, check_counters(raw)
        result: list[Counter] = last[1]
        return result

    return checked


def sum_counters(counters: Iterable[Counter], into: dict[tuple[str, int, str], int]) -> None:
    """Add ``counters`` into ``into``, so a batch writes each counter once."""
    for sequence_id, position, name, delta in counters:
        k = (sequence_id, position, name)
        into[k] = into.get(k, 0) + delta


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INT64 = 2**63


def unstorable(value: Any, path: str = "", depth: int = 0) -> str | None:
    """Why ``value`` (a record, or anything in it) can't be stored by a SQL store, or None.

    Text with NUL (PostgreSQL's text and jsonb refuse it) or a lone surrogate (no
    UTF-8 encoding), integers beyond 64 bits and non-finite floats. Walks attrs
    records, mappings and collections; meant for the failure path of a write.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path or 'text'} holds a NUL character"
        if not value.isascii():
            bad = _SURROGATE.search(value)
            if bad is not None:
                return f"{path or 'text'} holds a lone surrogate ({bad.group()!r}), which is not valid Unicode"
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -_INT64 <= value < _INT64 else f"{path or 'number'}={value} does not fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path or 'number'}={value} is not a finite number"
    if depth > 40:
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            why = unstorable(key, f"{path}[{key!r}]", depth + 1) or unstorable(item, f"{path}[{key!r}]", depth + 1)
            if why:
                return why
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            why = unstorable(item, f"{path}[{i}]", depth + 1)
            if why:
                return why
        return None
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            if field.init:
                why = unstorable(getattr(value, field.name), f"{path}.{field.name}" if path else field.name, depth + 1)
                if why:
                    return why
    return None


def rejected_changes(changes: Seq[Change], exc: BaseException) -> BaseException:
    """After a commit failed with ``exc``: a :class:`~dripcore.errors.RecordRejected` naming
    the changes no store could hold, or ``exc`` itself when none is to blame."""
    reasons: dict[str, str] = {}
    for change in changes:
        why = unstorable(change.enrollment, "enrollment") or unstorable(change.outbox, "outbox")
        why = why or unstorable(change.counters, "counters")
        if why:
            reasons[change.enrollment.id] = why
    return RecordRejected(kind="enrollment", reasons=reasons) if reasons else exc


def rejected_deliveries(deliveries: Seq[Delivery], exc: BaseException) -> BaseException:
    """:func:`rejected_changes` for a failed settle: the deliveries (by key) to blame, or ``exc``."""
    reasons = {d.key: why for d in deliveries if (why := unstorable(d, "delivery"))}
    return RecordRejected(kind="message", reasons=reasons) if reasons else exc
