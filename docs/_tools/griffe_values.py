"""A Griffe extension that shows what users type: attrs constructors, fields, enum members, descriptors.

Griffe reads the source statically and knows nothing of attrs: a frozen attrs
class has no ``__init__`` in its source, so mkdocstrings rendered it with no
signature, and its fields, having no docstrings, were not rendered at all.
Enum members were hidden the same way.

The choice: this extension imports each documented class at build time and
asks the libraries themselves (``attrs.fields()``, the ``Enum`` members). We
considered ``griffe-fieldz`` (on the package index, and compatible with the
installed Griffe), but it only adds a docstring table, not the constructor
signature, and it parses docstrings before ``griffe_docstrings.py`` rewrites
their reST roles (``Docstring.parsed`` is cached, so those rewrites would be
lost). Asking attrs directly is exact (aliases of private fields, ``init=False``,
``kw_only``, inherited fields, factories) and adds no dependency. A class whose
module cannot be imported in the docs environment (an optional extra missing)
is left as Griffe read it.

For every class in ``dripcore``:

- an attrs class gets a synthesized ``__init__`` (so ``merge_init_into_class``
  shows ``Sequence(*, id: str, name: str, ...)``) and a *Fields* table: name,
  type, default and the field's description, taken from ``metadata={"doc": ...}``,
  an attribute docstring, a ``#:`` comment above the field, or else the clause
  of the class docstring that starts with the field's name (``"``lease``: how
  long a claim is held;"`` or ``"``timezone`` is the fallback zone ..."``). The
  field attributes themselves are then not rendered again as members;
- an Enum gets a *Members* table (name, value, description, found as a field's is);
- an attribute (of a class or a module) documented by a Sphinx-style ``#:``
  comment gets that comment as its docstring (``Store.capabilities``,
  ``MailSender.max_in_flight``, ``scheduler.TRANSITIONS``);
- an attribute made by a private generic descriptor, ``store = _Forwarded[Store]()``,
  is shown as what users see on an instance: ``store: Store``.

This extension must run after ``griffe_docstrings.py`` (listed after it in
``mkdocs.yml``): it parses the docstrings that one has rewritten.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import logging
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import griffe

log = logging.getLogger("mkdocs.plugins.dripcore_values")

_COMMENT_DOC = re.compile(r"^\s*#:\s?(?P<text>.*)$")
_MAX_DEFAULT = 60
# The description of each field documented so far, by its path: a subclass inherits its base's,
# whose attribute is gone from the tree once the base's table is made.
_FIELD_DOCS: dict[str, str] = {}


def _runtime(cls: griffe.Class) -> Any:
    """The class itself, imported, or None when its module can't be imported here."""
    try:
        return griffe.dynamic_import(cls.path)
    except Exception:  # an optional dependency missing, or a name only defined for type checkers
        return None


def _show(value: Any) -> str:
    """A short Python expression for a default value, as a user would write it."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, frozenset) and not value:
        return "frozenset()"
    if isinstance(value, timedelta):
        return _show_timedelta(value)
    if type(value).__module__ == "datetime":
        return repr(value).removeprefix("datetime.")
    if attrs.has(type(value)):
        given = []
        for field in attrs.fields(type(value)):
            if not field.init:
                continue
            current = getattr(value, field.name)
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                continue
            if default is not attrs.NOTHING and default == current:
                continue
            given.append(f"{field.alias}={_show(current)}")
        return f"{type(value).__name__}({', '.join(given)})"
    return repr(value)


def _show_timedelta(value: timedelta) -> str:
    whole = int(value.total_seconds())
    if value.microseconds or not whole:
        return repr(value).removeprefix("datetime.")
    for unit, seconds in (("weeks", 604_800), ("days", 86_400), ("hours", 3_600), ("minutes", 60), ("seconds", 1)):
        if whole % seconds == 0:
            return f"timedelta({unit}={whole // seconds})"
    raise AssertionError("unreachable: every whole number of seconds is some number of seconds")


def _default(field: attrs.Attribute[Any]) -> str | None:
    default = field.default
    if default is attrs.NOTHING:
        return None
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        factory = default.factory
        name = getattr(factory, "__qualname__", "")
        if name and "<" not in name and not isinstance(factory, type):
            return f"{name}()"  # a named factory says what it makes: Delay.immediately()
        if not default.takes_self:
            try:
                text = _show(factory())
            except Exception:  # a factory that needs more than nothing
                text = ""
            if text and len(text) <= _MAX_DEFAULT:
                return text
        return "<factory>"
    text = _show(default)
    return text if len(text) <= _MAX_DEFAULT else "..."


def _comment_doc(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above ``obj``'s definition, joined (Sphinx's attribute comments)."""
    if obj.lineno is None or obj.filepath is None or isinstance(obj.filepath, list):
        return None
    try:
        lines = obj.lines_collection[obj.filepath]
    except KeyError:
        return None
    found: list[str] = []
    index = obj.lineno - 2
    while index >= 0:
        match = _COMMENT_DOC.match(lines[index])
        if match is None:
            break
        found.insert(0, match["text"])
        index -= 1
    return "\n".join(found).strip() or None


def _docstring(owner: griffe.Object, text: str) -> griffe.Docstring:
    """A new docstring for ``owner``, parsed as the module's own docstrings are."""
    model = owner.module.docstring
    return griffe.Docstring(
        text,
        parent=owner,
        parser=model.parser if model else None,
        parser_options=model.parser_options if model else None,
    )


def _annotation(cls: griffe.Class, name: str, runtime_type: Any) -> str | griffe.Expr | None:
    member = cls.all_members.get(name)
    if isinstance(member, griffe.Attribute) and member.annotation is not None:
        return member.annotation
    if runtime_type is None:
        return None
    text = runtime_type if isinstance(runtime_type, str) else inspect.formatannotation(runtime_type)
    if cls.docstring is None:
        return text
    return griffe.parse_docstring_annotation(text, cls.docstring, log_level=griffe.LogLevel.debug)


def _clauses(text: str) -> list[str]:
    """The prose of a docstring cut into clauses, outside brackets and code: at sentence ends, and at a
    ``;`` that another code name follows (``"``sent``: ...; ``failed``: ..."``)."""
    prose = []
    for paragraph in text.split("\n\n"):
        if paragraph.lstrip().startswith(("```", ">>>", "    ")) or paragraph.rstrip().endswith(":"):
            continue  # code, doctests and what introduces them
        prose.append(" ".join(paragraph.split()))
    clauses: list[str] = []
    for paragraph in prose:
        depth, code, start = 0, False, 0
        for index, char in enumerate(paragraph):
            if char == "`":
                code = not code
            elif code:
                continue
            elif char in "([{":
                depth += 1
            elif char in ")]}":
                depth = max(depth - 1, 0)
            elif depth == 0 and (
                (char == ";" and paragraph[index + 1 :].lstrip().startswith("``"))
                or (char == "." and paragraph[index + 1 : index + 2] in ("", " ") and index > start)
            ):
                clauses.append(paragraph[start : index + 1].strip())
                start = index + 1
        clauses.append(paragraph[start:].strip())
    return [clause for clause in clauses if clause]


def _names_at_start(clause: str) -> tuple[list[str], str]:
    """The code names a clause opens with (```a```, ```a``/``b``` or ```a`` and ``b```), and the rest of it."""
    match = re.match(r"^((?:``\w+``(?:\s*/\s*|\s+and\s+|,\s*)?)+)(?P<rest>.*)$", clause)
    if match is None:
        return [], clause
    return re.findall(r"``(\w+)``", match.group(1)), match["rest"]


def _docstring_clause(cls: griffe.Class, name: str) -> str:
    """The clause of the class docstring about field ``name``: ```name``: what it is`` or ```name`` is ...``."""
    if cls.docstring is None:
        return ""
    for clause in _clauses(cls.docstring.value):
        names, rest = _names_at_start(clause)
        if name not in names:
            continue
        if rest.startswith(":"):
            text = rest[1:].strip()  # "``lease``: how long a claim is held"
            return text[:1].upper() + text[1:].rstrip(";").rstrip(".") + "."
        if rest.startswith(" "):
            return clause.rstrip(";").rstrip(".") + "."  # "``timezone`` is the fallback zone ..."
    return ""


def _inherited_doc(cls: griffe.Class, name: str) -> str:
    """The description a base class's table gave field ``name`` (the base's attribute is gone by then)."""
    try:
        bases = cls.mro()
    except ValueError:  # a base Griffe can't resolve, or an inconsistent hierarchy
        return ""
    for base in bases:
        if found := _FIELD_DOCS.get(f"{base.path}.{name}"):
            return found
    return ""


def _field_doc(cls: griffe.Class, field: attrs.Attribute[Any]) -> str:
    for key in ("doc", "description"):
        if isinstance(field.metadata.get(key), str):
            return inspect.cleandoc(field.metadata[key])
    # An inherited field's description is the base's.
    if field.name not in cls.members and (inherited := _inherited_doc(cls, field.name)):
        return inherited
    member = cls.all_members.get(field.name)
    if isinstance(member, griffe.Alias):
        try:
            member = member.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            member = None
    if isinstance(member, griffe.Attribute):
        if member.docstring:
            return member.docstring.value
        if comment := _comment_doc(member):
            return comment
    return _docstring_clause(cls, field.name)


def _section(cls: griffe.Class, section: griffe.DocstringSection) -> None:
    if cls.docstring is None:
        cls.docstring = _docstring(cls, "")
    cls.docstring.parsed.append(section)


def _document_attrs(cls: griffe.Class, runtime: type) -> None:
    fields = [field for field in attrs.fields(runtime) if not field.name.startswith("_") or field.init]
    rows = []
    for field in fields:
        if not field.init:
            continue
        description = _field_doc(cls, field)
        _FIELD_DOCS[f"{cls.path}.{field.name}"] = description
        rows.append(
            griffe.DocstringParameter(
                field.alias or field.name,
                description=description,
                annotation=_annotation(cls, field.name, field.type),
                value=_default(field),
            )
        )
    if "__init__" not in cls.members:
        self_parameter = griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
        parameters = [self_parameter]
        for field in fields:
            if not field.init:
                continue
            kind = griffe.ParameterKind.keyword_only if field.kw_only else griffe.ParameterKind.positional_or_keyword
            parameters.append(
                griffe.Parameter(
                    field.alias or field.name,
                    annotation=_annotation(cls, field.name, field.type),
                    kind=kind,
                    default=_default(field),
                )
            )
        init = griffe.Function("__init__", parent=cls, parameters=griffe.Parameters(*parameters), returns="None")
        init.labels.add("attrs")
        cls.set_member("__init__", init)
    if rows:
        _section(cls, griffe.DocstringSectionParameters(rows, title="Fields:"))
    for field in fields:  # the table shows them; don't render them a second time as members
        member = cls.members.get(field.name)
        if isinstance(member, griffe.Attribute):
            del cls.members[field.name]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _document_enum(cls: griffe.Class, runtime: type[enum.Enum]) -> None:
    # A text section's title is not rendered: write it as the other sections' titles are.
    rows = [
        '<p><span class="doc-section-title">Members:</span></p>',
        "",
        "| Member | Value | Description |",
        "|---|---|---|",
    ]
    for name, member in runtime.__members__.items():
        attribute = cls.members.get(name)
        doc = ""
        if isinstance(attribute, griffe.Attribute):
            doc = attribute.docstring.value if attribute.docstring else (_comment_doc(attribute) or "")
            del cls.members[name]
        doc = doc or _docstring_clause(cls, name)
        rows.append(f"| `{name}` | `{member.value!r}` | {_cell(doc)} |")
    _section(cls, griffe.DocstringSectionText("\n".join(rows), title="Members:"))


def _descriptor_type(attribute: griffe.Attribute) -> griffe.Expr | str | None:
    """``X`` for ``name = _Descriptor[X](...)``: what an instance's attribute holds."""
    value = attribute.value
    if not isinstance(value, griffe.ExprCall) or not isinstance(value.function, griffe.ExprSubscript):
        return None
    descriptor = value.function
    if not str(descriptor.left).rsplit(".", 1)[-1].startswith("_"):
        return None
    held = descriptor.slice
    if isinstance(held, str):
        text = held.strip("'\"")
        owner = attribute.docstring or attribute.parent.docstring  # type: ignore[union-attr]
        return griffe.parse_docstring_annotation(text, owner, log_level=griffe.LogLevel.debug) if owner else text
    return held


def _comment_docs(owner: griffe.Object) -> None:
    """Give each attribute of ``owner`` documented by a ``#:`` comment that comment as its docstring."""
    exports = {str(name) for name in owner.exports} if isinstance(owner, griffe.Module) and owner.exports else None
    for name, member in owner.members.items():
        if exports is not None and name not in exports:
            continue  # a module's own constant it does not export stays out of its reference
        if isinstance(member, griffe.Attribute) and member.docstring is None and (comment := _comment_doc(member)):
            member.docstring = _docstring(member, comment)


def _document_attributes(cls: griffe.Class, runtime: Any) -> None:
    _comment_docs(cls)
    for name, member in list(cls.members.items()):
        if not isinstance(member, griffe.Attribute):
            continue
        held = _descriptor_type(member)
        if held is not None:
            member.annotation = held
            member.value = None
            member.labels.discard("class-attribute")
            member.labels.add("instance-attribute")
            if runtime is not None and hasattr(type(inspect.getattr_static(runtime, name, None)), "__set__"):
                member.labels.add("writable")


class DripcoreValues(griffe.Extension):
    """Constructor signatures and fields of attrs classes, enum members, documented attributes."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Walk the loaded package once it is complete."""
        if pkg.name == "dripcore" and self._imports_what_griffe_read(pkg):
            _FIELD_DOCS.clear()
            self._walk(pkg, set())

    @staticmethod
    def _imports_what_griffe_read(pkg: griffe.Module) -> bool:
        """Import ``dripcore`` from where Griffe read it; warn (failing a strict build) when it can't."""
        if not isinstance(pkg.filepath, Path):
            return False
        source = pkg.filepath.parent.parent
        if "dripcore" not in sys.modules and str(source) not in sys.path:
            sys.path.insert(0, str(source))
        imported = Path(importlib.import_module("dripcore").__file__ or "").resolve()
        if imported != pkg.filepath.resolve():
            log.warning(
                "the docs read dripcore from %s but import it from %s: build with that source importable "
                "(PYTHONPATH=src, or pip install -e .) so signatures and fields match the code",
                pkg.filepath,
                imported,
            )
            return False
        return True

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if isinstance(obj, griffe.Class):
            self._class(obj)
        elif isinstance(obj, griffe.Module):
            _comment_docs(obj)
        for member in list(obj.members.values()):
            if isinstance(member, griffe.Alias) or not isinstance(member, (griffe.Module, griffe.Class)):
                continue
            self._walk(member, seen)

    @staticmethod
    def _class(cls: griffe.Class) -> None:
        runtime = _runtime(cls)
        _document_attributes(cls, runtime)
        if not isinstance(runtime, type):
            return
        try:
            if issubclass(runtime, enum.Enum):
                _document_enum(cls, runtime)
            elif attrs.has(runtime):
                _document_attrs(cls, runtime)
        except Exception as error:  # never let the reference of one class stop the build silently
            log.warning("could not document the fields of %s: %s", cls.path, error)
