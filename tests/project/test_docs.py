"""The documentation builds strictly, its pictures match the code, and its code blocks run."""

from __future__ import annotations

import inspect
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import dripcore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.prefabs import PREFABS
from dripcore.scheduler import SEQUENCE_STARTS, SEQUENCE_TRANSITIONS, TRANSITIONS
from dripcore.senders import SMTPSender

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_tools"))

import pictures  # noqa: E402

from .conftest import SiteBuild  # noqa: E402

SKIP_MARK = "<!-- docs-test: skip -->"
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$', re.M)


def python_blocks(page: Path) -> list[tuple[int, str, bool]]:
    """The page's ```python blocks as (line, code, skipped), snippets expanded as the site does."""
    text = page.read_text("utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if match["info"].strip().split(" ")[0] != "python":
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        body = "\n".join(row[len(match["indent"]) :] for row in match["body"].split("\n"))
        body = SNIPPET.sub(lambda m: (ROOT / m["path"]).read_text("utf-8"), body)
        blocks.append((line, body, before == SKIP_MARK))
    return blocks


PAGES = sorted(p for p in [*DOCS.rglob("*.md"), ROOT / "README.md"] if python_blocks(p))


# --------------------------------------------------------------------------- the site


def test_the_site_builds_strictly(site_build: SiteBuild) -> None:
    """A broken link or anchor, a missing page, an undocumented export or a bad docstring fails the build."""
    assert site_build.returncode == 0, site_build.output
    api = site_build.page("reference/api/engine")
    assert 'id="dripcore.engine.Drip"' in api  # the API reference is really there


# --------------------------------------------------------------------------- pictures


def test_committed_pictures_are_what_the_code_draws_now() -> None:
    """Regenerating every picture gives the committed bytes (run docs/_tools/pictures.py to update)."""
    for name, content in pictures.pictures().items():
        committed = (DOCS / "diagrams" / name).read_bytes()
        assert committed == content.encode("utf-8"), f"docs/diagrams/{name} is stale: python docs/_tools/pictures.py"


def _drawn(name: str) -> tuple[set[tuple[str, str, str]], set[str], set[str]]:
    """The edges (status, action, target), the start states and the final states of a committed diagram."""
    text = (DOCS / "diagrams" / name).read_text("utf-8")
    edges = set()
    for source, target, label in re.findall(r"^\s+(\w+) --> (\w+): (.+)$", text, re.M):
        edges |= {(source, action.strip(), target) for action in label.split(",")}
    starts = set(re.findall(r"^\s+\[\*\] --> (\w+)", text, re.M))
    finals = set(re.findall(r"^\s+(\w+) --> \[\*\]$", text, re.M))
    return edges, starts, finals


def _table(table: Any) -> set[tuple[str, str, str]]:
    return {(status.value, action.value, to.value) for status, row in table.items() for action, to in row.items()}


def test_the_state_diagram_has_exactly_the_transitions_of_the_table() -> None:
    edges, starts, finals = _drawn("enrollment-states.mmd")
    assert edges == _table(TRANSITIONS)
    assert starts == {"active"}
    assert finals == {status.value for status, row in TRANSITIONS.items() if not row}


def test_the_sequence_diagram_has_exactly_the_transitions_of_its_table() -> None:
    edges, starts, finals = _drawn("sequence-states.mmd")
    assert edges == _table(SEQUENCE_TRANSITIONS)
    assert starts == {status.value for status in SEQUENCE_STARTS}
    assert finals == {status.value for status, row in SEQUENCE_TRANSITIONS.items() if set(row.values()) <= {status}}


def test_the_state_diagrams_are_on_the_explanation_page() -> None:
    page = (DOCS / "explanation" / "advance.md").read_text("utf-8")
    for name in ("enrollment-states.mmd", "sequence-states.mmd"):
        assert f'--8<-- "docs/diagrams/{name}"' in page


def test_every_prefab_has_a_timeline_in_the_docs() -> None:
    page = (DOCS / "reference" / "prefabs.md").read_text("utf-8")
    for name in PREFABS:
        assert f"diagrams/prefab-{name}.svg" in page


# --------------------------------------------------------------------------- code blocks


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each page's ```python blocks run in order, in one namespace, in an empty directory; then
    again, in a fresh namespace in the same directory, with the first run's files in place.

    The second run is what a reader does who pastes a page twice, or the tutorial after the
    README: a ``drip.db`` left behind must not break it. A block right after
    ``<!-- docs-test: skip -->`` (one that needs Django, say) is only compiled.
    """
    blocks = python_blocks(page)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        # Newer Starlette prefers httpx2 for FastAPI's test client, and says so on import.
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        for run in ("first run", "second run"):
            namespace: dict[str, Any] = {"__name__": f"docs:{page.name}"}
            for line, code, skipped in blocks:
                compiled = compile(code, f"{page.relative_to(ROOT)}:{line} ({run})", "exec")
                if not skipped:
                    exec(compiled, namespace)
            _close_stores(namespace)


def _close_stores(namespace: dict[str, Any]) -> None:
    """Close what a page left open (a store a page did not close would hold the file)."""
    for value in namespace.values():
        if isinstance(value, dripcore.Drip):
            value.store.close()


def test_docs_blocks_are_found() -> None:
    """The extractor sees the tutorial's blocks (a guard against a regex that matches nothing)."""
    assert len(python_blocks(DOCS / "tutorial.md")) >= 5


# --------------------------------------------------------------------------- reference pages follow the code


@pytest.mark.parametrize("target", [dripcore.Drip, SQLiteStore, SMTPSender], ids=lambda t: t.__name__)
def test_the_configuration_page_lists_every_parameter(target: type) -> None:
    page = (DOCS / "reference" / "configuration.md").read_text("utf-8")
    for name in inspect.signature(target).parameters:
        assert f"`{name}`" in page, f"{target.__name__}({name}=...) is not in docs/reference/configuration.md"


def test_the_events_page_shows_every_event() -> None:
    page = (DOCS / "reference" / "events.md").read_text("utf-8")
    for cls in dripcore.model.EVENT_TYPES.values():
        assert f"`{cls.wire_name}`" in page
        assert cls.__name__ in page
