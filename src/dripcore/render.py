"""Rendering step content for one contact, with Liquid templates.

:class:`LiquidRenderer` is dripcore's :class:`~dripcore.ports.Renderer`. A
step's subject, HTML body and text body are Liquid templates::

    Hi {{ firstName | default: "there" }}, your plan is {{ plan }}.

Variables
    ``email``, ``firstName``/``FirstName``/``first_name``,
    ``lastName``/``LastName``/``last_name``, ``unsubscribe_url``, every key of
    the contact's metadata and of the enrollment's ``variables`` (the
    enrollment wins over the contact on a clash; the built-in names win over
    both, so a metadata key can never redirect the unsubscribe link).

Escaping
    In HTML bodies every variable is HTML-escaped on output: a first name of
    ``<script>`` arrives as the text ``&lt;script&gt;``. What the template
    author writes (tags, string literals, the ``safe`` filter) is theirs and
    is left alone. Text bodies and subjects are not escaped.

Subjects stay on one line
    After rendering, every line break (CR, LF, and the other characters
    :meth:`str.split` treats as whitespace) becomes a single space, runs of
    whitespace collapse, and other control characters are dropped. CR/LF is
    *stripped*, not rejected: it can only come from contact data (the model
    already rejects a multi-line subject template), and one contact's messy
    metadata should neither fail their email nor open a header injection.

Unknown variables
    ``sequence.unknown_variables`` decides: EMPTY renders them as ``""``;
    ERROR raises :class:`UnknownVariable` naming the variable and line when
    one is *output* (or filtered, or looped over). Testing one in ``{% if %}``
    or giving it a ``default`` filter stays allowed under ERROR: that is how a
    template handles optional data on purpose.

Unsubscribe
    ``{{ unsubscribe_url }}`` is always defined, by the ``unsubscribe_url``
    callable ``(contact, enrollment) -> str`` (or a pattern string, see
    :func:`unsubscribe_link`). A body that does not show the link gets a
    footer with it (an HTML and a text variant, both configurable): the link
    is always included. A text body shows it when the URL occurs in it. An
    HTML body shows it only where a reader can see and click it: in visible
    text or as the href of a link with something to click, not inside a
    comment, ``<head>``, ``<script>``, ``<style>`` or the like, an element
    hidden by its style (``display:none``, ``visibility:hidden``, zero size
    or opacity), its ``hidden`` attribute or a ``<style>`` rule, nor in
    another attribute. When in doubt the footer is added, and where a reader
    sees it (not inside an element or comment the body leaves open). Every rendering also carries the
    ``List-Unsubscribe`` header and, for an ``https`` link,
    ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058, which
    requires an https URI).

    The default is :func:`placeholder_unsubscribe_url`, which points into the
    reserved ``.invalid`` domain (RFC 2606): it keeps the engine usable with no
    configuration (tests, demos, previews), and it can never resolve, so a
    deployment that forgot to pass its own URL is caught by the first test
    email instead of sending people to somebody else's site. Hosts pass
    their own URL (usually one carrying a signed token) in production.

Templates by id
    A step with a ``template_id`` takes its content from a
    :class:`TemplateStore` (:class:`MemoryTemplateStore` keeps them in a
    dict); the step's own subject, html and text, when set, win field by
    field (the usual shape is a subject on the step, the body in the
    template). A missing template raises :class:`TemplateNotFound`.

Caching and errors
    Templates are compiled once and kept in a bounded LRU cache keyed by their
    content (editing a template simply makes a new entry), so a sequence of a
    million enrollments parses each field once. A malformed template raises
    :class:`RenderError` naming the sequence, the step, the field and the
    line; oversized or binary content raises :class:`InvalidContent` naming
    the field. The engine sets that one message aside and the tick goes on.

Bounded rendering
    Templates are untrusted input: whoever edits a sequence writes code the
    workers run. So what one rendering may cost is bounded (see
    :class:`RenderLimits`, passed as ``LiquidRenderer(limits=...)``; the
    defaults in brackets), and a template past a bound fails its own message,
    in bounded time, with an error naming the sequence, step, field and
    limit.

    - Compiling. python-liquid's lexer takes quadratic time on some sources
      (an opener never closed, a long run of whitespace inside markup, many
      ``(`` with no ``..`` after them): a linear scan refuses those before it
      sees them, as :class:`InvalidContent`, and a field may hold at most
      ``max_markup`` characters of markup [50,000], which keeps a compilation
      to a fraction of a second. A refusal is cached like a compilation.
    - Time. A message's Liquid rendering, all fields together, may take
      ``time`` seconds of wall-clock time [0.25]; the clock is read at every
      loop iteration and every filter call on a large value, and each filter
      call is itself bounded, so a render stops within milliseconds of it.
      Plain ``{{ name }}`` templates are not timed: they can't run long.
    - Memory and output. A range ``(a..b)`` and a sequence a filter takes or
      makes hold at most ``max_items`` items [10,000]; a string a filter takes
      or makes, and every body once rendered, at most ``max_body`` characters
      [1,000,000]; filters that could outgrow their input (``join``,
      ``replace``, ``split``) or compare every pair (``uniq``) are checked
      before they run; loops iterate at most ``loop_iterations`` times in all
      [100,000], and what ``assign`` and ``capture`` hold is bounded too.

Liquid on demand
    A template made only of text and plain ``{{ name }}`` outputs (most drip
    emails) is rendered by substitution, with the output Liquid would give;
    python-liquid is imported the first time a template needs more (a tag, a
    filter, a strict-mode miss that must name its line), so a host whose
    templates never do never pays for it in memory or start-up time.

Why python-liquid rather than Jinja2's sandbox
    Both are well kept, autoescape through MarkupSafe and report line numbers.
    Liquid won on three counts. It is the language the reference products
    document (``{{firstName}}``, filters such as ``default``), so templates
    written for them work unchanged. It is safe by construction rather than
    by filtering: a Liquid template can only read mappings and sequences and
    call registered filters, never a Python attribute or method, whereas
    Jinja2's :class:`~jinja2.sandbox.SandboxedEnvironment` exposes Python
    objects and blocks dangerous attributes case by case, a design that has
    needed several sandbox-escape fixes over the years; marketers' templates
    are untrusted input to a backend. And python-liquid ships resource limits
    (loop iterations, output size, namespace size) that stop a runaway
    template, which Jinja2 leaves to the host.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
import sys
import threading
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from html import unescape
from time import thread_time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn
from urllib.parse import quote

import attrs
from markupsafe import escape

from ._checks import check_count
from .errors import DripcoreError, InvalidArgument
from .model import Contact, Enrollment, Sequence, Step, UnknownVariables
from .ports import Rendered, Renderer

if TYPE_CHECKING:  # python-liquid is imported on first need, see _Liquid
    from liquid import BoundTemplate, Environment
    from liquid.exceptions import LiquidError

__all__ = [
    "CacheInfo",
    "DEFAULT_FOOTER_HTML",
    "DEFAULT_FOOTER_TEXT",
    "InvalidContent",
    "LiquidRenderer",
    "MemoryTemplateStore",
    "RenderError",
    "RenderLimitExceeded",
    "RenderLimits",
    "SimpleRenderer",
    "Template",
    "TemplateNotFound",
    "TemplateStore",
    "UnknownVariable",
    "UnsubscribeUrl",
    "placeholder_unsubscribe_url",
    "template_variables",
    "unsubscribe_link",
]

UnsubscribeUrl = Callable[[Contact, Enrollment], str]
"""Builds a contact's unsubscribe link for one enrollment."""

#: The footer added to an HTML body that does not show the unsubscribe link (a Liquid template).
DEFAULT_FOOTER_HTML = (
    '<p style="font-size:12px;color:#6b7280;text-align:center"><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)
#: The footer added to a text body that does not show the unsubscribe link (a Liquid template).
DEFAULT_FOOTER_TEXT = "Unsubscribe: {{ unsubscribe_url }}"

#: The longest subject a rendering may produce: RFC 5322's line limit.
MAX_SUBJECT = 998

# Control characters that have no place in text content: C0 except tab, LF,
# VT, FF and CR (NUL included), and lone surrogates (undecodable bytes).
_BINARY = re.compile(r"[\x00-\x08\x0e-\x1f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Dropped from subjects; the whitespace controls are folded into spaces instead.
_SUBJECT_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_URL_SCHEMES = frozenset({"https", "http", "mailto"})
_BAD_URL_CHARACTER = re.compile(r"[\s<>\"'\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- errors


class RenderError(DripcoreError):
    """A step could not be rendered; names the sequence, the step and, when known, the field and line.

    ``field`` is ``"subject"``, ``"html"``, ``"text"``, ``"template_id"`` or
    ``"unsubscribe_url"``; ``template_id`` is set when the content came from
    a :class:`TemplateStore`; ``line`` is 1-based within that field.
    """

    def __init__(
        self,
        *,
        sequence_id: str,
        position: int,
        reason: str,
        line: int | None = None,
        field: str | None = None,
        template_id: str | None = None,
    ) -> None:
        self.sequence_id = sequence_id
        self.position = position
        self.reason = reason
        self.line = line
        self.field = field
        self.template_id = template_id
        where = f"sequence {sequence_id!r} step {position}"
        if template_id is not None:
            where += f" (template {template_id!r})"
        if field is not None:
            where += f" {field}"
        if line is not None:
            where += f" line {line}"
        super().__init__(f"{where}: {reason}")


class UnknownVariable(RenderError):
    """A template output a variable the contact and enrollment don't have (policy ERROR)."""

    def __init__(self, *, variable: str, **where: Any) -> None:
        self.variable = variable
        super().__init__(reason=f"unknown variable {variable!r}", **where)


class TemplateNotFound(RenderError):
    """A step's ``template_id`` is not in the template store (or there is no store)."""


class InvalidContent(RenderError):
    """Content that can't be an email: oversized, binary, or not text. ``field`` names it."""


class RenderLimitExceeded(RenderError):
    """A rendering went past one of its :class:`RenderLimits`; ``limit`` names which.

    ``limit`` is ``"time"``, ``"max_items"``, ``"max_body"`` (a string a filter
    takes or makes), ``"loop_iterations"`` or ``"namespace"`` (what
    ``assign`` and ``capture`` may hold).
    """

    def __init__(self, *, limit: str, **where: Any) -> None:
        self.limit = limit
        super().__init__(**where)


# --------------------------------------------------------------------------- limits


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise InvalidArgument(f"limits.{attribute.name}", value, "must be a positive number")


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"limits.{attribute.name}", value, "must be a positive integer")


@attrs.frozen(kw_only=True)
class RenderLimits:
    """What rendering one message may cost; past a limit, that message fails with a :class:`RenderError`.

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


# --------------------------------------------------------------------------- templates by id


@attrs.frozen(kw_only=True)
class Template:
    """Stored email content a step can point at with ``template_id``; any field may be missing."""

    subject: str | None = None
    html: str | None = None
    text: str | None = None


class TemplateStore(ABC):
    """Where ``template_id`` steps find their content.

    ``get`` returns the template or None when there is none with that id. It
    is called once per rendering, so a store backed by a database should
    cache; the renderer caches compiled templates by content, so an edited
    template takes effect at once.
    """

    @abstractmethod
    def get(self, template_id: str) -> Template | None:
        """The template with that id, or None."""


class MemoryTemplateStore(TemplateStore):
    """Templates in a dict, for tests and small hosts.

    >>> store = MemoryTemplateStore({"welcome": Template(subject="Hi", text="Welcome, {{ firstName }}!")})
    >>> store.get("welcome").subject
    'Hi'
    """

    def __init__(self, templates: Mapping[str, Template] | None = None) -> None:
        self._templates: dict[str, Template] = dict(templates or {})

    def put(self, template_id: str, template: Template) -> None:
        """Add or replace a template."""
        self._templates[template_id] = template

    def get(self, template_id: str) -> Template | None:
        """The template with that id, or None."""
        return self._templates.get(template_id)


# --------------------------------------------------------------------------- variables


def template_variables(contact: Contact, enrollment: Enrollment) -> dict[str, Any]:
    """The variables a step template can use, with the reference documents' spellings.

    ``unsubscribe_url`` is added by the renderer.
    """
    first, last = contact.first_name, contact.last_name
    values: dict[str, Any] = {
        "email": contact.email,
        "firstName": first,
        "FirstName": first,
        "first_name": first,
        "lastName": last,
        "LastName": last,
        "last_name": last,
    }
    metadata, variables = contact.metadata, enrollment.variables
    if metadata or variables:  # the usual contact has neither: no merge to do
        values = {**metadata, **variables, **values}
    return values


def placeholder_unsubscribe_url(contact: Contact, enrollment: Enrollment) -> str:
    """The default unsubscribe link: ``https://unsubscribe.invalid/<sequence>/<enrollment>``.

    ``.invalid`` is reserved and never resolves: pass your own
    ``unsubscribe_url`` to :class:`LiquidRenderer` before sending real email.
    """
    return f"https://unsubscribe.invalid/{_path_segment(enrollment.sequence_id)}/{_path_segment(enrollment.id)}"


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]+")


def _path_segment(text: str) -> str:
    """``text`` percent-encoded as one URL path segment (most ids need nothing)."""
    if (text.isascii() and text.isalnum()) or _URL_SAFE.fullmatch(text):  # the first test is the cheaper
        return text
    return quote(text, safe="")


def unsubscribe_link(pattern: str) -> UnsubscribeUrl:
    """An unsubscribe-link builder from a pattern with ``{contact_id}``, ``{enrollment_id}``,
    ``{sequence_id}`` and ``{email}`` fields (each URL-quoted).

    >>> from datetime import datetime, timezone
    >>> link = unsubscribe_link("https://example.com/unsubscribe?e={enrollment_id}&to={email}")
    >>> contact = Contact(id="c1", email="ana+news@example.com")
    >>> at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> enrollment = Enrollment(id="e1", sequence_id="s1", contact_id="c1", status="active",
    ...     enrolled_at=at, next_step_due_at=at)
    >>> link(contact, enrollment)
    'https://example.com/unsubscribe?e=e1&to=ana%2Bnews%40example.com'
    """
    fields = ("contact_id", "enrollment_id", "sequence_id", "email")
    try:
        pattern.format(**dict.fromkeys(fields, "x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidArgument(
            "unsubscribe_url", pattern, f"use only the fields {', '.join(fields)} ({type(exc).__name__}: {exc})"
        ) from None

    def build(contact: Contact, enrollment: Enrollment) -> str:
        return pattern.format(
            contact_id=quote(contact.id, safe=""),
            enrollment_id=quote(enrollment.id, safe=""),
            sequence_id=quote(enrollment.sequence_id, safe=""),
            email=quote(contact.email, safe=""),
        )

    return build


# --------------------------------------------------------------------------- the Liquid engine, on demand


class _Liquid:
    """python-liquid and dripcore's extensions of it, imported the first time a template needs them.

    Most templates are plain substitutions (:class:`_Simple`) and the package
    costs ~15 MiB once imported, so nothing here runs until a template does
    need Liquid. :func:`_liquid` makes the one instance.

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
_liquid_loaded: _Liquid | None = None  # until a template first needs Liquid


def _liquid() -> _Liquid:
    """The one :class:`_Liquid` (one, so every environment raises the error classes the renderer catches)."""
    global _liquid_loaded
    if _liquid_loaded is None:
        with _liquid_lock:
            if _liquid_loaded is None:
                _liquid_loaded = _Liquid()
    return _liquid_loaded


@attrs.frozen
class _Broken:
    """A template that failed to compile, cached so it is not parsed again.

    ``refused`` marks one dripcore refused before python-liquid saw it (too
    much markup, or markup its lexer would take quadratic time over): that
    is :class:`InvalidContent`, the rest a plain :class:`RenderError`.
    """

    reason: str
    line: int | None
    refused: bool = False


# --------------------------------------------------------------------------- what python-liquid can compile fast
#
# python-liquid's lexer is one regular expression, tried at each position
# where the last token ended: raw/doc blocks, ``{{ ... }}``, ``{% ... %}``, text.
# Two things make it quadratic, both in liquid/lex.py:
#
# - An opener with no closer after it. The output rule
#   ``{{-?\s*(?P<stmt>(?:(?!-?}})[\s\S])*(?<!\s))\s*-?}}`` (and the tag and raw
#   rules likewise) scans to the end of the source before it fails, and the
#   text rule then advances one character when an opener follows at once, so
#   ``{{`` repeated n times is n scans of the rest of the source (20,000 of
#   them: 73 s), and an opener followed by a long word or run of whitespace
#   backtracks through it, a scan to the end per character.
# - A run of whitespace inside markup that the stmt group has to give back
#   (``{{`` + spaces + ``}}``, a tag with only whitespace after its name):
#   ``(?<!\s)`` fails at each position and the greedy ``\s*`` before it
#   backtracks one character at a time, quadratic in the run. The
#   ``{% liquid %}`` tag's own lexer (``(?P<expr>.*?)[ \t\r]*?(\n+|$)``) and
#   the inline comment check are quadratic in runs of whitespace too.
#
# And the expression lexer (liquid/builtin/expressions/_tokenize.py) looks
# ahead from every ``(`` for a ``..`` (``\((?=.+?\.\.)``) and from every ``["``
# for its closing quote and bracket, to the end of the expression when
# there is none. Past those, compiling is linear but not cheap (a few
# microseconds per character of markup), hence ``max_markup``.
#
# _markup_problem finds the markups the lexer will see (the same boundaries,
# found with str.find: linear), refuses an opener that is never closed, and
# adds up what the quadratic paths would cost inside the rest.

_OPENER = re.compile(r"\{[{%]")
_RAW_OPEN = re.compile(r"\{%-?\s*(raw|doc)\s*-?%\}")
_RAW_CLOSE = {
    "raw": re.compile(r"\{%-?\s*endraw\s*-?%\}"),
    "doc": re.compile(r"\{%-?\s*enddoc\s*-?%\}"),
}
_LONG_SPACE = re.compile(r"\s{16,}")
# A "(" with no ".." soon after, a "[" + quote with no closing quote and "]" soon after: each a scan to the end.
_FAR_RANGE = re.compile(r"\((?!.{0,64}?\.\.)", re.DOTALL)
_FAR_QUOTE = re.compile(r"\[\s*([\"'])(?!.{0,64}?\1\s*\])", re.DOTALL)
# Characters python-liquid's regular expressions may scan beyond one pass, summed over a template:
# about 0.2 s of the slowest kind on a slow machine, and a thousand times what real templates need.
_LEXER_BUDGET = 1_000_000


def _markup_problem(source: str, max_markup: int) -> tuple[str, int | None] | None:
    """Why python-liquid should not be given ``source`` (a reason and a line), or None when it compiles fast."""
    at = markup = cost = worst_cost = 0
    worst_at = -1
    while True:
        opener = _OPENER.search(source, at)
        if opener is None:
            break
        start = opener.start()
        if source[start + 1] == "{":
            close = source.find("}}", start + 2)
            if close < 0:
                return "'{{' is never closed by '}}'", _line_at(source, start)
        else:
            raw = _RAW_OPEN.match(source, start)
            if raw is not None:
                end = _RAW_CLOSE[raw.group(1)].search(source, raw.end())
                if end is None:
                    return f"'{raw.group()}' is never closed by '{{% end{raw.group(1)} %}}'", _line_at(source, start)
                markup += raw.end() - start + end.end() - end.start()
                at = end.end()
                continue
            close = source.find("%}", start + 2)
            if close < 0:
                return "'{%' is never closed by '%}'", _line_at(source, start)
        at = close + 2
        markup += at - start
        if markup > max_markup:
            return f"more than {max_markup:,} characters of Liquid markup (the limit)", None
        if close - start < 18:
            continue  # too short for any of the costly cases to matter
        here = 0
        for run in _LONG_SPACE.finditer(source, start + 2, close):
            here += (run.end() - run.start()) ** 2 // 2
        if source.find("(", start + 2, close) >= 0:
            for far in _FAR_RANGE.finditer(source, start + 2, close):
                here += close - far.start()
        if source.find("[", start + 2, close) >= 0:
            for far in _FAR_QUOTE.finditer(source, start + 2, close):
                here += close - far.start()
        if here:
            cost += here
            if here > worst_cost:
                worst_cost, worst_at = here, start
            if cost > _LEXER_BUDGET:
                return (
                    "Liquid markup too costly to parse: a long run of whitespace inside it, "
                    "or many '(' or '[\"' with no '..' or closing quote after them",
                    _line_at(source, worst_at),
                )
    return None


def _line_at(source: str, index: int) -> int:
    return source.count("\n", 0, index) + 1


_SIMPLE_OUTPUT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_MARKUP = re.compile(r"\{[{%#]|[}%]\}")
# Words Liquid's expression parser reads as literals or keywords rather than as
# a variable: ``{{ true }}`` prints "true", ``{{ nil }}`` nothing whatever the
# data holds, and ``{{ and }}`` does not compile. An output of one is Liquid's job.
_LIQUID_WORDS = frozenset(
    {
        "and", "as", "blank", "by", "cols", "contains", "continue", "else", "empty", "false", "for", "if", "in",
        "limit", "nil", "not", "null", "offset", "or", "range", "required", "reversed", "true", "with",
    }
)  # fmt: skip
_MISSING = object()


@attrs.frozen
class _Simple:
    """A template made only of text and plain ``{{ name }}`` outputs.

    Most drip emails look like this, and rendering them by substitution is an
    order of magnitude cheaper than a Liquid render (and needs no Liquid at
    all). :meth:`parse` accepts only sources Liquid compiles, and the result is
    the same as Liquid's for string, integer and missing values (checked by
    property tests); anything else (a list, a float, a strict-mode miss, which
    must name its line) falls back to Liquid.
    """

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, source: str) -> _Simple | None:
        parts = _SIMPLE_OUTPUT.split(source)
        if any(_MARKUP.search(parts[i]) for i in range(0, len(parts), 2)):
            return None  # tags, filters, whitespace control, comments: Liquid's job
        if any(parts[i].endswith("{") for i in range(0, len(parts) - 1, 2)):
            return None  # "{{{ name }}" is an output of "{ name" to Liquid, a syntax error
        if any(parts[i] in _LIQUID_WORDS for i in range(1, len(parts), 2)):
            return None
        return cls(tuple(parts))

    def render(self, values: Mapping[str, Any], *, html: bool, strict: bool, limit: int | None = None) -> str | None:
        """The output, or None when only Liquid can say (or when the values alone pass ``limit`` characters)."""
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 3:  # one output, the usual case: no list to build
            value = values.get(parts[1], _MISSING)
            if value.__class__ is str and not html:
                return parts[0] + value + parts[2]
            text = _printed(value, html, strict)
            return None if text is None else parts[0] + text + parts[2]
        out = list(parts)
        get = values.get
        size, budget = 0, sys.maxsize if limit is None else limit
        for i in range(1, len(parts), 2):
            text = _printed(get(parts[i], _MISSING), html, strict)
            if text is None:
                return None
            size += len(text)
            if size > budget:
                return None  # too long: Liquid stops at its output limit, and says so
            out[i] = text
        return "".join(out)


def _printed(value: object, html: bool, strict: bool) -> str | None:
    """What Liquid prints for ``value``, or None when only Liquid can say."""
    if value.__class__ is str:
        text = value
    elif value.__class__ is int:
        text = str(value)
    elif value is None or (value is _MISSING and not strict):
        return ""
    else:
        return None
    return str(escape(text)) if html else text


class _Compiled:
    """A cached template: its substitution fast path, if it has one, and its Liquid compilation once made.

    ``layout`` is where a simple HTML template's outputs land, worked out on first need.
    """

    __slots__ = ("constant", "layout", "liquid", "simple")

    def __init__(self, simple: _Simple | None, liquid: BoundTemplate | _Broken | None) -> None:
        self.simple = simple
        # The output of a template with no output at all (a plain "Hello"), the same for every email.
        self.constant = simple.parts[0] if simple is not None and len(simple.parts) == 1 else None
        # None until needed: a simple template only needs Liquid for a value it can't print.
        self.liquid = liquid
        self.layout: _HtmlLayout | None = None


@attrs.frozen
class CacheInfo:
    """Compiled-template cache figures: ``misses`` counts compilations."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def _line(exc: LiquidError) -> int | None:
    try:
        where = exc.context()
    except ValueError:
        return None
    return None if where is None else where[0]


def _reason(exc: BaseException) -> str:
    # No LiquidError can exist before python-liquid is imported: don't import it to ask.
    exceptions = sys.modules.get("liquid.exceptions")
    if exceptions is not None and isinstance(exc, exceptions.LiquidError):
        return str(exc.message)
    return f"{type(exc).__name__}: {exc}"


def _one_line(text: str) -> str:
    # Already one line: a printable text holds no control character and no whitespace but " ".
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return " ".join(_SUBJECT_CONTROL.sub("", text).split())


def _where(sequence: Sequence, step: Step, field: str | None = None, line: int | None = None) -> dict[str, Any]:
    """The keyword arguments that place a :class:`RenderError`."""
    return {
        "sequence_id": sequence.id,
        "position": step.position,
        "template_id": step.template_id,
        "field": field,
        "line": line,
    }


def _has_bad_url_character(url: str) -> bool:
    """Whether ``_BAD_URL_CHARACTER`` occurs in ``url``, answered without the regex for an ASCII link."""
    if url.isascii():  # then only \x00-\x1f and \x7f are unprintable, and the only whitespace left is " "
        return not url.isprintable() or " " in url or "<" in url or ">" in url or '"' in url or "'" in url
    return _BAD_URL_CHARACTER.search(url) is not None


class LiquidRenderer(Renderer):
    """Renders steps as Liquid templates: escaped HTML, one-line subjects, unsubscribe always included.

    ``unsubscribe_url`` builds each contact's link: a callable
    ``(contact, enrollment) -> str`` or a pattern for :func:`unsubscribe_link`;
    the default is :func:`placeholder_unsubscribe_url` (never resolves: set
    yours in production). ``templates`` resolves ``template_id`` steps.
    ``footer_html`` and ``footer_text`` are Liquid templates that must show
    ``{{ unsubscribe_url }}`` (the HTML one where a reader can see and click
    it). ``cache_size`` bounds the compiled-template cache; ``max_body``
    bounds every body, before and after rendering, and
    every string a filter takes or makes, in characters (default 1,000,000).
    ``limits`` (a :class:`RenderLimits`) bounds the rest of what a template
    may cost; its defaults: 0.25 s of rendering per message, 50,000
    characters of Liquid markup per field, 10,000 items per sequence or range,
    100,000 loop iterations. A template past a limit fails that message only,
    with a :class:`RenderLimitExceeded` (or :class:`InvalidContent` for a
    template refused before it is compiled) naming the sequence, step, field
    and limit.

    >>> from datetime import datetime, timezone
    >>> renderer = LiquidRenderer(unsubscribe_url="https://example.com/u/{enrollment_id}")
    >>> at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> rendered = renderer.render(
    ...     Step(position=1, subject="Hi {{ firstName }}", html="<p>Hello {{ firstName }}</p>"),
    ...     sequence=Sequence(id="s1", name="Welcome"),
    ...     contact=Contact(id="c1", email="ana@example.com", first_name="<Ana>"),
    ...     enrollment=Enrollment(id="e1", sequence_id="s1", contact_id="c1", status="active",
    ...                           enrolled_at=at, next_step_due_at=at))
    >>> rendered.subject
    'Hi <Ana>'
    >>> print(rendered.html)  # doctest: +NORMALIZE_WHITESPACE
    <p>Hello &lt;Ana&gt;</p><p style="font-size:12px;color:#6b7280;text-align:center"><a
    href="https://example.com/u/e1">Unsubscribe</a></p>
    >>> dict(rendered.headers)["List-Unsubscribe"]
    '<https://example.com/u/e1>'
    """

    def __init__(
        self,
        *,
        unsubscribe_url: UnsubscribeUrl | str = placeholder_unsubscribe_url,
        templates: TemplateStore | None = None,
        footer_html: str = DEFAULT_FOOTER_HTML,
        footer_text: str = DEFAULT_FOOTER_TEXT,
        cache_size: int = 512,
        max_body: int = 1_000_000,
        limits: RenderLimits = RenderLimits(),  # frozen: one shared default is safe
    ) -> None:
        check_count(cache_size, "cache_size", minimum=1)
        check_count(max_body, "max_body", minimum=1)
        if not isinstance(limits, RenderLimits):
            raise InvalidArgument("limits", limits, "must be a RenderLimits")
        if not isinstance(unsubscribe_url, str) and not callable(unsubscribe_url):
            raise InvalidArgument("unsubscribe_url", unsubscribe_url, "must be a pattern string or a callable")
        if templates is not None and not isinstance(templates, TemplateStore):
            raise InvalidArgument("templates", templates, "must be a TemplateStore")
        for name, footer in (("footer_html", footer_html), ("footer_text", footer_text)):
            if not isinstance(footer, str):
                raise InvalidArgument(name, footer, "must be a Liquid template string")
        self._unsubscribe_url: UnsubscribeUrl = (
            unsubscribe_link(unsubscribe_url) if isinstance(unsubscribe_url, str) else unsubscribe_url
        )
        self.templates = templates
        self.cache_size = cache_size
        self.max_body = max_body
        self.limits = limits
        self._max_chars = max_body  # the Liquid environments' limits, fixed at construction
        self._envs: dict[tuple[bool, bool], Environment] = {}  # (html, strict), made on first need
        self._cache: OrderedDict[tuple[bool, bool, str], _Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self._checked: set[object] = set()  # sources already found clean: checked once, not per email
        self._hits = 0
        self._misses = 0
        self._footer_sources = {True: footer_html, False: footer_text}
        self._footers: dict[bool, BoundTemplate] = {}  # Liquid compilations of the footers, made on first need
        self._simple_footers = {html: self._check_footer(html) for html in (True, False)}

    def _check_footer(self, html: bool) -> _Simple | None:
        """Refuse a footer that does not compile or does not show the link; its fast path, if it has one."""
        source, name = self._footer_sources[html], f"footer_{'html' if html else 'text'}"
        probe = {"unsubscribe_url": "https://probe.invalid/?a=1&b=2"}
        simple = _Simple.parse(source) if isinstance(source, str) else None
        shown = None if simple is None else simple.render(probe, html=html, strict=False)
        if shown is None or len(shown) > self._max_chars or _SURROGATE.search(shown):
            # Liquid's answer is different: over its output limit, or unable to encode the output.
            liquid = _liquid()
            try:
                template = self._environment(html, False).from_string(source)
                shown = template.render(probe)
            except liquid.liquid_error as exc:
                raise InvalidArgument(name, source, _reason(exc)) from None
            self._footers[html] = template
        if (str(escape(probe["unsubscribe_url"])) if html else probe["unsubscribe_url"]) not in shown:
            raise InvalidArgument(name, source, "must show {{ unsubscribe_url }}")
        if html and not _shows_link(shown, probe["unsubscribe_url"]):
            raise InvalidArgument(name, source, "must show {{ unsubscribe_url }} where a reader can see and click it")
        return simple

    def _environment(self, html: bool, strict: bool) -> Environment:
        env = self._envs.get((html, strict))
        if env is None:
            made = _liquid().environment(html=html, strict=strict, max_chars=self._max_chars, limits=self.limits)
            with self._lock:
                env = self._envs.setdefault((html, strict), made)
        return env

    # -- cache

    def cache_info(self) -> CacheInfo:
        """How the compiled-template cache is doing (``misses`` = compilations)."""
        with self._lock:
            return CacheInfo(hits=self._hits, misses=self._misses, maxsize=self.cache_size, currsize=len(self._cache))

    def cache_clear(self) -> None:
        """Forget every compiled template."""
        with self._lock:
            self._cache.clear()
            self._checked.clear()

    def _compile(self, key: tuple[bool, bool, str]) -> _Compiled:
        html, strict, source = key
        simple = _Simple.parse(source)
        # A simple source always compiles: Liquid is left for when it is needed, if ever.
        compiled = _Compiled(simple, None if simple is not None else self._compile_liquid(source, html, strict))
        with self._lock:
            self._cache[key] = compiled
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _compile_liquid(self, source: str, html: bool, strict: bool) -> BoundTemplate | _Broken:
        problem = _markup_problem(source, self.limits.max_markup)
        if problem is not None:
            return _Broken(problem[0], problem[1], refused=True)
        env = self._environment(html, strict)
        liquid = _liquid()
        try:
            return liquid.bound_ranges(env.from_string(source))
        except liquid.liquid_error as exc:
            return _Broken(_reason(exc), _line(exc))
        except Exception as exc:  # the template is untrusted input: report, never crash the tick
            return _Broken(_reason(exc), None)

    # -- rendering

    def render(self, step: Step, *, sequence: Sequence, contact: Contact, enrollment: Enrollment) -> Rendered:
        """Render ``step`` for ``contact``; raises a :class:`RenderError` naming what went wrong."""
        subject_source, html_source, text_source = self._sources(step, sequence)
        url = self._unsubscribe(contact, enrollment, step, sequence)
        values = template_variables(contact, enrollment)
        values["unsubscribe_url"] = url
        strict = sequence.unknown_variables is UnknownVariables.ERROR
        clock: list[float] = []  # the message's deadline, once a field needs Liquid

        subject = _one_line(self._render("subject", subject_source, values, False, strict, step, sequence, clock)[0])
        if len(subject) > MAX_SUBJECT:
            raise InvalidContent(
                reason=f"longer than {MAX_SUBJECT} characters once rendered", **_where(sequence, step, "subject")
            )
        html = text = None
        if html_source is not None:
            html, compiled = self._render("html", html_source, values, True, strict, step, sequence, clock)
            html = self._with_html_footer(html, compiled, values, url)
            if len(html) > self.max_body or not html.isascii():  # else _check_output has nothing to find
                self._check_output("html", html, step, sequence)
        if text_source is not None:
            text = self._render("text", text_source, values, False, strict, step, sequence, clock)[0]
            if url not in text:
                footer = self._render_footer(values, False)
                text = f"{text.rstrip()}\n\n{footer}\n" if text.strip() else f"{footer}\n"
            if len(text) > self.max_body or not text.isascii():
                self._check_output("text", text, step, sequence)
        if url[:6].lower() == "https:":
            headers = {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        else:
            headers = {"List-Unsubscribe": f"<{url}>"}
        # Read-only already: Rendered keeps it as it is rather than copying it.
        return Rendered(subject=subject, html=html, text=text, headers=MappingProxyType(headers))

    def _with_html_footer(self, html: str, compiled: _Compiled | None, values: Mapping[str, Any], url: str) -> str:
        """``html`` with the footer added, unless a reader can see and click the link in it.

        ``compiled`` is the template when its plain-substitution path made
        ``html``: where its outputs land is then known from the template.
        """
        layout = None
        if compiled is not None and compiled.simple is not None:
            layout = compiled.layout
            if layout is None:  # two threads may both work it out: the same template gives the same layout
                layout = compiled.layout = _HtmlLayout.of(compiled.simple)
            shown = layout.shows(compiled.simple, values, html, url)
        else:
            shown = None
        if shown is None:
            shown = _shows_link(html, url)
        if shown:
            return html
        at = layout.footer_position(html) if layout is not None else None
        return _insert_html_footer(html, self._render_footer(values, True), at)

    def _render_footer(self, values: Mapping[str, Any], html: bool) -> str:
        simple = self._simple_footers[html]
        if simple is not None:
            rendered = simple.render(values, html=html, strict=False)
            if rendered is not None:
                return rendered
        template = self._footers.get(html)
        if template is None:  # a simple footer meeting a value it can't print; two threads may both compile it
            template = self._footers[html] = self._environment(html, False).from_string(self._footer_sources[html])
        return template.render(values)

    def _sources(self, step: Step, sequence: Sequence) -> tuple[str, str | None, str | None]:
        subject, html, text = step.subject, step.html, step.text
        if step.template_id is not None:
            if self.templates is None:
                raise TemplateNotFound(
                    reason="this renderer has no template store", **_where(sequence, step, "template_id")
                )
            stored = self.templates.get(step.template_id)
            if stored is None:
                raise TemplateNotFound(
                    reason="no such template in the template store", **_where(sequence, step, "template_id")
                )
            subject = subject if subject is not None else stored.subject
            html = html if html is not None else stored.html
            text = text if text is not None else stored.text
        if subject is None:
            raise RenderError(
                reason="no subject: the step and its template set none", **_where(sequence, step, "subject")
            )
        if html is None and text is None:
            raise RenderError(
                reason="no body: the step and its template set neither html nor text", **_where(sequence, step)
            )
        checked = self._checked
        if subject not in checked:
            self._check_new_source("subject", subject, step, sequence)
        if html is not None and html not in checked:
            self._check_new_source("html", html, step, sequence)
        if text is not None and text not in checked:
            self._check_new_source("text", text, step, sequence)
        return subject, html, text

    def _check_new_source(self, field: str, value: object, step: Step, sequence: Sequence) -> None:
        self._check_source(field, value, step, sequence)
        if len(self._checked) < self.cache_size:
            self._checked.add(value)

    def _check_source(self, field: str, value: object, step: Step, sequence: Sequence) -> None:
        if not isinstance(value, str):
            raise InvalidContent(reason=f"must be text, not {type(value).__name__}", **_where(sequence, step, field))
        if len(value) > self.max_body:
            raise InvalidContent(reason=f"longer than {self.max_body} characters", **_where(sequence, step, field))
        binary = _BINARY.search(value)
        if binary is not None:
            raise InvalidContent(
                reason=f"binary content: control character {binary.group()!r} at offset {binary.start()}",
                **_where(sequence, step, field, value.count("\n", 0, binary.start()) + 1),
            )

    def _check_output(self, field: str, value: str, step: Step, sequence: Sequence) -> None:
        if len(value) > self.max_body:
            raise InvalidContent(
                reason=f"longer than {self.max_body} characters once rendered", **_where(sequence, step, field)
            )
        if not value.isascii() and _SURROGATE.search(value) is not None:
            raise InvalidContent(
                reason="a variable holds text that is not valid Unicode", **_where(sequence, step, field)
            )

    def _unsubscribe(self, contact: Contact, enrollment: Enrollment, step: Step, sequence: Sequence) -> str:
        # A failure of the host's callable (a token service that is down) is raised as it is:
        # not the template's fault, so the engine sets that enrollment aside and tries again
        # later rather than failing its email for good.
        url = self._unsubscribe_url(contact, enrollment)
        if self._unsubscribe_url is placeholder_unsubscribe_url:
            return url  # https, unreserved characters and %XX escapes only: nothing to check
        problem = None
        if not isinstance(url, str) or not url:
            problem = "must be a non-empty string"
        elif _has_bad_url_character(url):
            problem = "must not contain whitespace, quotes, angle brackets or control characters"
        elif url.partition(":")[0].lower() not in _URL_SCHEMES:
            problem = "must be an https, http or mailto URL"
        if problem is not None:
            raise RenderError(reason=f"unsubscribe_url {url!r} {problem}", **_where(sequence, step, "unsubscribe_url"))
        return url

    def _render(
        self,
        field: str,
        source: str,
        values: Mapping[str, Any],
        html: bool,
        strict: bool,
        step: Step,
        sequence: Sequence,
        clock: list[float],
    ) -> tuple[str, _Compiled | None]:
        """The rendered field, and its compiled template when its plain-substitution path made it."""
        key = (html, strict, source)
        cache, lock = self._cache, self._lock
        lock.acquire()  # not `with`: this runs for every field of every email, and a with block costs more
        try:
            compiled = cache.get(key)
            if compiled is None:
                self._misses += 1
            else:
                cache.move_to_end(key)
                self._hits += 1
        finally:
            lock.release()
        if compiled is None:
            compiled = self._compile(key)
        constant = compiled.constant
        if constant is not None and len(constant) <= self.max_body:
            return constant, compiled
        simple = compiled.simple
        if simple is not None:
            rendered = simple.render(values, html=html, strict=strict, limit=self.max_body)
            if rendered is not None and len(rendered) <= self.max_body:
                return rendered, compiled
        template = compiled.liquid
        if template is None:  # two threads may both compile it: the same source gives the same template
            template = compiled.liquid = self._compile_liquid(source, html, strict)
        if isinstance(template, _Broken):
            error = InvalidContent if template.refused else RenderError
            raise error(reason=template.reason, **_where(sequence, step, field, template.line))
        liquid = _liquid()
        if not clock:
            clock.append(thread_time() + self.limits.time)
        try:
            return liquid.render(template, values, clock[0]), None
        except liquid.unknown_variable_error as exc:
            raise UnknownVariable(variable=exc.variable, **_where(sequence, step, field, _line(exc))) from None
        except liquid.output_limit_error:
            raise InvalidContent(
                reason=f"longer than {self.max_body} characters once rendered", **_where(sequence, step, field)
            ) from None
        except liquid.limit_error as exc:
            raise RenderLimitExceeded(
                limit=exc.limit, reason=_reason(exc), **_where(sequence, step, field, _line(exc))
            ) from None
        except liquid.loop_limit_error as exc:
            raise RenderLimitExceeded(
                limit="loop_iterations",
                reason=f"loop iteration limit reached: at most {self.limits.loop_iterations:,} iterations, "
                "nested loops multiplied",
                **_where(sequence, step, field, _line(exc)),
            ) from None
        except liquid.namespace_limit_error as exc:
            raise RenderLimitExceeded(
                limit="namespace",
                reason="assign and capture hold too much (about 8 bytes per character of max_body)",
                **_where(sequence, step, field, _line(exc)),
            ) from None
        except liquid.liquid_error as exc:
            raise RenderError(reason=_reason(exc), **_where(sequence, step, field, _line(exc))) from None
        except Exception as exc:  # untrusted template: report it as this message's error
            raise RenderError(reason=_reason(exc), **_where(sequence, step, field)) from exc


# --------------------------------------------------------------------------- is the link visible in the HTML?
#
# The footer is left out only when a reader can see the link and click it.
# Not shown: inside a comment (conditional comments included: Outlook only),
# in <head>, <script>, <style>, <template>, <title>, <noscript>, <textarea> and
# the like; in an element hidden by its style attribute (display:none,
# visibility:hidden, opacity:0, a zero height or width (not a zero font size:
# email builders such as MJML wrap every column in font-size:0 and set it back inside),
# mso-hide:all), its hidden attribute, or a class or id that a <style> rule
# hides (any such rule, media queries included); in an attribute other than
# an <a>'s href; in the text of a link that goes elsewhere; in an <a href>
# with nothing visible to click. An href counts when it is the link, or the
# link followed by "?", "&" or "#". Where the scan can't tell, it says "not
# shown", and the footer is added; the footer itself goes where it is seen
# (not into an element or comment left open at the end). A document with
# more than 2,000 comments, hidden elements and the like, or CSS hiding more
# than 64 classes and ids, is not followed: not shown, and the footer goes
# before </body> as usual.
#
# The scan looks for hidden constructs with str.find and literal-led regular
# expressions, so it costs per construct, not per tag (tens of microseconds
# for a 16 KB email). A plain {{ name }} template does not pay even that per
# email: its escaped outputs can't open a tag, a comment or a quote, so where
# each output lands is worked out once from the template (_HtmlLayout).

_HIDDEN_CONTENT = (
    "head", "script", "style", "template", "title", "noscript", "textarea", "iframe", "object",
    "select", "xmp", "noembed", "noframes", "plaintext",
)  # fmt: skip
_NAME_END = frozenset(" \t\n\r\f/>")
_SPECIAL = re.compile("<(!--|" + "|".join(_HIDDEN_CONTENT) + ")")
_ATTRIBUTE_END = _NAME_END | {"="}
# A CSS value that may hide, after a colon: the property before it is checked in _hiding_declarations.
_HIDING_VALUE = re.compile(r":\s*(?:none|hidden|collapse|all|0+(?:\.0*)?(?![\d.])|\.0+(?![\d.]))")
_HIDING_PROPERTY = re.compile(
    r"(?<![\w-])(display|visibility|mso-hide|opacity|(?:max-)?height|(?:max-)?width)\s*$"
)
_HIDING_VALUES = {
    "display": ("none",),
    "visibility": ("hidden", "collapse"),
    "mso-hide": ("all",),
}
_CSS_NAME = re.compile(r"([.#])(-?[_a-z][\w-]*)")
# A tag from its "<" to its ">" (or to the end: a browser drops a tag the document ends in),
# quoted attribute values skipped. The name is matched
# atomically ((?=(...))\2, as Python 3.10 has no (?>...)) and the rest is deterministic,
# so a match costs time linear in the tag even when it fails.
_TAG_AT = re.compile(
    r"<(/?)(?=([a-z][^\s/>\"']*))\2([^\"'>]*(?:(?:\"[^\"]*(?:\"|\Z)|'[^']*(?:'|\Z))[^\"'>]*)*)(?:>|\Z)"
)
_ATTRIBUTE = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}
)
_A_END = re.compile(r"</a[\s>]")
_BODY_START = re.compile(r"<body(?=[\s/>])[^>]*>")
_TAG_OR_TEXT = re.compile(r"<[^>]*>?|[^<]+")
_INVISIBLE_TEXT = re.compile(r"[\s\u200b-\u200d\u2060\ufeff]+")


def _lower(html: str) -> str:
    """``html`` in lower case, each character where it was.

    Only U+0130 (capital I with a dot) lowers to two characters; it becomes
    a dotless i first, which changes nothing the scan looks for (ASCII).
    """
    return html.lower() if html.isascii() else html.replace("\u0130", "\u0131").lower()


def _find_all(low: str, needle: str, start: int = 0, end: int | None = None) -> Iterator[int]:
    """Every position of ``needle`` in ``low[start:end]``, with str.find (far faster than a regex on CPython)."""
    end = len(low) if end is None else end
    at = low.find(needle, start, end)
    while at >= 0:
        yield at
        at = low.find(needle, at + 1, end)


def _starts_tag(low: str, at: int, name: str) -> bool:
    """Whether ``low[at:]`` opens a tag called ``name`` ("<name" then a space, "/" or ">")."""
    return low.startswith(name, at + 1) and low[at + 1 + len(name) : at + 2 + len(name)] in _NAME_END


class _Hidden:
    """The parts of an HTML document no reader sees: sorted, disjoint, half-open ranges.

    ``open_at_end`` says one of them was never closed (a comment, an element),
    so what is appended to the document falls inside it; ``styles`` are the
    ranges of the ``<style>`` elements' CSS; ``unsure`` says the document
    hides too much to follow (so many CSS rules hiding classes), and no link
    in it counts as shown.
    """

    def __init__(
        self, ranges: list[tuple[int, int]], *, open_at_end: bool, styles: list[tuple[int, int]], unsure: bool = False
    ) -> None:
        merged: list[tuple[int, int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        self.starts = [start for start, _ in merged]
        self.ranges = merged
        self.open_at_end = open_at_end
        self.styles = styles
        self.style_starts = [start for start, _ in styles]
        self.unsure = unsure

    def __contains__(self, position: object) -> bool:
        assert isinstance(position, int)
        i = bisect_right(self.starts, position) - 1
        return i >= 0 and position < self.ranges[i][1]

    def splits(self, position: int) -> bool:
        """Whether text inserted at ``position`` would land inside a hidden range (not at its start)."""
        i = bisect_right(self.starts, position - 1) - 1
        return i >= 0 and position < self.ranges[i][1]

    def in_style(self, position: int) -> bool:
        """Whether ``position`` is in the CSS of a ``<style>`` element."""
        i = bisect_right(self.style_starts, position) - 1
        return i >= 0 and position < self.styles[i][1]


_Attribute = tuple[str, int, int, bool]  # name, where its value starts and ends, whether it is quoted


class _Doc:
    """An HTML document (lower-cased, positions kept) and what the scan learns of it, each learnt once.

    Every question costs time linear in the document over all the questions
    asked, not per question: tags are parsed once (memo), a cursor finds the
    tag around positions given in increasing order without looking back
    further than its last position, and links are indexed once.
    """

    def __init__(self, html: str) -> None:
        self.html = html
        self.low = _lower(html)
        self._tags: dict[int, re.Match[str] | None] = {}  # the tag found walking back from a "<"
        self._attributes: dict[int, list[_Attribute]] = {}
        self._links: tuple[list[int], list[int]] | None = None
        self._hidden: _Hidden | None = None

    def tag_at(self, at: int) -> re.Match[str] | None:
        """The tag starting with the "<" at ``at`` (or, if that one is in a quoted value, an earlier one)."""
        if at in self._tags:
            return self._tags[at]
        low, tag, look = self.low, None, at
        for _ in range(3):  # a "<" in a quoted attribute value: look a little further back
            tag = _TAG_AT.match(low, look)
            if tag is not None:
                break
            look = low.rfind("<", 0, look)
            if look < 0:
                break
        self._tags[at] = tag
        return tag

    def cursor(self) -> Callable[[int], re.Match[str] | None]:
        """The tag a position is inside of (name or attributes), or None in text; positions in increasing order."""
        last, last_lt = 0, -1

        def around(position: int) -> re.Match[str] | None:
            nonlocal last, last_lt
            lt = self.low.rfind("<", last, position) if position >= last else self.low.rfind("<", 0, position)
            if lt < 0 and position >= last:
                lt = last_lt
            last, last_lt = position, lt
            if lt < 0:
                return None
            tag = self.tag_at(lt)
            return tag if tag is not None and tag.start() <= position < tag.end() else None

        return around

    def attributes(self, tag: re.Match[str]) -> list[_Attribute]:
        """The attributes of ``tag``: name, where the value is, whether it is quoted."""
        found = self._attributes.get(tag.start())
        if found is None:
            found = []
            base = tag.start(3)
            for attribute in _ATTRIBUTE.finditer(tag.group(3)):
                for group in (2, 3, 4):
                    if attribute.group(group) is not None:
                        value_start, value_end = base + attribute.start(group), base + attribute.end(group)
                        found.append((attribute.group(1), value_start, value_end, group != 4))
                        break
                else:
                    found.append((attribute.group(1), base + attribute.end(), base + attribute.end(), False))
            self._attributes[tag.start()] = found
        return found

    def attribute_at(self, tag: re.Match[str], position: int) -> _Attribute | None:
        """The attribute of ``tag`` whose value holds ``position``, if any."""
        for attribute in self.attributes(tag):
            if attribute[1] <= position < attribute[2]:
                return attribute
        return None

    def href(self, tag: re.Match[str]) -> tuple[int, int] | None:
        """Where the href value of ``tag`` is."""
        for name, start, end, _ in self.attributes(tag):
            if name == "href":
                return start, end
        return None

    def link_around(self, position: int) -> re.Match[str] | None:
        """The <a> start tag whose element text at ``position`` is in, if any."""
        if self._links is None:
            low = self.low
            starts = [at for at in _find_all(low, "<a") if _starts_tag(low, at, "a")]
            ends = [found.start() for found in _A_END.finditer(low)]
            self._links = starts, ends
        starts, ends = self._links
        i = bisect_right(starts, position) - 1
        if i < 0:
            return None
        start = starts[i]
        j = bisect_right(ends, start)
        if j < len(ends) and ends[j] < position:
            return None  # closed before position
        tag = self.tag_at(start)
        return tag if tag is not None and tag.start() == start and tag.end() <= position else None

    def link_end(self, tag: re.Match[str]) -> int:
        """Where the content of the <a> that ``tag`` opens ends."""
        self.link_around(tag.end())  # builds the index
        assert self._links is not None
        starts, ends = self._links
        j = bisect_right(ends, tag.end() - 1)
        k = bisect_right(starts, tag.start())
        candidates = [len(self.low)]
        if j < len(ends):
            candidates.append(ends[j])
        if k < len(starts):
            candidates.append(starts[k])  # a new <a> closes the open one
        return min(candidates)

    def clickable(self, tag: re.Match[str], ignore: str = "") -> bool:
        """Whether the <a> that ``tag`` opens shows something to click (text or an image), ``ignore`` aside."""
        low, hidden = self.low, self.hidden()
        for piece in _TAG_OR_TEXT.finditer(low, tag.end(), self.link_end(tag)):
            if piece.start() in hidden:
                continue
            text = piece.group()
            if text.startswith("<"):
                if _starts_tag(low, piece.start(), "img"):
                    return True
            elif _INVISIBLE_TEXT.sub("", unescape(text.replace(ignore, "") if ignore else text)):
                return True
        return False

    def hidden(self) -> _Hidden:
        """The parts of the document no reader sees (see the notes above)."""
        if self._hidden is None:
            self._hidden = _hidden_parts(self)
        return self._hidden


def _element_end(low: str, tag: re.Match[str], skip: _Hidden) -> int | None:
    """Where the element ``tag`` opens ends (after its matching end tag), or None if it never does."""
    name = tag.group(2)
    if name in _VOID:
        return tag.end()
    depth = 1
    at = tag.end()
    while True:
        at = low.find("<", at)
        if at < 0:
            return None
        closing = low.startswith("/", at + 1)
        if _starts_tag(low, at + closing, name) and at not in skip:
            depth += -1 if closing else 1
            if depth == 0:
                close = low.find(">", at)
                return None if close < 0 else close + 1
        at += 1


def _special_starts(low: str) -> Iterator[tuple[int, str]]:
    """Where comments and the elements whose content is never shown may start, in document order."""
    for found in _SPECIAL.finditer(low):
        name = found.group(1)
        if name == "!--" or low[found.end() : found.end() + 1] in _NAME_END:
            yield found.start(), name


def _hiding_declarations(low: str, start: int = 0, end: int | None = None) -> Iterator[int]:
    """Where a CSS declaration that hides (display:none, opacity:0...) starts in ``low[start:end]``."""
    for value in _HIDING_VALUE.finditer(low, start, len(low) if end is None else end):
        before = _HIDING_PROPERTY.search(low, max(start, value.start() - 24), value.start())
        if before is None:
            continue
        word = value.group()[1:].strip()
        allowed = _HIDING_VALUES.get(before.group(1))
        if (word[0] in "0." and allowed is None) or (allowed is not None and word in allowed):
            yield before.start(1)


# Past this many CSS names hidden, or this many comments, hidden elements and the like, the scan gives
# up (it stays linear, but each costs microseconds of Python): no link counts as shown, and the footer
# is added before </body> as usual.
_MAX_HIDDEN_NAMES = 64
_MAX_CONSTRUCTS = 2_000


def _hidden_parts(doc: _Doc) -> _Hidden:
    """The parts of a document no reader sees (see the notes above)."""
    low = doc.low
    ranges: list[tuple[int, int]] = []
    styles: list[tuple[int, int]] = []
    open_at_end = seen_head = False
    at = 0
    for count, (start, name) in enumerate(_special_starts(low)):  # comments and the like, in order
        if count > _MAX_CONSTRUCTS:
            return _Hidden(ranges, open_at_end=True, styles=styles, unsure=True)
        if start < at:
            continue  # inside the last one
        if name == "!--":  # <!-- ... -->, or <!--> and <!---> (empty)
            if low.startswith(">", start + 4):
                end = start + 5
            elif low.startswith("->", start + 4):
                end = start + 6
            else:
                close = low.find("-->", start + 4)
                end = len(low) if close < 0 else close + 3
                open_at_end = open_at_end or close < 0
            ranges.append((start, end))
            at = end
            continue
        open_end = low.find(">", start)
        open_end = len(low) if open_end < 0 else open_end + 1
        if name == "head":  # ends at </head> or <body>; what is inside is scanned too (its <style>)
            if not seen_head:  # a second <head> is ignored, as browsers do
                seen_head = True
                ends = [i for i in (low.find("</head", open_end), low.find("<body", open_end)) if i >= 0]
                ranges.append((start, min(ends) if ends else len(low)))
                open_at_end = open_at_end or not ends
            at = open_end
            continue
        close = low.find("</" + name, open_end) if name != "plaintext" else -1
        gt = low.find(">", close) if close >= 0 else -1
        end = len(low) if gt < 0 else gt + 1
        open_at_end = open_at_end or gt < 0
        if name == "style":
            styles.append((open_end, len(low) if close < 0 else close))
        ranges.append((start, end))
        at = end
    skip = _Hidden(ranges, open_at_end=open_at_end, styles=styles)

    hiding: set[int] = set()  # start tags of elements hidden by their own attributes
    looked_at = 0

    def hide_elements(positions: Iterator[int], attribute_name: str, *, in_value: bool) -> bool:
        """Add the elements hidden by ``attribute_name`` at ``positions``; False past _MAX_CONSTRUCTS."""
        nonlocal looked_at
        around = doc.cursor()  # positions come in increasing order
        for position in positions:
            looked_at += 1
            if looked_at > _MAX_CONSTRUCTS:
                return False
            if position in skip:
                continue
            tag = around(position)
            if tag is None or tag.group(1) or tag.start() in skip:
                continue
            for name, value_start, value_end, _ in doc.attributes(tag):
                if name == attribute_name and (value_start <= position < value_end or not in_value):
                    hiding.add(tag.start())
                    break
        return True

    hidden_names: set[str] = set()
    braces = 0
    for start, end in styles:  # rules that hide: their selectors' classes and ids
        boundary, opened, selector_start = start, -1, start
        for brace in re.finditer(r"[{}]", low[start:end]):
            braces += 1
            if braces > 2 * _MAX_CONSTRUCTS or len(hidden_names) > _MAX_HIDDEN_NAMES:
                return _Hidden(ranges, open_at_end=True, styles=styles, unsure=True)
            position = start + brace.start()
            if brace.group() == "{":
                selector_start, opened = boundary, position
            elif opened >= 0:  # an innermost rule: selector { declarations }
                if next(_hiding_declarations(low, opened + 1, position), None) is not None:
                    hidden_names.update(kind + name for kind, name in _CSS_NAME.findall(low, selector_start, opened))
                opened = -1
            boundary = position + 1
    hidden_attributes = (
        i for i in _find_all(low, "hidden") if low[i - 1 : i].isspace() and low[i + 6 : i + 7] in _ATTRIBUTE_END
    )
    followed = (
        len(hidden_names) <= _MAX_HIDDEN_NAMES
        and hide_elements(_hiding_declarations(low), "style", in_value=True)
        and hide_elements(hidden_attributes, "hidden", in_value=False)
        and all(
            hide_elements(
                (i for i in _find_all(low, name[1:]) if _is_word(low, i, len(name) - 1)),
                "class" if name[0] == "." else "id",
                in_value=True,
            )
            for name in sorted(hidden_names)
        )
    )
    if not followed:
        return _Hidden(ranges, open_at_end=True, styles=styles, unsure=True)
    covered = -1
    for tag_start in sorted(hiding):
        if tag_start < covered:
            continue  # inside a hidden element already: its own end needn't be looked for
        tag = doc.tag_at(tag_start)
        assert tag is not None
        element_end = _element_end(low, tag, skip)
        covered = len(low) if element_end is None else element_end
        ranges.append((tag_start, covered))
        open_at_end = open_at_end or element_end is None
    return _Hidden(ranges, open_at_end=open_at_end, styles=styles)


def _is_word(low: str, at: int, length: int) -> bool:
    """Whether ``low[at:at + length]`` is a whole CSS name (no name character just before or after)."""
    before, after = low[at - 1 : at] if at else "", low[at + length : at + length + 1]
    return not (before.isalnum() or before in ("-", "_")) and not (after.isalnum() or after in ("-", "_"))


def _is_the_link(target: str, url: str) -> bool:
    """Whether an href to ``target`` (its value read, entities decoded) goes to ``url``."""
    target = target.strip()
    return target == url or (target.startswith(url) and target[len(url) : len(url) + 1] in ("?", "&", "#"))


# Past this many occurrences of the link, none of them shown, the scan stops: not shown.
_MAX_LINKS_LOOKED_AT = 64


def _shows_link(html: str, url: str) -> bool:
    """Whether a reader of ``html`` can see ``url`` and click it (see the notes above)."""
    escaped = str(escape(url))
    if url not in html and escaped not in html:
        return False
    doc = _Doc(html)
    hidden = doc.hidden()
    if hidden.unsure:
        return False
    positions = heapq.merge(*(_find_all(html, form) for form in {url, escaped}))
    around = doc.cursor()
    for position in itertools.islice(positions, _MAX_LINKS_LOOKED_AT):
        if position in hidden:
            continue
        tag = around(position)
        if tag is None:  # in text: shown, unless inside a link that goes elsewhere (or nowhere)
            tag = doc.link_around(position)
            if tag is None:
                return True
        elif tag.group(2) != "a" or tag.group(1):
            continue  # in some other tag's attribute
        href = doc.href(tag)
        if href is not None and _is_the_link(unescape(html[href[0] : href[1]]), url) and doc.clickable(tag):
            return True
    return False


def _footer_position(html: str) -> int:
    """Where the footer goes: before the last </body> or at the end, unless that is inside something
    hidden left open (an element, a comment): then just after <body>, or at the very start."""
    ends = list(_BODY_END.finditer(html))
    at = ends[-1].start() if ends else len(html)
    low = _lower(html)
    if _SPECIAL.search(low) is None and "hidden" not in low and next(_hiding_declarations(low), None) is None:
        return at  # nothing that hides: no scan
    hidden = _Doc(html).hidden()
    if hidden.unsure:
        return at  # the scan gave up: the footer goes where it usually goes (it is added, whatever)
    if hidden.splits(at) if at < len(html) else hidden.open_at_end:
        body = _BODY_START.search(low)
        at = body.end() if body is not None and not hidden.splits(body.end()) else 0
    return at


def _insert_html_footer(html: str, footer: str, at: int | None = None) -> str:
    """``html`` with ``footer`` at ``at``, by default where :func:`_footer_position` says."""
    if at is None:
        at = _footer_position(html)
    return html[:at] + footer + html[at:]


# What a plain template's output shows, per output, worked out once from the template.
_SHOWN, _LINKED, _UNSEEN, _ASK = range(4)
# A plain template with more outputs than this is scanned per email instead (its layout is not worth it).
_MAX_LAID_OUT = 1_000


@attrs.frozen
class _HtmlLayout:
    """Where the outputs of a simple HTML template land, from the template alone.

    Each ``{{ name }}`` lands somewhere: ``_SHOWN`` (visible text, not inside
    a link), ``_LINKED`` (the whole href of a visible <a> with something to
    click), ``_UNSEEN`` (hidden, in another attribute, or in a link to a
    fixed address), ``_ASK`` (scan the output). ``names`` maps each name to
    how many outputs print it and the set of places they land (a value is
    the same wherever it is printed). It is None when an output can change
    what is hidden (it lands in a style, class, id or unquoted attribute, or
    in CSS), or when there are too many outputs: every output is then
    scanned. ``footer`` is where the footer goes: 0 before </body> or at the
    end, 1 just after <body>, 2 at the very start.
    """

    names: tuple[tuple[str, int, frozenset[int]], ...] | None
    footer: int

    @classmethod
    def of(cls, simple: _Simple) -> _HtmlLayout:
        """Work the layout out by scanning the template with a marker in place of each output."""
        marker = "\ue000"  # private use: no tag, quote, entity or CSS in it
        parts = simple.parts
        skeleton = marker.join(parts[::2])
        # Outputs can't open or close anything, so the footer's place is the template's.
        at = _footer_position(skeleton)
        ends = list(_BODY_END.finditer(skeleton))
        footer = 0 if at == (ends[-1].start() if ends else len(skeleton)) else 1 if at > 0 else 2
        if len(parts) // 2 > _MAX_LAID_OUT or any(marker in part for part in parts[::2]):
            return cls(names=None, footer=footer)
        doc = _Doc(skeleton)
        hidden, low, around = doc.hidden(), doc.low, doc.cursor()
        outputs: list[int] = []
        for position in _find_all(skeleton, marker):
            if hidden.in_style(position) or hidden.unsure:
                return cls(names=None, footer=footer)
            tag = around(position)
            if tag is not None:
                attribute = doc.attribute_at(tag, position)
                if attribute is None or not attribute[3] or attribute[0] in ("style", "class", "id"):
                    return cls(names=None, footer=footer)
                if position in hidden or tag.group(2) != "a" or tag.group(1) or attribute[0] != "href":
                    outputs.append(_UNSEEN)
                elif skeleton[attribute[1] : attribute[2]].strip() == marker and doc.clickable(tag, marker):
                    outputs.append(_LINKED)
                else:
                    outputs.append(_ASK)
                continue
            if position in hidden:
                outputs.append(_UNSEEN)
                continue
            link = doc.link_around(position)
            href = None if link is None else doc.href(link)
            if link is None:
                outputs.append(_SHOWN)
            elif href is not None and marker in low[href[0] : href[1]]:
                outputs.append(_ASK)  # the link's address is an output too
            else:
                outputs.append(_UNSEEN)
        names: dict[str, tuple[int, set[int]]] = {}
        for name, where in zip(parts[1::2], outputs, strict=True):
            count, places = names.setdefault(name, (0, set()))
            names[name] = (count + 1, places | {where})
        return cls(
            names=tuple((name, count, frozenset(places)) for name, (count, places) in names.items()), footer=footer
        )

    def shows(self, simple: _Simple, values: Mapping[str, Any], html: str, url: str) -> bool | None:
        """Whether ``html`` (rendered from ``simple`` with ``values``) shows ``url``; None when a scan must say."""
        names = self.names
        if names is None:
            return None
        found, ask = 0, False
        for name, count, places in names:
            # An escaped value holds escape(url) exactly where the value holds url.
            value = values.get(name)
            if value.__class__ is not str or url not in value:
                continue
            found += value.count(url) * count
            if _SHOWN in places:
                return True
            if _LINKED in places and _is_the_link(value, url):  # the href is the escaped value: read, it is value
                return True
            ask = ask or _ASK in places
        if ask:
            return None
        # Shown by no output: still shown if the template's own text holds it (then the scan says where).
        escaped = str(escape(url))
        total = html.count(escaped) if escaped == url else html.count(escaped) + html.count(url)
        return None if found < total else False

    def footer_position(self, html: str) -> int:
        """Where the footer goes in an output of the template."""
        if self.footer == 2:
            return 0
        if self.footer == 1:
            body = _BODY_START.search(_lower(html))
            return 0 if body is None else body.end()
        ends = list(_BODY_END.finditer(html))
        return ends[-1].start() if ends else len(html)


SimpleRenderer = LiquidRenderer
"""The engine's historical name for the default renderer; now :class:`LiquidRenderer`."""
