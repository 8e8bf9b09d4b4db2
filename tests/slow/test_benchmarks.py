"""Every script in benchmarks/ keeps working: smoke runs at tiny sizes (no timing asserts).

bench_core, bench_sqlite, bench_delivery, and compare.py at N = 200 on every contender;
bench_postgres's smoke runs live with the PostgreSQL scale test (slow/test_postgres_scale.py),
bench_pickup's with the pickup tests (engine/test_pickup.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASE_LINE = re.compile(
    r"^\[0 ms, K=1\] [\d,]+ emails/s \(\d+ in [\d.]+ s, every one arrived once\); no latency floor.*"
    r"; CPU per email: worker [\d.]+ ms, server ([\d.]+ ms|n/a)$"
)


# --------------------------------------------------------------------------- bench_core


def test_bench_core_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_core
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    figures = bench_core.main(["--n", "300", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert "of floor" in lines[1]
    assert figures["advance_rate"] > 0


# --------------------------------------------------------------------------- bench_sqlite


def test_bench_sqlite_smoke(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A tiny population goes through every phase and prints one line per figure."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_sqlite
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    (figures,) = bench_sqlite.main(["--n", "500", "--dir", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9, lines
    settings, *figures_lines = lines
    assert settings.startswith("settings: SQLiteStore(cache_size_kib=")
    assert all("target" in line for line in figures_lines)
    assert "of a bare sqlite3 select+update loop" in figures_lines[3]
    assert figures["dispatch_steps"] == figures["floor_steps"] > 0
    assert figures["small_tick_size"] > 0
    assert "replayed on a bare connection" in figures_lines[5]
    assert figures["small_tick_sql_s"] > 0
    assert list(tmp_path.iterdir()) == [], "the benchmark cleans up its files"


# --------------------------------------------------------------------------- bench_delivery


@pytest.fixture
def bench_delivery() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_delivery
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_delivery


def test_bench_delivery_smoke(bench_delivery: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A few dozen emails go from SQLite to the SMTP server process and every one arrives once; the
    benchmark prints its settings, one line for the case and the Postfix comparison (or why it was skipped)."""
    (case,) = bench_delivery.main(["--quick", "--dir", str(tmp_path)])
    assert case["n"] == case["sent"] == case["arrived"] > 0
    assert case["repeats"] == 0
    settings, line, *postfix = capsys.readouterr().out.strip().splitlines()
    assert settings.startswith("settings: ")
    assert CASE_LINE.match(line), line
    if bench_delivery.postfix_tool("smtp-source") and bench_delivery.postfix_tool("smtp-sink"):
        assert "of one smtp-source session into smtp-sink" in line
        assert "target >= 50%" in line
        assert len(postfix) == 3, postfix
        assert all(p.startswith("[Postfix, 0 ms] ") and "emails/s" in p for p in postfix)
    else:
        assert len(postfix) == 1, postfix
        assert postfix[0].startswith("Postfix comparison at 0 ms skipped: ")
    assert list(tmp_path.iterdir()) == [], "the benchmark cleans up its files"


def test_bench_delivery_says_when_postfix_tools_are_absent(
    bench_delivery: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without smtp-source and smtp-sink the comparison is skipped with a line saying so, never silently."""
    monkeypatch.setattr(bench_delivery, "postfix_tool", lambda name: None)
    bench_delivery.main(["--quick", "--dir", str(tmp_path)])
    *_, line = capsys.readouterr().out.strip().splitlines()
    assert line == "Postfix comparison at 0 ms skipped: smtp-source and smtp-sink not found (Debian package postfix)"


# --------------------------------------------------------------------------- compare.py against the alternatives


@pytest.fixture(scope="module")
def compare() -> Any:
    pytest.importorskip("apscheduler", reason="APScheduler 3.x is needed (pip install -e '.[dev]')")
    pytest.importorskip("sqlalchemy", reason="SQLAlchemy is needed (pip install -e '.[dev]')")
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


# --------------------------------------------------------------------------- bench_enroll_many


def test_bench_enroll_many_smoke(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Drip.enroll_many and the bare bulk path both enroll everyone; one line with the share and its target."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_enroll_many
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    figures = bench_enroll_many.main(["--n", "200", "--repeats", "1", "--dir", str(tmp_path)])
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("[200] Drip.enroll_many: ")
    assert "of the bare path (pure enroll() + SQLiteStore.add_enrollments" in line
    assert "target >= 80%" in line
    assert figures["share"] > 0
