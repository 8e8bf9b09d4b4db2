"""The substitution fast path renders exactly what python-liquid renders."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from liquid import Environment

from dripcore.render import _Simple

names = st.sampled_from(["firstName", "email", "plan", "order_id", "missing"])
literal = st.text(alphabet=st.characters(blacklist_characters="{}%", blacklist_categories=["Cs"]), max_size=12)
values = st.dictionaries(
    st.sampled_from(["firstName", "email", "plan", "order_id"]),
    st.text(max_size=8) | st.integers(-(10**6), 10**6) | st.none(),
)
ENVS = {html: Environment(autoescape=html) for html in (False, True)}


@st.composite
def simple_templates(draw: st.DrawFn) -> str:
    pieces = [draw(literal)]
    for _ in range(draw(st.integers(0, 4))):
        spaces = draw(st.sampled_from(["", " ", "  "]))
        pieces.append(f"{{{{{spaces}{draw(names)}{spaces}}}}}")
        pieces.append(draw(literal))
    return "".join(pieces)


@given(simple_templates(), values, st.booleans())
def test_fast_path_matches_liquid(source: str, variables: dict[str, object], html: bool) -> None:
    simple = _Simple.parse(source)
    assert simple is not None
    fast = simple.render(variables, html=html, strict=False)
    assert fast == ENVS[html].from_string(source).render(**variables)


def test_markup_beyond_plain_outputs_falls_back() -> None:
    for source in ["{{ a | upcase }}", "{% if a %}x{% endif %}", "{{- a -}}", "{{ a.b }}", "{# note #}"]:
        assert _Simple.parse(source) is None, source


def test_other_value_types_fall_back() -> None:
    simple = _Simple.parse("Hi {{ items }}")
    assert simple is not None
    assert simple.render({"items": [1, 2]}, html=False, strict=False) is None
    assert simple.render({"items": 1.5}, html=False, strict=False) is None
    assert simple.render({}, html=False, strict=True) is None  # strict misses must name their line
