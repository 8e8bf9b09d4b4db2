"""The substitution fast path: templates of text and plain ``{{ name }}`` outputs, rendered without Liquid."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

import attrs
from markupsafe import escape

__all__ = ["SimpleTemplate"]

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
class SimpleTemplate:
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
    def parse(cls, source: str) -> SimpleTemplate | None:
        """The template, when ``source`` is only text and plain outputs (else None: Liquid's job).

        >>> SimpleTemplate.parse("Hi {{ firstName }}!").render({"firstName": "<Ana>"}, html=True, strict=False)
        'Hi &lt;Ana&gt;!'
        >>> SimpleTemplate.parse("Hi {{ firstName | upcase }}") is None
        True
        """
        parts = _SIMPLE_OUTPUT.split(_one_line_break(source))
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
            if value.__class__ is str and not html and "\r" not in value:
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
    if "\r" in text:
        text = _one_line_break(text)
    return str(escape(text)) if html else text


def _one_line_break(text: str) -> str:
    """``text`` with every CR LF and lone CR as LF, as Liquid's output buffer writes them.

    Liquid renders through a text buffer with universal newlines; the fast path
    must print the same. (A bare CR has no place in an email body either: RFC
    5322 allows CR only before LF, and the MIME writer ends each line with CR LF.)
    """
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text
