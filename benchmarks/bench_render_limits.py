"""What bounded rendering costs, and what it saves.

Compiling: python-liquid's lexer is quadratic on some sources (an opener never
closed, a run of whitespace inside markup, "(" with no ".." after it). Each
figure times python-liquid alone ("before") on such a source at two sizes, so
the doubling ratio shows the growth (about 4x: quadratic) and the time at
1 MB can be projected, and times dripcore's renderer ("after") refusing the
same kind of source at 1 MB. A normal template is compiled at two sizes too:
linear, and within the limits.

Rendering: a normal Liquid template rendered by python-liquid with the limits
dripcore had before (loops, output, namespace) and by the guarded renderer
(deadline, filter and range bounds): the ratio is the guards' overhead. And
the unsubscribe-footer rule on a 16 KB email that shows the link: worked out
once from a plain template, or scanned per email (a template with tags).

Prints one summary line per figure::

    python benchmarks/bench_render_limits.py           # about a minute
    python benchmarks/bench_render_limits.py --quick   # the smoke run the test suite uses
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar

from liquid import Environment
from liquid.exceptions import LiquidError

from dripcore import Contact, Enrollment, Sequence, Step
from dripcore.render import LiquidRenderer, RenderError
from dripcore.render.liquid import load_liquid

AT = datetime(2026, 1, 1, tzinfo=timezone.utc)
CONTACT = Contact(id="c1", email="ana@example.com", first_name="Ana", metadata={"plan": "pro"})
ENROLLMENT = Enrollment(
    id="e1", sequence_id="s1", contact_id="c1", status="active", enrolled_at=AT, next_step_due_at=AT
)
SEQUENCE = Sequence(id="s1", name="S")
MB = 1_000_000

# Sources python-liquid compiles in quadratic time, by size in characters.
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "'{{' repeated, never closed": lambda n: "{{" * (n // 2),
    "'{{' in a comment, never closed": lambda n: "{% comment %}" + "{{ x " * ((n - 29) // 5) + "{% endcomment %}",
    "'{{' + spaces + '}}'": lambda n: "{{" + " " * (n - 4) + "}}",
    "'{% liquid' with a run of spaces": lambda n: "{% liquid\nassign x = 1" + " " * (n - 40) + "| plus: 1\n%}",
    "'(' with no '..' after": lambda n: "{{ " + "(" * (n - 6) + " }}",
}


def normal(n: int) -> str:
    """An email-like template of about ``n`` characters, 4% of it markup (outputs, filters, if/else)."""
    block = (
        "<tr><td style=\"padding:8px\">Dear {{ firstName | default: 'friend' }}, your plan is "
        "{% if plan == 'pro' %}<b>Pro</b>{% else %}Free{% endif %}.</td></tr>\n"
        + '<tr><td style="font-family:Arial,sans-serif;font-size:14px;color:#333333;padding:4px 8px">'
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.</td></tr>\n" * 12
    )
    return (block * (n // len(block) + 1))[:n].rsplit("\n", 1)[0]


def seconds(fn: Callable[[], Any], repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def liquid_compile(source: str) -> None:
    with contextlib.suppress(LiquidError):  # the adversarial sources are errors too, found after the quadratic work
        Environment(autoescape=True).from_string(source)


def dripcore_compile(source: str) -> bool:
    """Compile (and render) ``source`` with a fresh renderer; whether it was accepted."""
    renderer = LiquidRenderer()  # a fresh cache: every call compiles
    step = Step(position=1, subject="Hi", html=source)
    try:
        renderer.render(step, sequence=SEQUENCE, contact=CONTACT, enrollment=ENROLLMENT)
    except RenderError:
        return False
    return True


def compile_figures(small: int, quick: bool) -> list[str]:
    lines = []
    big = 100_000 if quick else MB
    assert dripcore_compile(normal(big)), "the normal template is within the limits"
    small_source, big_source = normal(big // 10), normal(big)
    t_small = seconds(lambda: dripcore_compile(small_source), 3)
    t_big = seconds(lambda: dripcore_compile(big_source), 3)
    lines.append(
        f"compile+render, normal template: {t_small / (big // 10) * 1e9:,.0f} ns/char at {big // 10:,} chars, "
        f"{t_big / big * 1e9:,.0f} ns/char at {big:,} = {t_big / t_small / 10:.2f}x per char (1.00: linear)"
    )
    for name, make in ADVERSARIAL.items():
        sources = make(small), make(2 * small), make(MB)
        before_small = seconds(lambda sources=sources: liquid_compile(sources[0]))
        before_double = seconds(lambda sources=sources: liquid_compile(sources[1]))
        growth = before_double / before_small
        projected = before_double * (MB / (2 * small)) ** 2
        after = seconds(lambda sources=sources: dripcore_compile(sources[2]), 3)
        lines.append(
            f"compile, {name}: before {before_double:.2f} s at {2 * small:,} chars ({growth:.1f}x per doubling, "
            f"~{projected / 3600:,.1f} h projected at 1 MB); after, refused at 1 MB in {after * 1e3:.1f} ms "
            f"= {projected / after:,.0f}x less"
        )
    return lines


class _OldLimits(Environment):
    """The limits the renderer set before: loops, output, namespace."""

    loop_iteration_limit: ClassVar[int | None] = 100_000
    output_stream_limit: ClassVar[int | None] = 4 * MB
    local_namespace_limit: ClassVar[int | None] = 8 * MB


def render_figures(repeats: int, number: int) -> list[str]:
    source = (
        "<h1>Hello {{ firstName | default: 'there' }}</h1>"
        "{% if plan == 'pro' %}<p>Thanks for going {{ plan | upcase }}.</p>{% endif %}"
        "<ul>{% for item in items %}<li>{{ item.name }}: {{ item.price | times: 1.2 | round: 2 }}</li>{% endfor %}</ul>"
    )
    values = {"firstName": "Ana", "plan": "pro", "items": [{"name": f"Item {i}", "price": i} for i in range(10)]}
    liquid = load_liquid()
    plain = _OldLimits(autoescape=True).from_string(source)
    guarded = liquid.bound_ranges(liquid.environment(html=True, strict=False, max_chars=MB).from_string(source))
    assert plain.render(values) == liquid.render(guarded, values, float("inf"))
    without, with_guards = [], []
    for _ in range(repeats):  # interleaved, so drift on the machine hits both
        without.append(seconds(lambda: [plain.render(values) for _ in range(number)]) / number)
        with_guards.append(
            seconds(lambda: [liquid.render(guarded, values, float("inf")) for _ in range(number)]) / number
        )
    a, b = min(without), min(with_guards)
    return [
        f"Liquid render, a template with a loop and filters: {b * 1e6:,.1f} us with the guards, "
        f"{a * 1e6:,.1f} us without = {b / a:.2f}x (the guards' overhead)"
    ]


def email(liquid_tag: bool) -> Step:
    """A 16 KB marketing email (head, CSS with media queries, a hidden preheader, 60 rows) showing the link."""
    rows = "".join(
        f'<tr><td style="padding:8px;font-size:14px">Item {i} for {{{{ firstName }}}}</td>'
        f'<td width="120" align="right"><a href="https://shop.example.com/p/{i}">Buy</a></td></tr>\n'
        for i in range(60)
    )
    html = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>News</title><style>body{margin:0} '
        "@media only screen and (max-width:600px){ .hide-mobile{display:none !important} }</style>"
        "<!--[if mso]><style>table{border-collapse:collapse}</style><![endif]--></head>"
        '<body style="margin:0;padding:0"><div style="display:none;max-height:0;overflow:hidden">Preheader</div>'
        f'<table width="600"><tr><td class="hide-mobile"><img src="banner.png" alt=""></td></tr>{rows}</table>'
        '<p style="font-size:12px;color:#6b7280"><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
    )
    if liquid_tag:
        html = html.replace("<title>News</title>", "<title>{% if true %}News{% endif %}</title>")
    return Step(position=1, subject="News", html=html)


def footer_figures(repeats: int, number: int) -> list[str]:
    renderer = LiquidRenderer()
    plain, tagged = email(False), email(True)
    results = {}
    for name, step in (("plain", plain), ("tagged", tagged)):
        rendered = renderer.render(step, sequence=SEQUENCE, contact=CONTACT, enrollment=ENROLLMENT)
        assert rendered.html is not None
        assert rendered.html.count("Unsubscribe") == 1  # shown: no footer added

        def once(step: Step = step) -> None:
            renderer.render(step, sequence=SEQUENCE, contact=CONTACT, enrollment=ENROLLMENT)

        results[name] = min(seconds(once) for _ in range(repeats * number // 10 or 1))
    from dripcore.render.visibility import shows_link

    html = renderer.render(plain, sequence=SEQUENCE, contact=CONTACT, enrollment=ENROLLMENT).html
    assert html is not None
    url = "https://unsubscribe.invalid/s1/e1"
    scan = min(seconds(lambda: shows_link(html, url)) for _ in range(repeats * 20))
    return [
        f"footer rule, 16 KB email showing the link: a full scan takes {scan * 1e6:,.0f} us; a whole render takes "
        f"{results['plain'] * 1e6:,.0f} us plain (layout from the template, no scan) and "
        f"{results['tagged'] * 1e6:,.0f} us with a tag (Liquid + scan) = {results['tagged'] / results['plain']:.1f}x"
    ]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    args = parser.parse_args(argv)
    small, repeats, number = (1_000, 2, 20) if args.quick else (6_000, 5, 200)
    lines = [*compile_figures(small, args.quick), *render_figures(repeats, number), *footer_figures(repeats, number)]
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()
