"""The renderer's cheap paths: Liquid loaded only when needed, and shortcuts that change no result.

That the substitution fast path renders what Liquid renders is in test_render_fast_path.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dripcore import Contact, Enrollment, Sequence, Step
from dripcore.errors import DripcoreError
from dripcore.render import LiquidRenderer, placeholder_unsubscribe_url

AT = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)

PRELUDE = """
import sys
from datetime import datetime, timezone
from dripcore import Contact, Enrollment, LiquidRenderer, Sequence, Step, UnknownVariables

at = datetime(2026, 1, 1, tzinfo=timezone.utc)
contact = Contact(id="c1", email="ana@example.com", first_name="Ana", metadata={"plan": "pro", "seats": 3})
enrollment = Enrollment(id="e1", sequence_id="s1", contact_id="c1", status="active",
                        enrolled_at=at, next_step_due_at=at)


def render(renderer, step, policy=UnknownVariables.EMPTY):
    sequence = Sequence(id="s1", name="Welcome", unknown_variables=policy)
    return renderer.render(step, sequence=sequence, contact=contact, enrollment=enrollment)
"""


def run_python(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_plain_substitutions_never_import_liquid() -> None:
    """import dripcore and render {{ name }} templates (text, HTML, strict, default footers): no liquid."""
    run_python("""
assert "liquid" not in sys.modules, "imported by import dripcore"
renderer = LiquidRenderer()
assert "liquid" not in sys.modules, "imported by the renderer's construction"
rendered = render(renderer, Step(position=1, subject="Welcome {{ firstName }}", text="Hello"))
assert rendered.subject == "Welcome Ana", rendered
assert rendered.text == "Hello\\n\\nUnsubscribe: https://unsubscribe.invalid/s1/e1\\n", rendered
step = Step(position=2, subject="{{plan}} for {{ email }}", html="<p>{{ firstName }}: {{ seats }} seats</p>")
rendered = render(renderer, step, UnknownVariables.ERROR)
assert rendered.subject == "pro for ana@example.com", rendered
assert rendered.html.startswith("<p>Ana: 3 seats</p><p style="), rendered
assert "liquid" not in sys.modules, "imported to render a plain substitution"
""")


def test_a_template_with_a_tag_loads_liquid_and_renders() -> None:
    """{% if %}, a filter, a value substitution can't print, a strict miss: Liquid, loaded on first need."""
    run_python("""
renderer = LiquidRenderer()
rendered = render(renderer, Step(position=1, subject="Hi", text="{% if plan == 'pro' %}Pro{% else %}Free{% endif %}"))
assert "liquid" in sys.modules
assert rendered.text.startswith("Pro\\n\\nUnsubscribe: "), rendered
assert render(renderer, Step(position=1, subject="{{ plan | upcase }}", text="x")).subject == "PRO"
from dripcore.render import UnknownVariable
try:
    render(renderer, Step(position=1, subject="Hi", text="one\\n{{ nope }}"), UnknownVariables.ERROR)
except UnknownVariable as exc:
    assert (exc.variable, exc.field, exc.line) == ("nope", "text", 2), exc
else:
    raise AssertionError("no UnknownVariable")
""")


def test_a_footer_with_a_tag_loads_liquid_at_construction() -> None:
    """A footer the fast path can't render is compiled and checked by Liquid, as before."""
    run_python("""
renderer = LiquidRenderer(footer_text="{% if true %}Leave: {{ unsubscribe_url }}{% endif %}")
assert "liquid" in sys.modules
assert render(renderer, Step(position=1, subject="Hi", text="Hello")).text.endswith("Leave: https://unsubscribe.invalid/s1/e1\\n")
""")


# --------------------------------------------------------------------------- renderer shortcuts


def contact(**fields: Any) -> Contact:
    return Contact(**{"id": "c1", "email": "ana@example.com", "first_name": "Ana", **fields})


def enrollment(**fields: Any) -> Enrollment:
    base = {"id": "e1", "sequence_id": "s1", "contact_id": "c1", "status": "active"}
    return Enrollment(**{**base, "enrolled_at": AT, "next_step_due_at": AT, **fields})


def outcome(renderer: LiquidRenderer, step: Step, person: Contact, enrolled: Enrollment) -> object:
    try:
        rendered = renderer.render(step, sequence=Sequence(id="s1", name="S"), contact=person, enrollment=enrolled)
    except DripcoreError as exc:
        return type(exc), str(exc)
    return rendered


_ID_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=8)


@given(_ID_TEXT, _ID_TEXT)
def test_the_placeholder_link_needs_no_check(sequence_id: str, enrollment_id: str) -> None:
    """The default link is trusted unchecked: checking it changes nothing, whatever the ids."""
    try:
        enrolled = enrollment(id=enrollment_id, sequence_id=sequence_id)
    except DripcoreError:
        assume(False)
    step = Step(position=1, subject="Hi", text="{{ unsubscribe_url }}")
    trusted = outcome(LiquidRenderer(), step, contact(), enrolled)
    checked = outcome(
        LiquidRenderer(unsubscribe_url=lambda c, e: placeholder_unsubscribe_url(c, e)), step, contact(), enrolled
    )
    assert trusted == checked


def test_a_value_the_fast_path_cannot_print_compiles_once_and_counts_once() -> None:
    """Falling back to Liquid for a simple template is not another cache miss."""
    renderer = LiquidRenderer()
    step = Step(position=1, subject="Hi", text="Items: {{ items }}")
    for _ in range(3):
        rendered = outcome(renderer, step, contact(metadata={"items": [1, 2]}), enrollment())
        assert not isinstance(rendered, tuple)
        assert rendered.text is not None
        assert rendered.text.startswith("Items: 12\n\n")
    info = renderer.cache_info()
    assert (info.misses, info.hits, info.currsize) == (2, 4, 2)


def test_a_shared_renderer_counts_every_lookup_across_threads() -> None:
    """Several threads, a small cache: every lookup is a hit or a miss, the bound holds, outputs are right."""
    renderer = LiquidRenderer(cache_size=3)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(200):
                step = Step(position=1, subject=f"S{i % 5} {{{{ firstName }}}}", text=f"Body {worker % 2}")
                rendered = outcome(renderer, step, contact(), enrollment())
                assert not isinstance(rendered, tuple)
                assert rendered.subject == f"S{i % 5} Ana"
        except BaseException as exc:  # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    info = renderer.cache_info()
    assert info.hits + info.misses == 6 * 200 * 2
    assert info.currsize <= 3


# --------------------------------------------------------------------------- the limits' benchmark keeps working


def test_bench_render_limits_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_render_limits.py --quick prints its figures (no timing asserts)."""
    benchmarks = str(Path(__file__).resolve().parents[2] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import bench_render_limits
    finally:
        sys.path.remove(benchmarks)
    lines = bench_render_limits.main(["--quick"])
    assert capsys.readouterr().out.strip().splitlines() == lines
    assert len(lines) == 3 + len(bench_render_limits.ADVERSARIAL)
    assert all("x" in line for line in lines)  # each figure has its ratio
