"""RenderLimits: what rendering one message may cost (time, markup, items, loop iterations)."""

from __future__ import annotations

import math
from typing import Any

import attrs

from ..errors import InvalidArgument

__all__ = ["RenderLimits"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise InvalidArgument(f"limits.{attribute.name}", value, "must be a positive number")


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"limits.{attribute.name}", value, "must be a positive integer")


@attrs.frozen(kw_only=True)
class RenderLimits:
    """What rendering one message may cost; past a limit, that message fails with a
    :class:`~dripcore.errors.RenderError`.

    The time is CPU time of the rendering thread, so a busy machine does not count
    against it. Its default, 0.25 s: a heavy legitimate template takes milliseconds,
    and a batch of 500 runaway messages then still fits in the engine's five-minute
    lease. The clock is read on entering a loop and at every iteration, at every
    ``assign`` and at every filter call on a large value, and every filter works on
    bounded input, so a render stops within milliseconds of the limit. Plain
    ``{{ name }}`` templates can't run long and are not timed.

    Compiling costs microseconds per markup character, so the markup limit (default
    50,000; a large real template holds a few thousand) bounds compilation to a
    fraction of a second. ``size``, ``first``, ``last`` and ``default`` take a
    sequence of any length. Strings a filter takes or makes are bounded by the
    renderer's ``max_body``.

    >>> RenderLimits(time=1.0).max_items
    10000
    """

    time: float = attrs.field(default=0.25, validator=_positive)
    """Seconds of CPU time the Liquid rendering of one message may take, its fields together."""
    max_markup: int = attrs.field(default=50_000, validator=_positive_int)
    """Characters of Liquid markup (``{{ ... }}`` and ``{% ... %}``, delimiters included) in one field."""
    max_items: int = attrs.field(default=10_000, validator=_positive_int)
    """Items in the longest sequence a filter may take or make (``split``, ``sort``...) or range ``(a..b)``."""
    loop_iterations: int = attrs.field(default=100_000, validator=_positive_int)
    """Iterations of all loops together, nested loops multiplied."""
