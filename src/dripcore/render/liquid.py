"""python-liquid, imported the first time a template needs it, with every rendering bounded by RenderLimits.

:func:`load_liquid` gives the one :class:`LiquidRuntime`: bounded environments,
the guarded render, and the error classes the renderer turns into a
:class:`~dripcore.errors.RenderError`. Nothing here imports python-liquid
until :func:`load_liquid` is first called, so a host whose templates are all
plain substitutions never pays for it.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from time import thread_time
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from .limits import RenderLimits

if TYPE_CHECKING:  # python-liquid is imported on first need, see LiquidRuntime
    from liquid import BoundTemplate, Environment
    from liquid.exceptions import LiquidError

__all__ = ["LiquidRuntime", "deadline_after", "error_line", "error_reason", "load_liquid"]


class LiquidRuntime:
    """python-liquid and dripcore's extensions of it, imported the first time a template needs them.

    Most templates are plain substitutions (:class:`~dripcore.render.fast.SimpleTemplate`) and the package
    costs ~15 MiB once imported, so nothing here runs until a template does
    need Liquid. :func:`load_liquid` makes the one instance.

    The extensions bound a rendering (see :class:`RenderLimits`), through
    python-liquid's own extension points: a ``RenderContext`` subclass that
    checks the deadline on every ``assign``, on entering a loop and on every
    iteration (it wraps the loop's iterator); every filter of the
    environment wrapped to check the deadline (on a large input) and the
    size of what it takes and makes; and range literals ``(a..b)`` given a
    bounded class once a template is parsed (a range is lazy, but
    ``contains`` or a filter would walk it). Between two checks a render
    does at most one loop iteration's worth of template, bounded by the
    template's size, or one filter call on bounded input.
    """

    def __init__(self) -> None:
        from liquid import Environment, RenderContext
        from liquid.builtin.expressions.primitive import RangeLiteral
        from liquid.exceptions import (
            LiquidError,
            LocalNamespaceLimitError,
            LoopIterationLimitError,
            OutputStreamLimitError,
            ResourceLimitError,
            UndefinedError,
        )
        from liquid.output import LimitedStringIO
        from liquid.undefined import Undefined

        class UnknownVariableError(UndefinedError):
            def __init__(self, variable: str, token: Any) -> None:
                super().__init__(f"unknown variable {variable!r}", token=token)
                self.variable = variable

        class LimitError(ResourceLimitError):
            """One of dripcore's :class:`RenderLimits` was hit; ``limit`` names it."""

            def __init__(self, message: str, *, limit: str) -> None:
                super().__init__(message, token=None)
                self.limit = limit

        class OutputStrictUndefined(Undefined):
            """Undefined that may be tested (``if``, ``default``) but not output, filtered or looped over."""

            __slots__ = ()
            force_liquid_default = True

            def _fail(self) -> NoReturn:
                # Liquid names the whole missing path ("address.zip") only in its hint.
                hint, suffix = self.hint or "", " is undefined"
                variable = hint[: -len(suffix)].strip("'") if hint.endswith(suffix) else self.name
                raise UnknownVariableError(variable, self.token)

            def __bool__(self) -> bool:
                return False

            def __str__(self) -> str:
                self._fail()

            def __iter__(self) -> Any:
                self._fail()

            def __len__(self) -> int:
                self._fail()

            def __getitem__(self, key: str) -> object:
                self._fail()

            def __contains__(self, item: object) -> bool:
                self._fail()

            def __int__(self) -> int:
                self._fail()

            def __reversed__(self) -> Any:
                self._fail()

            def __hash__(self) -> int:
                return hash(self.name)

            def __eq__(self, other: object) -> bool:
                return isinstance(other, Undefined) or other is None

        class GuardedContext(RenderContext):
            """A render context that stops at its deadline (checked on assign, loop entry and every iteration).

            Writes are not checked: each comes from a node that takes bounded
            time (a loop checks on each iteration, a filter on its call), so
            looking at the clock there too would only cost.
            """

            __slots__ = ("deadline",)
            deadline: float

            def __init__(self, template: Any, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
                super().__init__(template, *args, **kwargs)
                parent = kwargs.get("parent_context")
                if deadline is None:  # a copy for {% render %}: the parent's deadline
                    deadline = parent.deadline if isinstance(parent, GuardedContext) else math.inf
                self.deadline = deadline

            def check(self) -> None:
                if thread_time() > self.deadline:
                    self.late()

            def late(self) -> NoReturn:
                late(self.env)

            def assign(self, key: str, val: Any) -> None:
                self.check()
                super().assign(key, val)

            @contextmanager
            def loop(self, namespace: Mapping[str, object], forloop: Any) -> Iterator[Any]:
                self.check()
                if hasattr(forloop, "it"):
                    forloop.it = self._ticking(forloop.it)
                with super().loop(namespace, forloop) as context:
                    yield context

            def _ticking(self, items: Iterator[object]) -> Iterator[object]:
                deadline = self.deadline
                for item in items:
                    if thread_time() > deadline:
                        self.late()
                    yield item

        class BoundedRange(RangeLiteral):
            """A range literal ``(a..b)`` of at most ``max_items`` items."""

            __slots__ = ()

            def evaluate(self, context: Any) -> range:
                items = super().evaluate(context)
                _check_items(items, context.env.max_items, "a range")
                return items

        def bound_ranges(template: BoundTemplate) -> BoundTemplate:
            """Give every range literal of ``template`` the bounded class (its parse tree walked once)."""
            static = RenderContext(template)
            nodes = list(template.nodes)
            while nodes:
                node = nodes.pop()
                expressions = list(node.expressions())
                while expressions:
                    expression = expressions.pop()
                    if type(expression) is RangeLiteral:
                        expression.__class__ = BoundedRange
                    expressions.extend(expression.children())
                nodes.extend(node.children(static, include_partials=False))
            return template

        def _check_items(value: Any, limit: int, what: str) -> None:
            try:
                count = len(value)
            except OverflowError:  # a range past sys.maxsize
                count = sys.maxsize
            if count > limit:
                raise LimitError(f"{what} of {count:,} items, more than the limit of {limit:,}", limit="max_items")

        # The deadline of the guarded render running on this thread, for the filters: asking python-liquid
        # for the context instead (with_context) would make it build a partial on every filter call.
        running = threading.local()

        def late(env: Any) -> NoReturn:
            raise LimitError(f"took longer than the render time limit of {env.time_limit:g} s", limit="time")

        def guarded_filter(name: str, function: Callable[..., Any], env: Any) -> Callable[..., Any]:
            """``function`` checking the deadline, what it is given (before the call) and what it makes."""
            wants_context = getattr(function, "with_context", False)
            wants_environment = getattr(function, "with_environment", False)
            checks_input = name not in _CONSTANT_TIME_FILTERS
            precheck = _FILTER_PRECHECKS.get(name)
            max_chars, max_items = env.max_chars, env.max_items

            def guarded(left: Any, *args: Any, **kwargs: Any) -> Any:
                # Short strings and small numbers, the usual input, are let through at once: a call
                # on them takes microseconds, and the loop around it, if any, checks the clock.
                kind = left.__class__
                if not (
                    (kind is str and len(left) <= _SHORT)
                    or (kind is int and -_SMALL < left < _SMALL)
                    or kind in _SCALARS
                ):
                    if thread_time() > getattr(running, "deadline", math.inf):
                        late(env)
                    if checks_input:
                        _check_value(name, "was given", left, env)
                if checks_input:
                    for arg in args:
                        kind = arg.__class__
                        if not (
                            (kind is str and len(arg) <= _SHORT)
                            or (kind is int and -_SMALL < arg < _SMALL)
                            or kind in _SCALARS
                        ):
                            _check_value(name, "was given", arg, env)
                    for arg in kwargs.values():
                        if arg is not kwargs.get("context"):
                            _check_value(name, "was given", arg, env)
                    if precheck is not None:
                        problem = precheck(left, args, max_items, max_chars)
                        if problem is not None:
                            raise LimitError(f"filter {name!r} {problem[0]}", limit=problem[1])
                if wants_environment:
                    kwargs["environment"] = env
                result = function(left, *args, **kwargs)
                kind = result.__class__
                if not (
                    (kind is str and len(result) <= max_chars)
                    or (kind is int and -_SMALL < result < _SMALL)
                    or kind in _SCALARS
                ):
                    _check_value(name, "would make", result, env)
                return result

            if wants_context:  # python-liquid passes it on
                guarded.with_context = True  # type: ignore[attr-defined]
            return guarded

        def _check_value(name: str, verb: str, value: Any, env: Any) -> None:
            kind = value.__class__
            if kind is int and -_SMALL < value < _SMALL:
                return  # the usual case, at once
            if kind is str or isinstance(value, str):
                if len(value) > env.max_chars:
                    raise LimitError(
                        f"filter {name!r} {verb} a string of {len(value):,} characters, "
                        f"more than the limit of {env.max_chars:,}",
                        limit="max_body",
                    )
            elif isinstance(value, (list, tuple, dict, range)):
                _check_items(value, env.max_items, f"filter {name!r} {verb} a sequence")
                if verb == "would make" and not isinstance(value, range):
                    text = _text_size(value)
                    if text > env.max_chars:
                        raise LimitError(
                            f"filter {name!r} would make a sequence holding {text:,} characters, "
                            f"more than the limit of {env.max_chars:,}",
                            limit="max_body",
                        )
            elif isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
                raise LimitError(f"filter {name!r} {verb} a number of more than {_MAX_INT_BITS:,} bits", limit="number")

        def environment(*, html: bool, strict: bool, max_chars: int, limits: RenderLimits | None = None) -> Environment:
            bounds = limits or RenderLimits()
            chars = max_chars

            class Limited(Environment):
                # Bounds for a runaway template: every loop's iterations multiplied,
                # the output in UTF-8 bytes, and what assign/capture may hold;
                # the rest are read by the guards above.
                loop_iteration_limit: ClassVar[int | None] = bounds.loop_iterations
                output_stream_limit: ClassVar[int | None] = 4 * chars
                local_namespace_limit: ClassVar[int | None] = 8 * chars
                time_limit: ClassVar[float] = bounds.time
                max_items: ClassVar[int] = bounds.max_items
                max_chars: ClassVar[int] = chars

            env = Limited(autoescape=html, undefined=OutputStrictUndefined if strict else Undefined)
            env.filters = {name: guarded_filter(name, function, env) for name, function in env.filters.items()}
            return env

        def render(template: BoundTemplate, values: Mapping[str, Any], deadline: float) -> str:
            """What ``template.render(values)`` gives, within the deadline and the guards."""
            context = GuardedContext(template, globals=template.make_globals(values), deadline=deadline)
            buffer = LimitedStringIO(template.env.output_stream_limit or sys.maxsize)
            running.deadline = deadline
            try:
                template.render_with_context(context, buffer)
            finally:
                running.deadline = math.inf
            return buffer.getvalue()

        self.environment = environment
        self.bound_ranges = bound_ranges
        self.render = render
        self.liquid_error = LiquidError
        self.limit_error = LimitError
        self.loop_limit_error = LoopIterationLimitError
        self.namespace_limit_error = LocalNamespaceLimitError
        self.output_limit_error = OutputStreamLimitError
        self.unknown_variable_error = UnknownVariableError


# Filters that take constant time whatever they are given: never refused for the size of their input.
_CONSTANT_TIME_FILTERS = frozenset({"size", "first", "last", "default"})
# A number a filter makes may have at most this many bits (Python prints at most 4,300 digits anyway).
_MAX_INT_BITS = 14_000
_SMALL = 1 << 62
_SHORT = 1_000
_SCALARS = frozenset({float, bool, type(None)})  # fixed size: nothing to check


def _text_size(items: Any) -> int:
    """Roughly how many characters printing ``items`` takes (each string's length, each number's digits)."""
    size = 0
    for item in items.values() if isinstance(items, dict) else items:
        if isinstance(item, (str, list, tuple, dict)):
            size += len(item)
        elif isinstance(item, int):
            size += item.bit_length() // 3 + 1
        else:
            size += 24
    return size


def _join_precheck(left: Any, args: tuple[Any, ...], max_items: int, max_chars: int) -> tuple[str, str] | None:
    separator = str(args[0]) if args else " "
    if isinstance(left, range):
        widest = max(len(str(left[0])), len(str(left[-1]))) if left else 0
        size = len(left) * (widest + len(separator))
    elif isinstance(left, (list, tuple)):
        size = _text_size(left) + len(left) * len(separator)
    else:
        return None
    if size > max_chars:
        return f"would make a string of about {size:,} characters, more than the limit of {max_chars:,}", "max_body"
    return None


def _replace_precheck(left: Any, args: tuple[Any, ...], max_items: int, max_chars: int) -> tuple[str, str] | None:
    if not isinstance(left, str) or not args:
        return None
    old = str(args[0])
    new = str(args[1]) if len(args) > 1 else ""
    size = len(left) + left.count(old) * (len(new) - len(old))
    if size > max_chars:
        return f"would make a string of {size:,} characters, more than the limit of {max_chars:,}", "max_body"
    return None


def _split_precheck(left: Any, args: tuple[Any, ...], max_items: int, max_chars: int) -> tuple[str, str] | None:
    if not isinstance(left, str):
        return None
    separator = str(args[0]) if args and args[0] is not None else ""
    pieces = len(left) if not separator or separator == " " else left.count(separator) + 1
    if pieces > max_items:
        return f"would make a sequence of up to {pieces:,} items, more than the limit of {max_items:,}", "max_items"
    return None


def _uniq_precheck(left: Any, args: tuple[Any, ...], max_items: int, max_chars: int) -> tuple[str, str] | None:
    # python-liquid's uniq compares every pair: allow it the work of a max_items-long linear pass, squared down.
    limit = max(1, math.isqrt(100 * max_items))
    if isinstance(left, (list, tuple, range)) and len(left) > limit:
        return f"was given {len(left):,} items; it compares every pair, so it takes at most {limit:,}", "max_items"
    return None


def _strip_html_precheck(left: Any, args: tuple[Any, ...], max_items: int, max_chars: int) -> tuple[str, str] | None:
    # An HTML parser in Python, about a microsecond a character: a tenth of the string limit.
    limit = max(1, max_chars // 10)
    if isinstance(left, str) and len(left) > limit:
        return f"was given {len(left):,} characters; it parses HTML, so it takes at most {limit:,}", "max_body"
    return None


# Filters whose cost or result can outgrow what they are given: what the call would take or make, before it runs.
_FILTER_PRECHECKS: dict[str, Callable[[Any, tuple[Any, ...], int, int], tuple[str, str] | None]] = {
    "join": _join_precheck,
    "replace": _replace_precheck,
    "split": _split_precheck,
    "uniq": _uniq_precheck,
    "strip_html": _strip_html_precheck,
}


_liquid_lock = threading.Lock()
_liquid_loaded: LiquidRuntime | None = None  # until a template first needs Liquid


def load_liquid() -> LiquidRuntime:
    """The one :class:`LiquidRuntime` (one, so every environment raises the error classes the renderer catches)."""
    global _liquid_loaded
    if _liquid_loaded is None:
        with _liquid_lock:
            if _liquid_loaded is None:
                _liquid_loaded = LiquidRuntime()
    return _liquid_loaded


def deadline_after(seconds: float) -> float:
    """The deadline ``seconds`` of this thread's CPU time from now, on the clock the guards read."""
    return thread_time() + seconds


def error_line(exc: LiquidError) -> int | None:
    """The 1-based line a python-liquid error points at, if it knows."""
    try:
        where = exc.context()
    except ValueError:
        return None
    return None if where is None else where[0]


def error_reason(exc: BaseException) -> str:
    """What went wrong, in words: a python-liquid error's own message, else the exception's type and text."""
    # No LiquidError can exist before python-liquid is imported: don't import it to ask.
    exceptions = sys.modules.get("liquid.exceptions")
    if exceptions is not None and isinstance(exc, exceptions.LiquidError):
        return str(exc.message)
    return f"{type(exc).__name__}: {exc}"
