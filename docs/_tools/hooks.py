"""MkDocs hooks: parts of pages that are computed from the code at build time.

A page writes a marker comment and the build puts the computed text in its place:

``<!-- dripcore:cli -->``
    The ``--help`` of ``python -m dripcore`` and of each of its subcommands,
    so the CLI reference lists exactly the commands that exist.
``<!-- dripcore:module dripcore.adapters.postgres -->``
    The API reference of that module if it exists, or a note that it has not
    landed yet. ``dripcore:module-doc`` shows the module's docstring only.
``<!-- dripcore:contract-groups -->``
    What the storage contract kit checks: one row per test group of
    ``StoreContract`` (its docstring, how many tests, what it needs), and the
    first paragraph of each test's docstring, folded. Read from the source with
    ``ast``, so it needs neither pytest nor Hypothesis and cannot go stale.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
from pathlib import Path
from typing import Any

_CLI = "<!-- dripcore:cli -->"
_CONTRACT = "<!-- dripcore:contract-groups -->"
_CONTRACT_SOURCE = Path(__file__).resolve().parents[2] / "src" / "dripcore" / "testing" / "contract.py"
_MODULE = re.compile(r"<!-- dripcore:(?P<kind>module|module-doc) (?P<module>[\w.]+) -->")


def _help(argv: list[str]) -> str:
    from dripcore.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue().rstrip()


def cli_reference() -> str:
    """Markdown for every command of ``python -m dripcore``, from argparse's own help."""
    top = _help(["--help"])
    match = re.search(r"\{([\w,-]+)\}", top)
    commands = match.group(1).split(",") if match else []
    parts = ["```text", "$ python -m dripcore --help", top, "```"]
    for command in commands:
        parts += ["", f"### `{command}`", "", "```text", f"$ python -m dripcore {command} --help"]
        parts += [_help([command, "--help"]), "```"]
    return "\n".join(parts)


def _module_reference(match: re.Match[str]) -> str:
    module = match["module"]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if found and match["kind"] == "module-doc":
        return f"::: {module}\n    options:\n      members: false\n      show_root_heading: false\n"
    if found:
        return f"::: {module}\n    options:\n      show_root_heading: true\n"
    return (
        f'!!! note "Not released yet"\n\n'
        f"    `{module}` has not landed in this version of dripcore. This page will show its\n"
        f"    reference, taken from the module's docstrings, as soon as it does.\n"
    )


def _first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n")[0].split())


def _calls(node: ast.AST, name: str) -> list[ast.Call]:
    return [
        call
        for call in ast.walk(node)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == name
    ]


def contract_groups(source: Path = _CONTRACT_SOURCE) -> str:
    """Markdown: the test groups ``StoreContract`` is made of, what each checks and needs."""
    tree = ast.parse(source.read_text("utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    whole = classes["StoreContract"]
    rows = ["| Group | What it checks | Tests | Runs only when |", "|---|---|---|---|"]
    details: list[str] = []
    for base in whole.bases:
        if not isinstance(base, ast.Name) or base.id not in classes:
            continue
        group = classes[base.id]
        tests = [node for node in group.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
        needs = sorted(
            {
                call.args[1].value
                for call in _calls(group, "require_capability")
                if len(call.args) > 1 and isinstance(call.args[1], ast.Constant)
            }
        )
        when = [f'the store declares `"{capability}"`' for capability in needs]
        arguments = {arg.arg for test in tests for arg in test.args.args}
        when += [f"a `{fixture}` fixture is given" for fixture in ("break_enrollment",) if fixture in arguments]
        doc = " ".join((ast.get_docstring(group) or "").split()).replace("|", "\\|")
        rows.append(f"| `{group.name}` | {doc} | {len(tests)} | {'; '.join(when) or 'always'} |")
        details += ["", f'??? note "{group.name}: its {len(tests)} checks"', ""]
        details += [
            f"    - {_first_paragraph(ast.get_docstring(test) or test.name.removeprefix('test_').replace('_', ' '))}"
            for test in tests
        ]
    return "\n".join([*rows, *details])


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the markers in a page with text computed from the code."""
    if _CLI in markdown:
        markdown = markdown.replace(_CLI, cli_reference())
    if _CONTRACT in markdown:
        markdown = markdown.replace(_CONTRACT, contract_groups())
    return _MODULE.sub(_module_reference, markdown)
