"""A linear pre-scan that refuses Liquid markup python-liquid would take quadratic time to compile.

Also bounds the amount of markup in one template field (``RenderLimits.max_markup``).
"""

from __future__ import annotations

import re

__all__ = ["markup_problem"]

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
# markup_problem finds the markups the lexer will see (the same boundaries,
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


def markup_problem(source: str, max_markup: int) -> tuple[str, int | None] | None:
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
