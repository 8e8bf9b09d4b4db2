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
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote

import attrs
from liquid import BoundTemplate, Environment
from liquid.exceptions import LiquidError, OutputStreamLimitError, UndefinedError
from liquid.undefined import Undefined
from markupsafe import escape

from .errors import DripcoreError
from .model import Contact, Enrollment, Sequence, Step, UnknownVariables
from .ports import Rendered, Renderer

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
    values: dict[str, Any] = {}
    values.update(contact.metadata)
    values.update(enrollment.variables)
    values.update(
        {
            "email": contact.email,
            "firstName": contact.first_name,
            "FirstName": contact.first_name,
            "first_name": contact.first_name,
            "lastName": contact.last_name,
            "LastName": contact.last_name,
            "last_name": contact.last_name,
        }
    )
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
    return text if _URL_SAFE.fullmatch(text) else quote(text, safe="")


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


# --------------------------------------------------------------------------- the Liquid engine


class _UnknownVariableError(UndefinedError):
    def __init__(self, variable: str, token: Any) -> None:
        super().__init__(f"unknown variable {variable!r}", token=token)
        self.variable = variable


class _OutputStrictUndefined(Undefined):
    """Undefined that may be tested (``if``, ``default``) but not output, filtered or looped over."""

    __slots__ = ()
    force_liquid_default = True

    def _fail(self) -> NoReturn:
        # Liquid names the whole missing path ("address.zip") only in its hint.
        hint, suffix = self.hint or "", " is undefined"
        variable = hint[: -len(suffix)].strip("'") if hint.endswith(suffix) else self.name
        raise _UnknownVariableError(variable, self.token)

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


def _environment(*, html: bool, strict: bool, max_chars: int) -> Environment:
    class _Limited(Environment):
        # Bounds for a runaway template: every loop's iterations multiplied,
        # the output in UTF-8 bytes, and what assign/capture may hold.
        loop_iteration_limit: ClassVar[int | None] = 100_000
        output_stream_limit: ClassVar[int | None] = 4 * max_chars
        local_namespace_limit: ClassVar[int | None] = 8 * max_chars

    return _Limited(autoescape=html, undefined=_OutputStrictUndefined if strict else Undefined)


@attrs.frozen
class _Broken:
    """A template that failed to compile, cached so it is not parsed again."""

    reason: str
    line: int | None


_SIMPLE_OUTPUT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_MARKUP = re.compile(r"\{[{%#]|[}%]\}")
_MISSING = object()


@attrs.frozen
class _Simple:
    """A template made only of text and plain ``{{ name }}`` outputs.

    Most drip emails look like this, and rendering them by substitution is an
    order of magnitude cheaper than a Liquid render. The result is the same as
    Liquid's for string, integer and missing values (checked by a property
    test); anything else (a list, a float, a strict-mode miss, which must name
    its line) falls back to Liquid.
    """

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, source: str) -> _Simple | None:
        parts = _SIMPLE_OUTPUT.split(source)
        if any(_MARKUP.search(parts[i]) for i in range(0, len(parts), 2)):
            return None  # tags, filters, whitespace control, comments: Liquid's job
        return cls(tuple(parts))

    def render(self, values: Mapping[str, Any], *, html: bool, strict: bool) -> str | None:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = []
        for i, part in enumerate(parts):
            if not i % 2:
                out.append(part)
                continue
            value = values.get(part, _MISSING)
            if value.__class__ is str:
                text = value
            elif value.__class__ is int:
                text = str(value)
            elif value is None or (value is _MISSING and not strict):
                text = ""
            else:
                return None
            out.append(str(escape(text)) if html else text)
        return "".join(out)


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
    if isinstance(exc, LiquidError):
        return str(exc.message)
    return f"{type(exc).__name__}: {exc}"


def _one_line(text: str) -> str:
    return " ".join(_SUBJECT_CONTROL.sub("", text).split())


@attrs.frozen
class _Where:
    sequence_id: str
    position: int
    template_id: str | None

    def kw(self, field: str | None = None, line: int | None = None) -> dict[str, Any]:
        return {
            "sequence_id": self.sequence_id,
            "position": self.position,
            "template_id": self.template_id,
            "field": field,
            "line": line,
        }


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
        self._envs = {
            (html, strict): _environment(html=html, strict=strict, max_chars=max_body)
            for html in (False, True)
            for strict in (False, True)
        }
        self._cache: OrderedDict[tuple[bool, bool, str], tuple[BoundTemplate | _Broken, _Simple | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._checked: set[object] = set()  # sources already found clean: checked once, not per email
        self._hits = 0
        self._misses = 0
        self._footer_html = self._footer(footer_html, html=True)
        self._footer_text = self._footer(footer_text, html=False)
        self._simple_footer_html = _Simple.parse(footer_html)
        self._simple_footer_text = _Simple.parse(footer_text)

    def _footer(self, source: str, *, html: bool) -> BoundTemplate:
        probe = "https://probe.invalid/?a=1&b=2"
        try:
            template = self._envs[html, False].from_string(source)
            shown = template.render({"unsubscribe_url": probe})
        except LiquidError as exc:
            raise ValueError(f"footer_{'html' if html else 'text'}: {_reason(exc)}") from None
        if (str(escape(probe)) if html else probe) not in shown:
            raise ValueError(f"footer_{'html' if html else 'text'} must show {{{{ unsubscribe_url }}}}: {source!r}")
        return template

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

    def _compile(self, source: str, *, html: bool, strict: bool) -> tuple[BoundTemplate | _Broken, _Simple | None]:
        key = (html, strict, source)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                return found
            self._misses += 1
        template: BoundTemplate | _Broken
        try:
            template = self._envs[html, strict].from_string(source)
        except LiquidError as exc:
            template = _Broken(_reason(exc), _line(exc))
        except Exception as exc:  # the template is untrusted input: report, never crash the tick
            template = _Broken(_reason(exc), None)
        compiled = (template, None if isinstance(template, _Broken) else _Simple.parse(source))
        with self._lock:
            self._cache[key] = compiled
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    # -- rendering

    def render(self, step: Step, *, sequence: Sequence, contact: Contact, enrollment: Enrollment) -> Rendered:
        """Render ``step`` for ``contact``; raises a :class:`RenderError` naming what went wrong."""
        where = _Where(sequence.id, step.position, step.template_id)
        subject_source, html_source, text_source = self._sources(step, where)
        url = self._unsubscribe(contact, enrollment, where)
        values = template_variables(contact, enrollment)
        values["unsubscribe_url"] = url
        strict = sequence.unknown_variables is UnknownVariables.ERROR

        subject = _one_line(self._render("subject", subject_source, values, html=False, strict=strict, where=where))
        if len(subject) > MAX_SUBJECT:
            raise InvalidContent(reason=f"longer than {MAX_SUBJECT} characters once rendered", **where.kw("subject"))
        html = text = None
        if html_source is not None:
            html = self._render("html", html_source, values, html=True, strict=strict, where=where)
            if url not in html and str(escape(url)) not in html:
                html = _insert_html_footer(html, self._render_footer(values, html=True))
            self._check_output("html", html, where)
        if text_source is not None:
            text = self._render("text", text_source, values, html=False, strict=strict, where=where)
            if url not in text:
                footer = self._render_footer(values, html=False)
                text = f"{text.rstrip()}\n\n{footer}\n" if text.strip() else f"{footer}\n"
            self._check_output("text", text, where)
        headers = {"List-Unsubscribe": f"<{url}>"}
        if url[:6].lower() == "https:":
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return Rendered(subject=subject, html=html, text=text, headers=headers)

    def _render_footer(self, values: Mapping[str, Any], *, html: bool) -> str:
        simple = self._simple_footer_html if html else self._simple_footer_text
        if simple is not None:
            rendered = simple.render(values, html=html, strict=False)
            if rendered is not None:
                return rendered
        return (self._footer_html if html else self._footer_text).render(values)

    def _sources(self, step: Step, where: _Where) -> tuple[str, str | None, str | None]:
        subject, html, text = step.subject, step.html, step.text
        if step.template_id is not None:
            if self.templates is None:
                raise TemplateNotFound(reason="this renderer has no template store", **where.kw("template_id"))
            stored = self.templates.get(step.template_id)
            if stored is None:
                raise TemplateNotFound(reason="no such template in the template store", **where.kw("template_id"))
            subject = subject if subject is not None else stored.subject
            html = html if html is not None else stored.html
            text = text if text is not None else stored.text
        if subject is None:
            raise RenderError(reason="no subject: the step and its template set none", **where.kw("subject"))
        if html is None and text is None:
            raise RenderError(reason="no body: the step and its template set neither html nor text", **where.kw())
        for field, value in (("subject", subject), ("html", html), ("text", text)):
            if value is not None and value not in self._checked:
                self._check_source(field, value, where)
                if len(self._checked) < self.cache_size:
                    self._checked.add(value)
        return subject, html, text

    def _check_source(self, field: str, value: object, where: _Where) -> None:
        if not isinstance(value, str):
            raise InvalidContent(reason=f"must be text, not {type(value).__name__}", **where.kw(field))
        if len(value) > self.max_body:
            raise InvalidContent(reason=f"longer than {self.max_body} characters", **where.kw(field))
        binary = _BINARY.search(value)
        if binary is not None:
            raise InvalidContent(
                reason=f"binary content: control character {binary.group()!r} at offset {binary.start()}",
                **where.kw(field, value.count("\n", 0, binary.start()) + 1),
            )

    def _check_output(self, field: str, value: str, where: _Where) -> None:
        if len(value) > self.max_body:
            raise InvalidContent(reason=f"longer than {self.max_body} characters once rendered", **where.kw(field))
        if _SURROGATE.search(value) is not None:
            raise InvalidContent(reason="a variable holds text that is not valid Unicode", **where.kw(field))

    def _unsubscribe(self, contact: Contact, enrollment: Enrollment, where: _Where) -> str:
        try:
            url = self._unsubscribe_url(contact, enrollment)
        except DripcoreError:
            raise
        except Exception as exc:
            raise RenderError(reason=f"the unsubscribe_url callable failed: {_reason(exc)}", **where.kw()) from exc
        problem = None
        if not isinstance(url, str) or not url:
            problem = "must be a non-empty string"
        elif _BAD_URL_CHARACTER.search(url):
            problem = "must not contain whitespace, quotes, angle brackets or control characters"
        elif url.partition(":")[0].lower() not in _URL_SCHEMES:
            problem = "must be an https, http or mailto URL"
        if problem is not None:
            raise RenderError(reason=f"unsubscribe_url {url!r} {problem}", **where.kw("unsubscribe_url"))
        return url

    def _render(
        self, field: str, source: str, values: Mapping[str, Any], *, html: bool, strict: bool, where: _Where
    ) -> str:
        compiled, simple = self._compile(source, html=html, strict=strict)
        if isinstance(compiled, _Broken):
            raise RenderError(reason=compiled.reason, **where.kw(field, compiled.line))
        if simple is not None:
            rendered = simple.render(values, html=html, strict=strict)
            if rendered is not None and len(rendered) <= self.max_body:
                return rendered
        try:
            return compiled.render(values)
        except _UnknownVariableError as exc:
            raise UnknownVariable(variable=exc.variable, **where.kw(field, _line(exc))) from None
        except OutputStreamLimitError:
            raise InvalidContent(
                reason=f"longer than {self.max_body} characters once rendered", **where.kw(field)
            ) from None
        except LiquidError as exc:
            raise RenderError(reason=_reason(exc), **where.kw(field, _line(exc))) from None
        except Exception as exc:  # untrusted template: report it as this message's error
            raise RenderError(reason=_reason(exc), **where.kw(field)) from exc


def _insert_html_footer(html: str, footer: str) -> str:
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return html + footer
    at = ends[-1].start()
    return html[:at] + footer + html[at:]


SimpleRenderer = LiquidRenderer
"""The engine's historical name for the default renderer; now :class:`LiquidRenderer`."""
