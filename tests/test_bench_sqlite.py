"""benchmarks/bench_sqlite.py keeps working: a smoke run (no timing asserts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
