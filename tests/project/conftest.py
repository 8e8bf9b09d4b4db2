"""Fixtures shared by the project tests: one strict build of the documentation site per session."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SiteBuild:
    """The outcome of ``mkdocs build --strict``: its exit code, its output, and where the site is."""

    returncode: int
    output: str
    site: Path

    def page(self, path: str) -> str:
        """The HTML of a built page, ``path`` relative to the site (``reference/api/model``)."""
        assert self.returncode == 0, self.output
        return (self.site / path / "index.html").read_text("utf-8")


@pytest.fixture(scope="session")
def site_build(tmp_path_factory: pytest.TempPathFactory) -> SiteBuild:
    """The documentation site, built once with ``--strict`` for every test that reads it."""
    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )
    return SiteBuild(result.returncode, result.stdout + result.stderr, site)
