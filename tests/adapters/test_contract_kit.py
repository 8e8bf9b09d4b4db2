"""The contract kit itself: importable without pytest, visible skips, and it catches a broken store."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_fakes_loads_neither_pytest_nor_hypothesis() -> None:
    """``import dripcore.testing`` works in a production environment; the kit loads on first use."""
    code = (
        "import sys, dripcore.testing\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('pytest', 'hypothesis', '_pytest')]\n"
        "from dripcore.testing import StoreContract\n"
        "assert 'pytest' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _run_kit(tmp_path: Path, body: str) -> str:
    module = tmp_path / "test_adapter.py"
    module.write_text(textwrap.dedent(body))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(module)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    return result.stdout + result.stderr


def test_a_missing_capability_is_skipped_visibly(tmp_path: Path) -> None:
    """A one-process store gets explicit skips that name the capability, not silent passes."""
    out = _run_kit(
        tmp_path,
        """
        import pytest
        from dripcore.adapters.memory import MemoryStore
        from dripcore.testing.contract import MultiprocessContract

        class TestOneProcess(MultiprocessContract):
            @pytest.fixture
            def store(self):
                yield MemoryStore()
        """,
    )
    assert re.search(r"\b\d+ skipped in", out), out
    assert "passed" not in out, out  # every multiprocess test skips
    assert "failed" not in out, out
    assert "store does not declare capability 'multiprocess'" in out, out


def test_the_kit_catches_a_store_that_forgets_to_clear_leases(tmp_path: Path) -> None:
    """A store whose commit keeps the claim's lease fails the lease tests, and says which."""
    out = _run_kit(
        tmp_path,
        """
        import pytest
        from dripcore.adapters.memory import MemoryStore
        from dripcore.testing.contract import StoreContract

        class LeakyStore(MemoryStore):
            def commit(self, changes, *, owner=None):
                leases = dict(self._leases)
                refused = super().commit(changes, owner=owner)
                self._leases.update(leases)
                return refused

        class TestLeaky(StoreContract):
            @pytest.fixture
            def store(self):
                yield LeakyStore()
        """,
    )
    assert "1 failed" in out, out
    assert "test_commit_clears_the_lease" in out, out
