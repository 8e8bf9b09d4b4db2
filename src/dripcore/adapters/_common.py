"""Helpers the SQL adapters share: compact JSON, counter sums, error descriptions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring  # C-accelerated, as the encoder uses without ensure_ascii
from typing import Any

from ..ports import Counter

__all__ = ["describe", "dumps", "dumps_text_map", "sum_counters"]


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


def sum_counters(counters: Iterable[Counter], into: dict[tuple[str, int, str], int]) -> None:
    """Add ``counters`` into ``into``, so a batch writes each counter once."""
    for sequence_id, position, name, delta in counters:
        k = (sequence_id, position, name)
        into[k] = into.get(k, 0) + delta
