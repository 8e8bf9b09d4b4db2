"""LiquidRenderer: one step rendered for one contact, through the template cache, with its unsubscribe link."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs
from markupsafe import escape

from .._checks import check_count
from ..errors import (
    InvalidArgument,
    InvalidContent,
    RenderError,
    RenderLimitExceeded,
    TemplateNotFound,
    UnknownVariable,
)
from ..model import Contact, Enrollment, Sequence, Step, UnknownVariables
from ..ports import Rendered, Renderer, TemplateStore
from .fast import SimpleTemplate
from .limits import RenderLimits
from .links import UnsubscribeUrl, placeholder_unsubscribe_url, unsubscribe_link, unsubscribe_url_problem
from .liquid import deadline_after, error_line, error_reason, load_liquid
from .markup import markup_problem
from .visibility import HtmlLayout, insert_html_footer, shows_link

if TYPE_CHECKING:  # python-liquid is imported on first need, see dripcore.render.liquid
    from liquid import BoundTemplate, Environment

__all__ = [
    "DEFAULT_FOOTER_HTML",
    "DEFAULT_FOOTER_TEXT",
    "MAX_SUBJECT",
    "CacheInfo",
    "LiquidRenderer",
    "SimpleRenderer",
    "template_variables",
]

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


class _Compiled:
    """A cached template: its substitution fast path, if it has one, and its Liquid compilation once made.

    ``layout`` is where a simple HTML template's outputs land, worked out on first need.
    """

    __slots__ = ("constant", "layout", "liquid", "simple")

    def __init__(self, simple: SimpleTemplate | None, liquid: BoundTemplate | _Broken | None) -> None:
        self.simple = simple
        # The output of a template with no output at all (a plain "Hello"), the same for every email.
        self.constant = simple.parts[0] if simple is not None and len(simple.parts) == 1 else None
        # None until needed: a simple template only needs Liquid for a value it can't print.
        self.liquid = liquid
        self.layout: HtmlLayout | None = None


@attrs.frozen
class CacheInfo:
    """Compiled-template cache figures: ``misses`` counts compilations."""

    hits: int
    """Renders that found their compiled template in the cache."""
    misses: int
    """Templates compiled (not found in the cache)."""
    maxsize: int
    """How many compiled templates the cache holds at most (the renderer's ``cache_size``)."""
    currsize: int
    """How many it holds now."""


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
        limits: RenderLimits = RenderLimits(),  # noqa: B008 - frozen: one shared default is safe
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

    def _check_footer(self, html: bool) -> SimpleTemplate | None:
        """Refuse a footer that does not compile or does not show the link; its fast path, if it has one."""
        source, name = self._footer_sources[html], f"footer_{'html' if html else 'text'}"
        probe = {"unsubscribe_url": "https://probe.invalid/?a=1&b=2"}
        simple = SimpleTemplate.parse(source) if isinstance(source, str) else None
        shown = None if simple is None else simple.render(probe, html=html, strict=False)
        if shown is None or len(shown) > self._max_chars or _SURROGATE.search(shown):
            # Liquid's answer is different: over its output limit, or unable to encode the output.
            liquid = load_liquid()
            try:
                template = self._environment(html, False).from_string(source)
                shown = template.render(probe)
            except liquid.liquid_error as exc:
                raise InvalidArgument(name, source, error_reason(exc)) from None
            self._footers[html] = template
        if (str(escape(probe["unsubscribe_url"])) if html else probe["unsubscribe_url"]) not in shown:
            raise InvalidArgument(name, source, "must show {{ unsubscribe_url }}")
        if html and not shows_link(shown, probe["unsubscribe_url"]):
            raise InvalidArgument(name, source, "must show {{ unsubscribe_url }} where a reader can see and click it")
        return simple

    def _environment(self, html: bool, strict: bool) -> Environment:
        env = self._envs.get((html, strict))
        if env is None:
            made = load_liquid().environment(html=html, strict=strict, max_chars=self._max_chars, limits=self.limits)
            with self._lock:
                env = self._envs.setdefault((html, strict), made)
        return env

    # -- cache

    @property
    def uses_placeholder_unsubscribe_url(self) -> bool:
        """Whether links go to the placeholder ``https://unsubscribe.invalid/...`` (no
        ``unsubscribe_url`` was given): a :class:`~dripcore.engine.Drip` sending real mail refuses it."""
        return self._unsubscribe_url is placeholder_unsubscribe_url

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
        simple = SimpleTemplate.parse(source)
        # A simple source always compiles: Liquid is left for when it is needed, if ever.
        compiled = _Compiled(simple, None if simple is not None else self._compile_liquid(source, html, strict))
        with self._lock:
            self._cache[key] = compiled
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _compile_liquid(self, source: str, html: bool, strict: bool) -> BoundTemplate | _Broken:
        problem = markup_problem(source, self.limits.max_markup)
        if problem is not None:
            return _Broken(problem[0], problem[1], refused=True)
        env = self._environment(html, strict)
        liquid = load_liquid()
        try:
            return liquid.bound_ranges(env.from_string(source))
        except liquid.liquid_error as exc:
            return _Broken(error_reason(exc), error_line(exc))
        except Exception as exc:  # the template is untrusted input: report, never crash the tick
            return _Broken(error_reason(exc), None)

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
                layout = compiled.layout = HtmlLayout.of(compiled.simple)
            shown = layout.shows(compiled.simple, values, html, url)
        else:
            shown = None
        if shown is None:
            shown = shows_link(html, url)
        if shown:
            return html
        at = layout.footer_position(html) if layout is not None else None
        return insert_html_footer(html, self._render_footer(values, True), at)

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
        problem = unsubscribe_url_problem(url)
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
        liquid = load_liquid()
        if not clock:
            clock.append(deadline_after(self.limits.time))
        try:
            return liquid.render(template, values, clock[0]), None
        except liquid.unknown_variable_error as exc:
            raise UnknownVariable(variable=exc.variable, **_where(sequence, step, field, error_line(exc))) from None
        except liquid.output_limit_error:
            raise InvalidContent(
                reason=f"longer than {self.max_body} characters once rendered", **_where(sequence, step, field)
            ) from None
        except liquid.limit_error as exc:
            raise RenderLimitExceeded(
                limit=exc.limit, reason=error_reason(exc), **_where(sequence, step, field, error_line(exc))
            ) from None
        except liquid.loop_limit_error as exc:
            raise RenderLimitExceeded(
                limit="loop_iterations",
                reason=f"loop iteration limit reached: at most {self.limits.loop_iterations:,} iterations, "
                "nested loops multiplied",
                **_where(sequence, step, field, error_line(exc)),
            ) from None
        except liquid.namespace_limit_error as exc:
            raise RenderLimitExceeded(
                limit="namespace",
                reason="assign and capture hold too much (about 8 bytes per character of max_body)",
                **_where(sequence, step, field, error_line(exc)),
            ) from None
        except liquid.liquid_error as exc:
            raise RenderError(reason=error_reason(exc), **_where(sequence, step, field, error_line(exc))) from None
        except Exception as exc:  # untrusted template: report it as this message's error
            raise RenderError(reason=error_reason(exc), **_where(sequence, step, field)) from exc


SimpleRenderer = LiquidRenderer
"""The engine's historical name for the default renderer; now :class:`LiquidRenderer`."""
