"""The substitution fast path changes no result: a plain ``{{ name }}`` template renders as Liquid renders it.

Everything here goes through :class:`~dripcore.render.LiquidRenderer`. A source of text and plain outputs
is rendered by substitution; the same source behind an empty ``{% if true %}{% endif %}`` is not plain any
more, so Liquid renders it. The two renderings (subject, bodies, footer, headers, or the error) must agree.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import liquid.token
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from liquid import Environment

from dripcore import Contact, Enrollment, Sequence, Step, UnknownVariables
from dripcore.errors import DripcoreError
from dripcore.render import LiquidRenderer, RenderError, UnknownVariable

AT = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
URL = "https://example.com/u?e=e1&c=c1"
TO_LIQUID = "{% if true %}{% endif %}"  # renders nothing, and makes the rest Liquid's job
RENDERER = LiquidRenderer(unsubscribe_url=lambda contact, enrollment: URL)


def outcome(source: str, variables: dict[str, Any], *, html: bool, strict: bool = False) -> object:
    """The rendering of a step whose body is ``source`` (HTML or text), or the error it raises."""
    try:
        contact = Contact(id="c1", email="ana@example.com", first_name="<Ana & Bo>")
        enrollment = Enrollment(
            id="e1", sequence_id="s1", contact_id="c1", status="active", enrolled_at=AT, next_step_due_at=AT,
            variables=variables,
        )  # fmt: skip
        step = Step(position=1, subject="Hi", html=source) if html else Step(position=1, subject="Hi", text=source)
    except DripcoreError:  # content or values the model refuses: not a rendering question
        assume(False)
        raise
    policy = UnknownVariables.ERROR if strict else UnknownVariables.EMPTY
    try:
        return RENDERER.render(
            step, sequence=Sequence(id="s1", name="S", unknown_variables=policy), contact=contact, enrollment=enrollment
        )
    except RenderError as exc:
        return type(exc), str(exc)


def assert_as_liquid_renders(source: str, variables: dict[str, Any], *, html: bool, strict: bool = False) -> None:
    fast = outcome(source, variables, html=html, strict=strict)
    assert fast == outcome(TO_LIQUID + source, variables, html=html, strict=strict)


# --------------------------------------------------------------------------- plain templates

NAMES = ["firstName", "email", "plan", "order_id", "missing"]
# Control characters other than whitespace are refused before any rendering: not the fast path's concern.
# CR and CR LF are in: both paths print them as LF.
characters = st.characters(blacklist_characters="{}%", blacklist_categories=["Cs", "Cc"]) | st.sampled_from("\n\t\r")
literal = st.text(alphabet=characters, max_size=12)
values = st.dictionaries(
    st.sampled_from(["plan", "order_id", "n"]),
    st.text(st.characters() | st.sampled_from("\r\n"), max_size=8)
    | st.integers(-(10**6), 10**6)
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(st.integers(0, 9), max_size=3),
)


@st.composite
def simple_templates(draw: st.DrawFn) -> str:
    pieces = [draw(literal)]
    for _ in range(draw(st.integers(0, 4))):
        spaces = draw(st.sampled_from(["", " ", "  "]))
        pieces.append(f"{{{{{spaces}{draw(st.sampled_from(NAMES))}{spaces}}}}}")
        pieces.append(draw(literal))
    return "".join(pieces)


@given(simple_templates(), values, st.booleans(), st.booleans())
def test_a_plain_template_renders_as_liquid_renders_it(
    source: str, variables: dict[str, Any], html: bool, strict: bool
) -> None:
    """Strings, numbers, missing values, and the values only Liquid can print (floats, lists, a strict miss)."""
    assert_as_liquid_renders(source, variables, html=html, strict=strict)


@pytest.mark.parametrize("html", [False, True])
def test_plain_outputs_print_what_python_liquid_prints(html: bool) -> None:
    """The fast path's output is python-liquid's own, escaping in HTML included."""
    source = "{{ unsubscribe_url }} Dear {{ firstName }}, {{plan}} x{{ n }} ({{ missing }})."
    rendered = outcome(source, {"plan": "a<b", "n": 3}, html=html)
    expected = (
        Environment(autoescape=html)
        .from_string(source)
        .render(unsubscribe_url=URL, firstName="<Ana & Bo>", plan="a<b", n=3)
    )
    body = getattr(rendered, "html" if html else "text")
    assert body == expected


# --------------------------------------------------------------------------- near-plain templates

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Every word Liquid's lexer knows, and a few the grammar uses by name.
WORDS = sorted(
    {value for name, value in vars(liquid.token).items() if name.startswith("TOKEN_") and isinstance(value, str)}
    | {"true", "false", "nil", "null", "empty", "blank", "and", "or", "not", "contains", "in", "forloop", "self"}
)
near_names = st.sampled_from(["firstName", "plan", "n", "x_1", "_", *filter(IDENTIFIER.fullmatch, WORDS)])
spaces = st.sampled_from(["", " ", "  ", "\n", "\t", "\r\n", "\u00a0", "\x0b", "\u2003"])
near_literal = st.text(alphabet="ab {}%#-|.:'\"<>&\n", max_size=6)
near_values = st.dictionaries(
    near_names, st.text(alphabet="a<&'\" {}", max_size=4) | st.integers(-50, 50) | st.none(), max_size=4
)


@st.composite
def near_simple_templates(draw: st.DrawFn) -> str:
    pieces = [draw(near_literal)]
    for _ in range(draw(st.integers(0, 4))):
        pieces.append("{{" + draw(spaces) + draw(near_names) + draw(spaces) + "}}")
        pieces.append(draw(near_literal))
    return "".join(pieces)


@given(near_simple_templates(), near_values, st.booleans(), st.booleans())
def test_braces_liquid_words_and_odd_whitespace_render_as_liquid_renders_them(
    source: str, variables: dict[str, Any], html: bool, strict: bool
) -> None:
    """What the fast path takes, Liquid compiles and prints the same; what it leaves, Liquid does."""
    assert_as_liquid_renders(source, variables, html=html, strict=strict)


@pytest.mark.parametrize("word", [word for word in WORDS if IDENTIFIER.fullmatch(word)])
def test_an_output_of_a_liquid_word_renders_as_liquid_renders_it(word: str) -> None:
    """{{ true }} prints "true" and {{ and }} does not compile: such outputs are Liquid's job."""
    for variables in ({}, {word: "v"}, {word: 7}):
        assert_as_liquid_renders(f"[{{{{ {word} }}}}]", variables, html=False)


def test_a_brace_before_an_output_is_a_syntax_error_not_a_substitution() -> None:
    """ "{{{ name }}" is an output of "{ name" to Liquid, a syntax error; a lone brace elsewhere is text."""
    with pytest.raises(RenderError):
        RENDERER.render(
            Step(position=1, subject="Hi", text="x{{{ plan }}"),
            sequence=Sequence(id="s1", name="S"),
            contact=Contact(id="c1", email="ana@example.com"),
            enrollment=Enrollment(
                id="e1", sequence_id="s1", contact_id="c1", status="active", enrolled_at=AT, next_step_due_at=AT
            ),
        )
    for source, shown in (("{ {{ plan }}", "{ pro"), ("{{ plan }}}", "pro}")):
        rendered = outcome(source, {"plan": "pro"}, html=False)
        assert not isinstance(rendered, tuple)
        assert getattr(rendered, "text", "").startswith(shown + "\n\n")


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("{{ plan | upcase }}", "PRO"),
        ("{% if plan %}x{% endif %}", "x"),
        ("a {{- plan -}} b", "aprob"),
        ("{{ order.id }}", "7"),
        ("Hi {{ items }}", "Hi 12"),
        ("Hi {{ ratio }}", "Hi 1.5"),
    ],
)
def test_markup_beyond_plain_outputs_and_values_beyond_text_are_rendered_by_liquid(source: str, shown: str) -> None:
    """Filters, tags, whitespace control, paths, lists and floats: Liquid's output, as before."""
    rendered = outcome(source, {"plan": "pro", "order": {"id": 7}, "items": [1, 2], "ratio": 1.5}, html=False)
    assert getattr(rendered, "text", "").startswith(shown + "\n\n")


def test_a_strict_miss_in_a_plain_template_names_its_line() -> None:
    """The fast path can't name a line: a strict miss goes to Liquid, which does."""
    missed = outcome("Hello\n{{ firstName }} {{ plan }}", {}, html=False, strict=True)
    assert isinstance(missed, tuple)
    assert missed[0] is UnknownVariable
    assert "text line 2: unknown variable 'plan'" in missed[1]
