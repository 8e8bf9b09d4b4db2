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
    :func:`unsubscribe_link`). A body whose output does not contain the link
    gets a footer with it (an HTML and a text variant, both configurable):
    the link is always included. Every rendering also carries the
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

import re
import sys
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn
from urllib.parse import quote

import attrs
from markupsafe import escape

from .errors import DripcoreError
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
        raise ValueError(f"unsubscribe pattern {pattern!r}: use only the fields {', '.join(fields)} ({exc})") from None

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
    """

    def __init__(self) -> None:
        from liquid import Environment
        from liquid.exceptions import LiquidError, OutputStreamLimitError, UndefinedError
        from liquid.undefined import Undefined

        class UnknownVariableError(UndefinedError):
            def __init__(self, variable: str, token: Any) -> None:
                super().__init__(f"unknown variable {variable!r}", token=token)
                self.variable = variable

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

        def environment(*, html: bool, strict: bool, max_chars: int) -> Environment:
            class Limited(Environment):
                # Bounds for a runaway template: every loop's iterations multiplied,
                # the output in UTF-8 bytes, and what assign/capture may hold.
                loop_iteration_limit: ClassVar[int | None] = 100_000
                output_stream_limit: ClassVar[int | None] = 4 * max_chars
                local_namespace_limit: ClassVar[int | None] = 8 * max_chars

            return Limited(autoescape=html, undefined=OutputStrictUndefined if strict else Undefined)

        self.environment = environment
        self.liquid_error = LiquidError
        self.output_limit_error = OutputStreamLimitError
        self.unknown_variable_error = UnknownVariableError


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
    """A template that failed to compile, cached so it is not parsed again."""

    reason: str
    line: int | None


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

    def render(self, values: Mapping[str, Any], *, html: bool, strict: bool) -> str | None:
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
        for i in range(1, len(parts), 2):
            text = _printed(get(parts[i], _MISSING), html, strict)
            if text is None:
                return None
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
    """A cached template: its substitution fast path, if it has one, and its Liquid compilation once made."""

    __slots__ = ("constant", "liquid", "simple")

    def __init__(self, simple: _Simple | None, liquid: BoundTemplate | _Broken | None) -> None:
        self.simple = simple
        # The output of a template with no output at all (a plain "Hello"), the same for every email.
        self.constant = simple.parts[0] if simple is not None and len(simple.parts) == 1 else None
        # None until needed: a simple template only needs Liquid for a value it can't print.
        self.liquid = liquid


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
    ``{{ unsubscribe_url }}``. ``cache_size`` bounds the compiled-template
    cache; ``max_body`` bounds every body, before and after rendering, in characters.

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
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size={cache_size!r}: must be at least 1")
        if max_body < 1:
            raise ValueError(f"max_body={max_body!r}: must be at least 1")
        self._unsubscribe_url: UnsubscribeUrl = (
            unsubscribe_link(unsubscribe_url) if isinstance(unsubscribe_url, str) else unsubscribe_url
        )
        self.templates = templates
        self.cache_size = cache_size
        self.max_body = max_body
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
                raise ValueError(f"{name}: {_reason(exc)}") from None
            self._footers[html] = template
        if (str(escape(probe["unsubscribe_url"])) if html else probe["unsubscribe_url"]) not in shown:
            raise ValueError(f"{name} must show {{{{ unsubscribe_url }}}}: {source!r}")
        return simple

    def _environment(self, html: bool, strict: bool) -> Environment:
        env = self._envs.get((html, strict))
        if env is None:
            made = _liquid().environment(html=html, strict=strict, max_chars=self._max_chars)
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
        env = self._environment(html, strict)
        try:
            return env.from_string(source)
        except _liquid().liquid_error as exc:
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

        subject = _one_line(self._render("subject", subject_source, values, False, strict, step, sequence))
        if len(subject) > MAX_SUBJECT:
            raise InvalidContent(
                reason=f"longer than {MAX_SUBJECT} characters once rendered", **_where(sequence, step, "subject")
            )
        html = text = None
        if html_source is not None:
            html = self._render("html", html_source, values, True, strict, step, sequence)
            if url not in html and str(escape(url)) not in html:
                html = _insert_html_footer(html, self._render_footer(values, True))
            if len(html) > self.max_body or not html.isascii():  # else _check_output has nothing to find
                self._check_output("html", html, step, sequence)
        if text_source is not None:
            text = self._render("text", text_source, values, False, strict, step, sequence)
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
        try:
            url = self._unsubscribe_url(contact, enrollment)
        except DripcoreError:
            raise
        except Exception as exc:
            raise RenderError(
                reason=f"the unsubscribe_url callable failed: {_reason(exc)}", **_where(sequence, step)
            ) from exc
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
    ) -> str:
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
            return constant
        simple = compiled.simple
        if simple is not None:
            rendered = simple.render(values, html=html, strict=strict)
            if rendered is not None and len(rendered) <= self.max_body:
                return rendered
        template = compiled.liquid
        if template is None:  # two threads may both compile it: the same source gives the same template
            template = compiled.liquid = self._compile_liquid(source, html, strict)
        if isinstance(template, _Broken):
            raise RenderError(reason=template.reason, **_where(sequence, step, field, template.line))
        liquid = _liquid()
        try:
            return template.render(values)
        except liquid.unknown_variable_error as exc:
            raise UnknownVariable(variable=exc.variable, **_where(sequence, step, field, _line(exc))) from None
        except liquid.output_limit_error:
            raise InvalidContent(
                reason=f"longer than {self.max_body} characters once rendered", **_where(sequence, step, field)
            ) from None
        except liquid.liquid_error as exc:
            raise RenderError(reason=_reason(exc), **_where(sequence, step, field, _line(exc))) from None
        except Exception as exc:  # untrusted template: report it as this message's error
            raise RenderError(reason=_reason(exc), **_where(sequence, step, field)) from exc


def _insert_html_footer(html: str, footer: str) -> str:
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return html + footer
    at = ends[-1].start()
    return html[:at] + footer + html[at:]


SimpleRenderer = LiquidRenderer
"""The engine's historical name for the default renderer; now :class:`LiquidRenderer`."""
