"""The README's main job and the benchmarks keep working (smoke runs, no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demo_prints_a_two_week_timeline() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dripcore", "demo"], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert "Welcome series step 1 sent: 'Welcome aboard, Ana'" in out
    assert "Mon 03-09 09:00  ana    completed Welcome series" in out  # 0 h, +24 h, +6 days
    assert "left Welcome series (unsubscribed)" in out
    assert "Welcome series step 1 FAILED (bounced)" in out
    assert "left Welcome series (bounced)" in out
    assert "Happy birthday Eve!" in out
    assert "8 emails delivered, 0 duplicates." in out
    # the DST preview: 24 hours is elapsed time, a calendar day keeps the local time
    assert "step 2 (   24 hours)  Sun 03-08 10:00 EDT local" in out
    assert "step 3 (      1 day)  Mon 03-09 10:00 EDT local" in out
    # the paused sequence's overdue step goes once, at resume
    resumed = out.index("resumed it")
    assert out.index("Post-purchase thank-you step 2 sent") > resumed


def test_demo_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from dripcore.adapters.memory import MemoryStore
    from dripcore.demo import run_demo

    drip = run_demo(MemoryStore())
    assert drip.stats("welcome").exited_by_reason == {"bounced": 1, "unsubscribed": 1}
    assert "completion rate" in capsys.readouterr().out


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
