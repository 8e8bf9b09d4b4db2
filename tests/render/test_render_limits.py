"""Bounded rendering: templates are untrusted input, so compiling and rendering one is bounded in
time, memory and size, and the unsubscribe footer is left out only when a reader can see the link.

No test here measures time: each shows that an adversarial template fails with the error naming
the limit it hit, and that it does fail (the test completes) instead of running for minutes.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dripcore.render.liquid
from dripcore import Contact, Drip, Enrollment, Sequence, SequenceStatus, Step
from dripcore.adapters.memory import MemoryStore
from dripcore.ports import OutboxStatus, Rendered
from dripcore.render import (
    DEFAULT_FOOTER_HTML,
    InvalidContent,
    LiquidRenderer,
    RenderError,
    RenderLimitExceeded,
    RenderLimits,
)
from dripcore.testing import FakeClock, MemoryContacts, RecordingEvents, RecordingSender

AT = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
URL = "https://example.com/unsubscribe?e=e1&c=c1"
SHOWN = URL.replace("&", "&amp;")  # as it appears in HTML
FOOTER = DEFAULT_FOOTER_HTML.replace("{{ unsubscribe_url }}", SHOWN)


def renderer(**options: Any) -> LiquidRenderer:
    options.setdefault("unsubscribe_url", lambda c, e: URL)
    return LiquidRenderer(**options)


def render(step: Step, *, r: LiquidRenderer | None = None, **metadata: Any) -> Rendered:
    person = Contact(id="c1", email="ana@example.com", first_name="Ana", metadata=metadata)
    enrolled = Enrollment(
        id="e1", sequence_id="welcome", contact_id="c1", status="active", enrolled_at=AT, next_step_due_at=AT
    )
    return (r or renderer()).render(
        step, sequence=Sequence(id="welcome", name="Welcome"), contact=person, enrollment=enrolled
    )


def text(source: str, r: LiquidRenderer | None = None, **metadata: Any) -> str:
    rendered = render(Step(position=2, subject="Hi", text=source), r=r, **metadata)
    assert rendered.text is not None
    return rendered.text


def html(source: str, r: LiquidRenderer | None = None) -> str:
    rendered = render(Step(position=2, subject="Hi", html=source), r=r)
    assert rendered.html is not None
    return rendered.html


def limit_hit(source: str, r: LiquidRenderer | None = None, **metadata: Any) -> RenderLimitExceeded:
    with pytest.raises(RenderLimitExceeded) as caught:
        text(source, r, **metadata)
    error = caught.value
    assert (error.sequence_id, error.position, error.field) == ("welcome", 2, "text")
    assert str(error).startswith("sequence 'welcome' step 2 text")
    return error


def refused(source: str, r: LiquidRenderer | None = None) -> InvalidContent:
    with pytest.raises(InvalidContent) as caught:
        text(source, r)
    assert (caught.value.sequence_id, caught.value.position, caught.value.field) == ("welcome", 2, "text")
    return caught.value


# --------------------------------------------------------------------------- compiling: what would be quadratic


def test_twenty_thousand_unclosed_output_openers_are_refused_before_liquid_lexes_them() -> None:
    """'{{' x 20,000 took python-liquid's lexer 73 s (a scan to the end per opener): refused at once."""
    error = refused("{{" * 20_000)
    assert "'{{' is never closed by '}}'" in error.reason
    assert error.line == 1


def test_a_megabyte_of_unclosed_openers_is_refused_too() -> None:
    """The same at the model's body cap, which would take python-liquid hours."""
    assert "never closed" in refused("{{" * 499_999).reason


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("ok {{ name }}\nthen {{ name", 2),
        ("{% if a %}\n\n{% endif", 3),
        ("a\n{% raw %}{{ x }}", 2),
        ("{{ x }}\n" + "{{ " + " " * 100_000 + "x", 2),  # one opener, then a long run to backtrack through
        ("{% " + "a" * 200_000, 1),
    ],
)
def test_an_opener_never_closed_is_refused_naming_its_line(source: str, line: int) -> None:
    """Quadratic in python-liquid (a failed scan to the end, more per character of a run after it)."""
    error = refused(source)
    assert "never closed" in error.reason
    assert error.line == line


def test_unclosed_outputs_inside_a_comment_are_refused() -> None:
    """Valid Liquid, but each '{{' in it is lexed (and scanned to the end): refused as never closed."""
    source = "{% comment %}" + "{{ x " * 100_000 + "{% endcomment %}Hello"
    assert "never closed" in refused(source).reason


def test_raw_blocks_are_not_lexed_so_their_braces_are_fine() -> None:
    """Inside {% raw %} braces are text: no closer needed, and they print as written."""
    assert text("{% raw %}{{ {{ {% endraw %}{{ firstName }}").startswith("{{ {{ Ana")


@pytest.mark.parametrize(
    "source",
    [
        "{{" + " " * 40_000 + "}}",  # whitespace the output rule gives back a character at a time
        "{% if a %}{% endif" + " " * 40_000 + "%}",  # the same after a tag's name
        "{% liquid\n" + "assign x = 1" + " " * 20_000 + "| plus: 1\n%}",  # the liquid tag's own lexer
        "{{ " + "(" * 40_000 + " }}",  # each "(" looks ahead for a ".." to the end
        "{{ a" + '["' * 20_000 + " }}",  # each '["' looks for its closing quote to the end
        ("{{ " + " " * 300 + "}}") * 120,  # many smaller runs add up
    ],
)
def test_markup_that_python_liquid_parses_in_quadratic_time_is_refused(source: str) -> None:
    """Refused after a linear scan, naming where the costliest markup is."""
    error = refused(source)
    assert "too costly to parse" in error.reason
    assert error.line == 1


def test_too_much_markup_is_refused_and_the_limit_is_configurable() -> None:
    """Compiling costs microseconds per markup character: at most max_markup of them."""
    source = "{{ firstName }}{% if true %}!{% endif %}" * 2_000  # 80,000 characters of markup
    assert "50,000 characters of Liquid markup" in refused(source).reason
    assert text(source, renderer(limits=RenderLimits(max_markup=100_000))).startswith("Ana!Ana!")


def test_a_large_normal_template_compiles() -> None:
    """Near the body cap, with thousands of tags and outputs: within the limits, and rendered."""
    row = "<tr><td>{{ firstName }}</td><td>{% if plan == 'pro' %}Pro{% else %}Free{% endif %}</td></tr>\n"
    source = ("<p>" + "lorem ipsum " * 80 + "</p>\n") * 850 + row * 400
    assert 800_000 < len(source) < 1_000_000
    out = text(source, plan="pro")
    assert out.count("<td>Ana</td><td>Pro</td>") == 400


def test_a_refused_template_is_remembered_not_scanned_again() -> None:
    """A refusal is cached like any compilation: one scan per template, then the same error at once."""
    r = renderer()
    for _ in range(3):
        refused("{{" * 10_000, r)
    assert (r.cache_info().misses, r.cache_info().hits) == (2, 4)  # the subject "Hi" and the text


# --------------------------------------------------------------------------- rendering: time and memory


def test_the_86_character_template_fails_at_once() -> None:
    """It rendered for ~15 minutes: its 300,000-item range is over max_items (10,000)."""
    source = "{% for i in (1..99999) %}{% assign x = (1..300000) | sort | size %}{% endfor %}{{ x }}"
    assert len(source) == 86
    error = limit_hit(source)
    assert error.limit == "max_items"
    assert error.line == 1
    assert "a range of 99,999 items, more than the limit of 10,000" in error.reason


def test_a_template_under_every_size_limit_is_stopped_by_the_time_limit() -> None:
    """Nested loops of sorts would run for minutes; stopped by the clock (0.05 s here)."""
    source = (
        "{% for i in (1..9999) %}{% for j in (1..10) %}{% assign x = (1..9999) | sort | size %}{% endfor %}{% endfor %}"
    )
    error = limit_hit(source, renderer(limits=RenderLimits(time=0.05)))
    assert error.limit == "time"
    assert "render time limit of 0.05 s" in error.reason


def test_a_join_of_twenty_million_is_refused_before_it_is_built() -> None:
    """It took +2.7 GB and 8.5 s: the range is refused before join sees it."""
    error = limit_hit("{{ (1..20000000) | join: '...' | size }}")
    assert error.limit == "max_items"
    assert "20,000,000 items" in error.reason


def test_sorting_a_billion_is_refused_before_it_is_built() -> None:
    """(1..1000000000) | sort would bring the OOM killer."""
    assert limit_hit("{{ (1..1000000000) | sort | size }}").limit == "max_items"
    # Written 1e9, the bound is a variable named "1e9" to Liquid, missing: an empty range.
    assert text("{{ (1..1e9) | sort | size }}").startswith("0\n")


def test_contains_on_a_huge_range_is_refused() -> None:
    """A range is lazy, but 'contains' walks it: bounded like any sequence."""
    assert limit_hit("{% if (1..200000000) contains 'x' %}y{% endif %}").limit == "max_items"


@pytest.mark.parametrize(
    "source",
    [
        "{% assign r = (1..20000) %}{{ r | size }}",
        "{% capture c %}{{ (1..20000) | first }}{% endcapture %}",
        "{% case 1 %}{% when 2 %}{% else %}{% for i in (1..20000) %}{% endfor %}{% endcase %}",
        "{% unless false %}{% echo (1..20000) | last %}{% endunless %}",
        "{% liquid\nfor i in (0..20000)\necho i\nendfor %}",
        "{% tablerow i in (1..20000) %}{{ i }}{% endtablerow %}",
        "{% if true %}{% if true %}{{ (5..20004) | size }}{% endif %}{% endif %}",
    ],
)
def test_ranges_are_bounded_wherever_they_are(source: str) -> None:
    """Every range literal of a template gets the bound, however deep in its tags."""
    assert limit_hit(source).limit == "max_items"


@pytest.mark.parametrize(
    ("source", "limit", "fragment"),
    [
        (
            "{% assign s = 'ab' %}{% for i in (1..40) %}{% assign s = s | append: s %}{% endfor %}",
            "max_body",
            "'append'",
        ),
        (
            "{% assign l = 'x' | split: ',' %}{% for i in (1..20) %}{% assign l = l | concat: l %}{% endfor %}",
            "max_items",
            "'concat'",
        ),
        ("{% assign n = 10 %}{% for i in (1..30) %}{% assign n = n | times: n %}{% endfor %}", "number", "'times'"),
        ("{{ note | replace: 'y', 'zzzzzzzzzzzzzzzzzzzz' }}", "max_body", "'replace' would make a string of 2,000,050"),
        ("{{ note | split: '' | size }}", "max_items", "'split' would make a sequence of up to 100,050"),
        ("{{ (1..9999) | join: note }}", "max_body", "'join' would make a string of about"),
        ("{{ (1..5000) | uniq | size }}", "max_items", "it compares every pair, so it takes at most 1,000"),
    ],
)
def test_a_filter_cannot_grow_a_value_past_the_limits(source: str, limit: str, fragment: str) -> None:
    """What a filter would make is bounded before it is made (or right after, when the call is cheap)."""
    error = limit_hit(source, note="x" * 50 + "y" * 100_000)
    assert error.limit == limit
    assert fragment in error.reason


def test_a_string_shared_by_many_items_cannot_be_printed_past_the_limits() -> None:
    """8,192 references to one 100,000-character string are 800 MB once joined: refused at concat."""
    source = "{% assign l = note | split: '@' %}{% for i in (1..13) %}{% assign l = l | concat: l %}{% endfor %}{{ l }}"
    error = limit_hit(source, note="y" * 100_000)
    assert error.limit == "max_body"
    assert "sequence holding" in error.reason


def test_constant_time_filters_take_any_size() -> None:
    """size, first, last and default don't walk their input: a long list from the host is fine."""
    assert text("{{ orders | size }} {{ orders | first }}", orders=list(range(50_000))).startswith("50000 0")


def test_what_assign_and_capture_hold_is_bounded() -> None:
    """Many distinct long strings held at once pass python-liquid's namespace limit."""
    source = "".join(f"{{% assign v{i} = note | append: '{i}' %}}" for i in range(100))
    assert limit_hit(source, note="x" * 100_000).limit == "namespace"


def test_the_output_is_bounded_as_before() -> None:
    """Past max_body once rendered: InvalidContent, as for any oversized body."""
    with pytest.raises(InvalidContent, match="once rendered"):
        text("{% for i in (1..5000) %}{{ note }}{% endfor %}", note="x" * 1000)


def test_many_plain_outputs_of_a_long_value_are_bounded_on_the_fast_path_too() -> None:
    """A plain {{ name }} template can multiply a value: its output is bounded like Liquid's."""
    with pytest.raises(InvalidContent, match="once rendered"):
        text("{{ note }}" * 200, note="x" * 10_000)


def test_the_time_limit_is_one_budget_for_the_whole_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock starts at the first Liquid field and runs on through the next (a fake clock here)."""
    ticks = itertools.count()
    # render.liquid.thread_time is the renderer's clock seam (looked up per call), the only way to fake its CPU clock.
    monkeypatch.setattr(dripcore.render.liquid, "thread_time", lambda: next(ticks) * 0.01)
    r = renderer(limits=RenderLimits(time=0.2))
    loop = "{% for i in (1..12) %}{{ i }}{% endfor %}"  # about 13 looks at the clock each
    assert render(Step(position=1, subject=loop, text="Hi"), r=r).subject.startswith("123")
    with pytest.raises(RenderLimitExceeded) as caught:
        render(Step(position=1, subject=loop, text=loop), r=r)
    assert (caught.value.limit, caught.value.field) == ("time", "text")


def test_plain_templates_never_look_at_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is not timed: it can't run long, and the clock costs."""

    def no_clock() -> float:
        raise AssertionError("the clock was read")

    monkeypatch.setattr(dripcore.render.liquid, "thread_time", no_clock)
    rendered = render(Step(position=1, subject="Hi {{ firstName }}", text="Bye {{ email }}", html="<p>{{ x }}</p>"))
    assert rendered.subject == "Hi Ana"


def test_a_render_that_hits_a_limit_leaves_the_renderer_as_it_was() -> None:
    """The next message renders as usual."""
    r = renderer(limits=RenderLimits(time=0.05))
    slow = "{% for i in (1..9999) %}{% for j in (1..10) %}{% assign x = (1..9999) | sort %}{% endfor %}{% endfor %}"
    limit_hit(slow, r)
    assert text("{% if true %}{{ firstName | upcase }}{% endif %}", r).startswith("ANA")


def test_a_runaway_template_fails_its_message_and_the_tick_goes_on() -> None:
    """One sequence's bounded failure is set aside; the other sequence's email is sent in the same tick."""
    contacts = MemoryContacts([Contact(id="c1", email="ana@example.com", first_name="Ana")])
    sender, store = RecordingSender(), MemoryStore()
    drip = Drip(
        store=store, sender=sender, clock=FakeClock(AT), contacts=contacts, events=RecordingEvents(),
        renderer=renderer(),
    )  # fmt: skip
    runaway = "{% for i in (1..99999) %}{% assign x = (1..300000) | sort | size %}{% endfor %}{{ x }}"
    for sequence_id, body in (("bad", runaway), ("good", "Hello {{ firstName }}")):
        steps = (Step(position=1, subject="Hi", text=body),)
        drip.save_sequence(Sequence(id=sequence_id, name=sequence_id, status=SequenceStatus.ACTIVE, steps=steps))
        drip.enroll(sequence_id, "c1")
    drip.tick()
    assert [email.sequence_id for email in sender.sent] == ["good"]
    failed = store.find_messages(status=OutboxStatus.FAILED)
    assert [message.sequence_id for message in failed] == ["bad"]
    assert failed[0].last_error is not None
    assert "more than the limit of 10,000" in failed[0].last_error


@pytest.mark.parametrize(
    "options",
    [
        {"time": 0},
        {"time": -1.0},
        {"time": float("inf")},
        {"max_markup": 0},
        {"max_items": -5},
        {"loop_iterations": 1.5},
    ],
)
def test_limits_must_be_positive(options: dict[str, Any]) -> None:
    """A zero, negative or infinite limit is a configuration mistake, refused at construction."""
    with pytest.raises(ValueError, match=next(iter(options))):
        RenderLimits(**options)


def test_the_renderer_takes_limits_as_a_value() -> None:
    """limits= is a RenderLimits; the defaults are documented ones."""
    assert renderer().limits == RenderLimits(time=0.25, max_markup=50_000, max_items=10_000, loop_iterations=100_000)
    with pytest.raises(ValueError, match="RenderLimits"):
        LiquidRenderer(limits={"time": 1})  # type: ignore[arg-type]


def test_limit_errors_are_render_errors() -> None:
    """The engine sets aside any RenderError: the new one is one."""
    assert issubclass(RenderLimitExceeded, RenderError)


# --------------------------------------------------------------------------- the footer: is the link visible?

LINK = '<a href="{{ unsubscribe_url }}">Unsubscribe</a>'


@pytest.mark.parametrize(
    "body",
    [
        f"<p>Hi</p><!-- {LINK} -->",
        f"<p>Hi</p><!--[if mso]>{LINK}<![endif]-->",
        f'<div style="display:none">{LINK}</div><p>Hi</p>',
        f'<div style="DISPLAY: none !important"><p>{LINK}</p></div>',
        f'<p style="visibility:hidden">{LINK}</p>',
        f'<div style="max-height:0;overflow:hidden">{LINK}</div>',
        f'<div style="opacity:0">{LINK}</div>',
        f'<div style="mso-hide:all">{LINK}</div>',
        f"<p hidden>{LINK}</p>",
        f'<style>.gone {{ display: none }}</style><div class="box gone">{LINK}</div>',
        f'<style>@media (max-width:600px) {{ #f {{ display:none !important }} }}</style><p id="f">{LINK}</p>',
        "<html><head><title>{{ unsubscribe_url }}</title></head><body>Hi</body></html>",
        "<script>var u = '{{ unsubscribe_url }}';</script><p>Hi</p>",
        "<style>.x { background: url({{ unsubscribe_url }}) }</style><p>Hi</p>",
        '<img src="{{ unsubscribe_url }}" alt="pixel">',
        '<a title="{{ unsubscribe_url }}" href="https://example.com/shop">Shop</a>',
        '<a href="https://example.com/shop">{{ unsubscribe_url }}</a>',
        '<a href="https://tracker.example.com/?to={{ unsubscribe_url }}">Unsubscribe</a>',
        '<a href="{{ unsubscribe_url }}"></a>',
        '<a href="{{ unsubscribe_url }}"> &nbsp; </a>',
        '<a href="{{ unsubscribe_url }}"><span style="display:none">Unsubscribe</span></a>',
        "<textarea>{{ unsubscribe_url }}</textarea>",
        "<template>{{ unsubscribe_url }}</template>",
    ],
)
def test_a_link_a_reader_cannot_see_and_click_gets_the_footer(body: str) -> None:
    """Hidden by a comment, CSS, the hidden attribute, <head>/<script>/<style>, or not a link: footer."""
    for source in (body, body + "{% if true %}{% endif %}"):  # the plain-substitution path and Liquid's
        assert FOOTER in html(source), source


@pytest.mark.parametrize(
    "body",
    [
        f"<p>Bye. {LINK}</p>",
        "<p>Leave: {{ unsubscribe_url }}</p>",
        '<a href="{{ unsubscribe_url }}&amp;utm_source=email">Unsubscribe</a>',
        '<A HREF="{{ unsubscribe_url }}">Unsubscribe</A>',
        '<a href=\'{{ unsubscribe_url }}\'><img src="x.png" alt=""></a>',
        f'<div style="display:none">preheader</div><p style="overflow:hidden;line-height:0">{LINK}</p>',
        f"<!--[if !mso]><!-->{LINK}<!--<![endif]-->",
        f'<style>.gone {{ display:none }}</style><p class="shown">{LINK}</p>',
        f'<html><head><style>p {{ color: red }}</style></head><body><p style="font-size:12px">{LINK}</p></body></html>',
    ],
)
def test_a_link_a_reader_can_see_and_click_gets_no_footer(body: str) -> None:
    """A visible link, in text or as a clickable href, is the unsubscribe link: nothing added."""
    for source in (body, body + "{% if true %}{% endif %}"):
        assert FOOTER not in html(source), source


def test_the_text_body_rule_stays_the_url_in_the_text() -> None:
    """Plain text has nothing to hide: the URL anywhere in it is enough."""
    assert text("<!-- {{ unsubscribe_url }} -->") == f"<!-- {URL} -->"


@pytest.mark.parametrize(
    "body",
    [
        '<div style="display:none">preheader that never closes<p>Hi</p>',
        "<p>Hi</p><!-- a comment that never closes",
        "<html><body><div hidden><p>Hi</p></body></html>",
    ],
)
def test_the_footer_goes_where_a_reader_sees_it(body: str) -> None:
    """Not into an element or comment left open: before it (after <body>, or at the start)."""
    for source in (body, body + "{% if true %}{% endif %}"):
        out = html(source)
        assert out.index(FOOTER) < out.index("Hi"), out


# Fragments of email HTML, some hiding, some linking, some with outputs in them.
_FRAGMENTS = [
    "<p>", "</p>", "<div>", "</div>", "Hi {{ firstName }}", " text ", "<br>",
    '<div style="display:none">', '<span style="color:red">', "</span>", "<!-- ", " -->", "<p hidden>",
    "<style>.h { display:none }</style>", '<p class="h">', "<head>", "</head>", "<body>", "</body>",
    LINK, "{{ unsubscribe_url }}", '<a href="https://example.com/">', "</a>", '<img src="{{ unsubscribe_url }}">',
    '<a href="{{ unsubscribe_url }}">', '<a href="{{ unsubscribe_url }}?x=1">Go</a>', "<title>", "</title>",
    '<td style="font-size:0">', "</td>", "\ue000",
]  # fmt: skip


@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=12).map("".join))
def test_the_plain_path_places_the_footer_exactly_as_a_full_scan(body: str) -> None:
    """Worked out once from the template or scanned per email: the same output."""
    assert html(body) == html(body + "{% if true %}{% endif %}")


def test_a_body_that_hides_too_much_to_follow_gets_the_footer_where_it_usually_goes() -> None:
    """Thousands of hidden elements: the scan stays cheap by giving up, and errs towards the footer,
    which goes where a footer goes (before </body>, not in front of the document)."""
    source = (
        "<html><body>{% for i in (1..5000) %}<div hidden>{% endfor %}"
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
    )
    out = html(source)
    assert out.startswith("<html><body>")
    assert out.endswith(FOOTER + "</body></html>")


def test_a_column_wrapper_with_a_zero_font_size_does_not_hide_the_link() -> None:
    """Email builders (MJML) wrap columns in font-size:0 and set the size back inside: the link in
    such a column is shown, and no second footer is added."""
    body = f'<div style="font-size:0px"><div style="font-size:13px"><p>Bye: {LINK}</p></div></div>'
    assert FOOTER not in html(body)


def test_a_footer_that_hides_the_link_is_refused() -> None:
    """The footer is there to show the link: one that hides it is a configuration mistake."""
    with pytest.raises(ValueError, match="where a reader can see and click it"):
        LiquidRenderer(footer_html='<div style="display:none"><a href="{{ unsubscribe_url }}">Leave</a></div>')
