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

    ``time``
        Seconds of CPU time (of the rendering thread, so a busy machine does not
        count against it) the Liquid rendering of one message may
        take, its fields together (default 0.25: a heavy legitimate template
        takes milliseconds, and a batch of 500 runaway messages then still
        fits in the engine's five-minute lease). The clock is read on
        entering a loop and at every iteration, at every ``assign`` and at
        every filter call on a large value, and every filter works on
        bounded input, so a render stops within milliseconds of the limit.
        Plain ``{{ name }}`` templates can't run long and are not timed.
    ``max_markup``
        Characters of Liquid markup (``{{ ... }}`` and ``{% ... %}``,
        delimiters included) in one template field (default 50,000; a large
        real template holds a few thousand). Compiling costs microseconds per
        markup character, so this bounds compilation to a fraction of a second.
    ``max_items``
        The longest sequence a filter may take or make (``split``, ``sort``,
        ``concat``, ``join``...) and the longest range ``(a..b)`` (default
        10,000). ``size``, ``first``, ``last`` and ``default`` take any.
    ``loop_iterations``
        Iterations of all loops together, nested loops multiplied (default 100,000).

    Strings a filter takes or makes are bounded by the renderer's ``max_body``.

    >>> RenderLimits(time=1.0).max_items
    10000
    """

    time: float = attrs.field(default=0.25, validator=_positive)
    max_markup: int = attrs.field(default=50_000, validator=_positive_int)
    max_items: int = attrs.field(default=10_000, validator=_positive_int)
    loop_iterations: int = attrs.field(default=100_000, validator=_positive_int)
