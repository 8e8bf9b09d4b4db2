"""benchmarks/compare.py keeps working: a smoke run at N = 200 on every contender (no timing asserts)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("apscheduler", reason="APScheduler 3.x is needed (pip install -e '.[dev]')")
pytest.importorskip("sqlalchemy", reason="SQLAlchemy is needed (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compare() -> Any:
    import apscheduler

    if not apscheduler.__version__.startswith("3."):
        pytest.skip(f"compare.py drives APScheduler 3.x, not {apscheduler.__version__}")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return compare


@pytest.fixture(scope="module")
def quick(compare: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[str]]:
    tmp = tmp_path_factory.mktemp("compare")
    results = compare.main(["--quick", "--tmpdir", str(tmp), "--save", str(tmp / "results.json")])
    return {**results, "saved_to": tmp / "results.json"}, compare.report(results)


def test_every_contender_hands_each_due_step_over_once(quick: tuple[dict[str, Any], list[str]]) -> None:
    """dripcore and APScheduler with misfire_grace_time=None send every due step exactly once, and nothing else."""
    results, _ = quick
    for contender in ("dripcore", "apscheduler"):
        figures = results["main"][contender]["200"]
        assert figures["due"] == 40
        assert (figures["sent"], figures["duplicates"], figures["unexpected"]) == (40, 0, 0), contender
        assert figures["enroll_rate"] > 0
        assert figures["dispatch_rate"] > 0
        assert figures["peak_mib"] > 0
    defaults = results["main"]["apscheduler-defaults"]["200"]
    assert defaults["sent"] + defaults["dropped"] == defaults["due"]
    assert results["bulk"]["200"]["enroll_rate"] > 0


def test_dripcore_neither_doubles_nor_drops_nor_bursts_after_downtime(
    quick: tuple[dict[str, Any], list[str]],
) -> None:
    """After the worker was down, dripcore sends every step once, in order, each its delay after the previous."""
    results, _ = quick
    down = results["downtime"]["dripcore"]
    assert down["sent"] == 3 * down["n"]
    assert (down["duplicates"], down["dropped"], down["burst_contacts"], down["out_of_order_contacts"]) == (0, 0, 0, 0)
    assert results["downtime"]["apscheduler"]["sent"] + results["downtime"]["apscheduler"]["dropped"] >= 3 * down["n"]


def test_one_summary_line_per_figure_with_its_ratio(quick: tuple[dict[str, Any], list[str]]) -> None:
    """The report names each figure once, with the ratio dripcore / alternative."""
    _, lines = quick
    assert [line.split(" ", 1)[0] for line in lines] == [
        "enroll", "dispatch", "peak", "correct", "import", "downtime", "downtime", "downtime",
    ]  # fmt: skip
    assert "x (target >= 50x)" in lines[0]
    assert "x (target >= 50x)" in lines[1]


def test_saved_results_render_the_docs_block(
    compare: Any, quick: tuple[dict[str, Any], list[str]], tmp_path: Path
) -> None:
    """--load reproduces the report, and the docs block is replaced between its markers only."""
    results, lines = quick
    reloaded = compare.main(["--load", str(results["saved_to"])])
    assert compare.report(reloaded) == lines
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\nprose\n\n{compare.FIGURES_START}\nold\n{compare.FIGURES_END}\n\nmore prose\n")
    compare.replace_figures(page, compare.figures_block(results, lines, "img/benchmarks.png"))
    text = page.read_text()
    assert "old" not in text
    assert text.startswith("# Benchmarks\n\nprose\n")
    assert text.endswith("more prose\n")
    assert "| dripcore | 200 |" in text
    assert lines[0] in text


def test_the_plot_is_drawn(compare: Any, quick: tuple[dict[str, Any], list[str]], tmp_path: Path) -> None:
    """--write-docs draws a PNG (skipped without matplotlib, which only the 'bench' extra installs)."""
    pytest.importorskip("matplotlib", reason="matplotlib comes with the 'bench' extra")
    results, _ = quick
    compare.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
