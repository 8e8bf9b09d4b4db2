"""MkDocs hooks: parts of pages that are computed from the code at build time.

A page writes a marker comment and the build puts the computed text in its place:

``<!-- dripcore:cli -->``
    The ``--help`` of ``python -m dripcore`` and of each of its subcommands,
    so the CLI reference lists exactly the commands that exist.
``<!-- dripcore:module dripcore.adapters.postgres -->``
    The API reference of that module if it exists, or a note that it has not
    landed yet. ``dripcore:module-doc`` shows the module's docstring only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from typing import Any

_CLI = "<!-- dripcore:cli -->"
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


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the markers in a page with text computed from the code."""
    if _CLI in markdown:
        markdown = markdown.replace(_CLI, cli_reference())
    return _MODULE.sub(_module_reference, markdown)
