"""Whether an HTML email shows a link where a reader can see and click it, and where a footer is seen."""

from __future__ import annotations

import heapq
import itertools
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from html import unescape
from typing import Any

import attrs
from markupsafe import escape

from .fast import SimpleTemplate

__all__ = ["HtmlLayout", "insert_html_footer", "shows_link"]

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
# each output lands is worked out once from the template (HtmlLayout).

_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_HIDDEN_CONTENT = (
    "head", "script", "style", "template", "title", "noscript", "textarea", "iframe", "object",
    "select", "xmp", "noembed", "noframes", "plaintext",
)  # fmt: skip
_NAME_END = frozenset(" \t\n\r\f/>")
_SPECIAL = re.compile("<(!--|" + "|".join(_HIDDEN_CONTENT) + ")")
_ATTRIBUTE_END = _NAME_END | {"="}
# A CSS value that may hide, after a colon: the property before it is checked in _hiding_declarations.
_HIDING_VALUE = re.compile(r":\s*(?:none|hidden|collapse|all|0+(?:\.0*)?(?![\d.])|\.0+(?![\d.]))")
_HIDING_PROPERTY = re.compile(r"(?<![\w-])(display|visibility|mso-hide|opacity|(?:max-)?height|(?:max-)?width)\s*$")
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
        """The parts of the document no reader sees (see the rule at the top of this module)."""
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
    """The parts of a document no reader sees (see the rule at the top of this module)."""
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


def shows_link(html: str, url: str) -> bool:
    """Whether a reader of ``html`` can see ``url`` and click it (see the rule at the top of this module)."""
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


def insert_html_footer(html: str, footer: str, at: int | None = None) -> str:
    """``html`` with ``footer`` at ``at``, by default where a reader sees it (before the last ``</body>``,
    unless that is inside something hidden left open)."""
    if at is None:
        at = _footer_position(html)
    return html[:at] + footer + html[at:]


# What a plain template's output shows, per output, worked out once from the template.
_SHOWN, _LINKED, _UNSEEN, _ASK = range(4)
# A plain template with more outputs than this is scanned per email instead (its layout is not worth it).
_MAX_LAID_OUT = 1_000


@attrs.frozen
class HtmlLayout:
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
    def of(cls, simple: SimpleTemplate) -> HtmlLayout:
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

    def shows(self, simple: SimpleTemplate, values: Mapping[str, Any], html: str, url: str) -> bool | None:
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
