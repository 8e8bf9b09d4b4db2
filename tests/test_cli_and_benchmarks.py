"""The README's main job and the benchmarks keep working (smoke runs, no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demo_prints_the_welcome_series_timeline() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dripcore", "demo"], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert "step 1: Welcome aboard" in out
    assert "Tue 2026-03-03 09:00 UTC  step 2" in out
    assert "Mon 2026-03-09 09:00 UTC  step 3" in out
    assert "completed" in out


def test_bench_core_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_core
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    figures = bench_core.main(["--n", "300", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert "of floor" in lines[1]
    assert figures["advance_rate"] > 0
