"""A Griffe extension that lets dripcore's reST-flavoured docstrings render well in MkDocs.

dripcore's docstrings are written for ``help()`` and Sphinx alike: they use
roles such as ``:class:`~dripcore.model.Sequence``` and doctest blocks.
This extension, loaded by mkdocstrings (see ``mkdocs.yml``), rewrites them
before they are rendered:

- a role naming a dripcore object becomes an *optional* cross-reference
  (a link when the object is on the site, plain code otherwise); any other
  role becomes inline code (``:pep:`` becomes a link to the PEP);
- a doctest block (``>>>`` lines and their output) becomes a ``pycon`` code
  block instead of a nested block quote;
- a reST literal-block marker (a paragraph ending in ``::``) keeps one colon.

It also warns, which fails ``mkdocs build --strict``, when a name listed in a
module's ``__all__`` is a class or function without a docstring.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import griffe

log = logging.getLogger("mkdocs.plugins.dripcore_docstrings")

_ROLE = re.compile(r":(?P<role>[a-z]+):`(?P<tilde>~?)(?P<target>[^`]+?)`")
_TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
_DOCTEST_START = re.compile(r"^(?P<indent>\s*)>>> ")


def _link(target: str, title: str) -> str:
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``'s scope, when it is a dripcore object."""
    head, _, rest = target.partition(".")
    candidates = [target] if target.startswith("dripcore.") else []
    scopes: list[griffe.Object] = [obj]
    if obj.parent is not None:
        scopes.append(obj.parent)
    for scope in scopes:
        try:
            resolved = scope.resolve(head)
        except Exception:  # griffe raises several kinds; any means "not in this scope"
            continue
        if resolved:
            candidates.append(f"{resolved}.{rest}" if rest else resolved)
            break
    for candidate in candidates:
        if not candidate.startswith("dripcore"):
            continue
        try:
            found = obj.modules_collection.get_member(candidate)
        except Exception:  # an unknown path
            continue
        if isinstance(found, griffe.Alias):
            try:
                return str(found.final_target.path)
            except Exception:  # an alias we cannot follow
                return None
        return str(found.path)
    return None


def _rewrite_roles(obj: griffe.Object, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        role, target = match["role"], match["target"].strip()
        if role == "pep":
            return f"[PEP {target}](https://peps.python.org/pep-{int(target):04d}/)"
        titled = _TITLED.match(target)
        if titled:
            title, target = titled["title"], titled["target"].lstrip("~")
        else:
            title = target.rsplit(".", 1)[-1] if match["tilde"] else target
            if role in {"meth", "func"}:
                title += "()"
        path = _resolve(obj, target)
        return _link(path, title) if path else f"`{title}`"

    return _ROLE.sub(replace, text)


def _fence_doctests(text: str) -> str:
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _DOCTEST_START.match(line)
        if match is None:
            out.append(line)
            i += 1
            continue
        indent = match["indent"]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


def _literal_markers(text: str) -> str:
    return re.sub(r"(?<=\S)::$", ":", re.sub(r"^::$", "", text, flags=re.M), flags=re.M)


class DripcoreDocstrings(griffe.Extension):
    """Rewrite reST roles and doctest blocks into Markdown; warn about undocumented exports."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Walk the loaded package once it is complete."""
        if pkg.name == "dripcore":
            self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            text = obj.docstring.value
            text = _fence_doctests(text)
            text = _literal_markers(text)
            obj.docstring.value = _rewrite_roles(obj, text)
        if isinstance(obj, griffe.Module):
            self._check_exports(obj)
        for member in obj.members.values():
            if isinstance(member, griffe.Alias):
                continue
            self._walk(member, seen)

    @staticmethod
    def _check_exports(module: griffe.Module) -> None:
        for name in module.exports or ():
            member = module.members.get(str(name))
            if member is None or isinstance(member, griffe.Alias):
                continue
            if member.kind in (griffe.Kind.CLASS, griffe.Kind.FUNCTION) and not member.docstring:
                log.warning("%s.%s is exported in __all__ but has no docstring", module.path, name)
