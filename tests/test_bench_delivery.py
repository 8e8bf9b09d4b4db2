"""benchmarks/bench_delivery.py keeps working: a smoke run (no timing asserts)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASE_LINE = re.compile(
    r"^\[0 ms, K=1\] [\d,]+ emails/s \(\d+ in [\d.]+ s, every one arrived once\); no latency floor.*"
    r"; CPU per email: worker [\d.]+ ms, server ([\d.]+ ms|n/a)$"
)


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
