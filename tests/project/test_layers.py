"""The import layers hold: no module imports upward, the pure core touches no I/O, nobody borrows privates.

The layers are drawn in docs/explanation/architecture.md; this file is what keeps that drawing true.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. A module may import from its own layer or a lower one, never from a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("dripcore._version", "dripcore.errors"),
    ("dripcore.model",),
    ("dripcore._checks", "dripcore.serialization", "dripcore.schemas", "dripcore.scheduler",
     "dripcore.planning", "dripcore.prefabs"),
    ("dripcore.ports",),
    ("dripcore.render",),
    ("dripcore.adapters", "dripcore.senders", "dripcore.warmup", "dripcore.unsubscribe"),
    ("dripcore.engine",),
    ("dripcore.testing", "dripcore.demo"),
    ("dripcore.__main__", "dripcore"),
)  # fmt: skip

# The pure core decides; it never waits, reads a clock, a file, a socket or a database.
PURE = ("dripcore.model", "dripcore.scheduler", "dripcore.planning", "dripcore.serialization", "dripcore.prefabs")
IO_MODULES = frozenset(
    {"asyncio", "concurrent", "http", "os", "random", "secrets", "select", "selectors", "shutil", "smtplib",
     "socket", "sqlite3", "ssl", "subprocess", "threading", "time", "urllib", "psycopg"}
)  # fmt: skip


def _module_name(path: Path) -> tuple[str, list[str]]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), parts
    return ".".join(parts), parts[:-1]


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports() -> Iterator[tuple[str, str, str, int]]:
    """(importer, imported module, imported name or '*', line) for every import in src/dripcore."""
    for path in sorted((SRC / "dripcore").rglob("*.py")):
        module, package = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield module, alias.name, "*", node.lineno
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    if target.startswith("dripcore") and _is_module(submodule):
                        yield module, submodule, "*", node.lineno
                    else:
                        yield module, target, alias.name, node.lineno


def _layer(module: str) -> int:
    best, rank = -1, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            # The top package is a layer of its own (its __init__), not a prefix that takes in every module.
            inside = module == name or (name != "dripcore" and module.startswith(name + "."))
            if inside and len(name) > best:
                best, rank = len(name), index
    return rank


def _unit(module: str) -> str:
    """The layer entry a module belongs to (a package and everything under it are one unit)."""
    return max(
        (n for names in LAYERS for n in names if module == n or (n != "dripcore" and module.startswith(n + "."))),
        key=len,
    )


def test_every_module_has_a_layer() -> None:
    """A new module is placed in a layer on purpose, not by accident."""
    modules = {_module_name(path)[0] for path in (SRC / "dripcore").rglob("*.py")}
    assert [m for m in sorted(modules) if _layer(m) < 0] == []


def test_no_module_imports_from_a_higher_layer() -> None:
    """Adapters depend on ports and model, never on the engine; the core never on anything above it."""
    upward = [
        f"{importer}:{line} imports {target} (layer {_layer(target)} > {_layer(importer)})"
        for importer, target, _, line in _imports()
        if target.startswith("dripcore") and _unit(importer) != _unit(target) and _layer(target) > _layer(importer)
    ]
    assert upward == []


@pytest.mark.parametrize("pure", PURE)
def test_the_pure_core_touches_no_clock_file_socket_or_database(pure: str) -> None:
    """model, scheduler, planning and serialization only compute: I/O belongs to the engine and adapters."""
    found = [
        f"{importer}:{line} imports {target}"
        for importer, target, _, line in _imports()
        if (importer == pure or importer.startswith(pure + ".")) and target.split(".")[0] in IO_MODULES
    ]
    assert found == []


def test_nothing_borrows_another_modules_private_names() -> None:
    """A private name or module is used only inside its own package."""
    borrowed = []
    for importer, target, name, line in _imports():
        if not target.startswith("dripcore"):
            continue
        private_parts = [i for i, part in enumerate(target.split(".")) if part.startswith("_") and part != "__main__"]
        if private_parts:
            owner = ".".join(target.split(".")[: private_parts[0]])
            if not (importer == owner or importer.startswith(owner + ".")):
                borrowed.append(f"{importer}:{line} imports the private module {target}")
        if name != "*" and name.startswith("_") and name != "__version__":
            owner_is_private_helper = target.rsplit(".", 1)[-1].startswith("_")
            same_package = importer.rsplit(".", 1)[0] == target.rsplit(".", 1)[0]
            if not (owner_is_private_helper and same_package):
                borrowed.append(f"{importer}:{line} imports {name} from {target}")
    assert borrowed == []
