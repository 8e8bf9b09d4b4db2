"""The code stays typed and tidy: mypy --strict and ruff run as part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(module: str) -> None:
    if (
        shutil.which(module) is None
        and subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True).returncode
    ):
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")


def test_mypy_strict_is_clean() -> None:
    _tool("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "src"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    _tool("ruff")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
