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

from ..errors import InvalidContent, RenderError, RenderLimitExceeded, TemplateNotFound, UnknownVariable
from ..ports import Template, TemplateStore
from .limits import RenderLimits
from .links import UnsubscribeUrl, placeholder_unsubscribe_url, unsubscribe_link
from .renderer import (
    DEFAULT_FOOTER_HTML,
    DEFAULT_FOOTER_TEXT,
    CacheInfo,
    LiquidRenderer,
    SimpleRenderer,
    template_variables,
)
from .renderer import (
    MAX_SUBJECT as MAX_SUBJECT,  # public before the split, though never in __all__
)
from .templates import MemoryTemplateStore

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
