"""The API reference shows what users type: constructors and fields, enum members, attributes, the kit's hooks.

Every test reads the site built once per session (``site_build`` in conftest.py).
"""

from __future__ import annotations

import enum
import html
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from .conftest import SiteBuild

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "reference" / "api"
DIRECTIVE = re.compile(r"^::: (?P<path>dripcore[\w.]*)$", re.M)
HEADING_ID = re.compile(r'<h\d id="(?P<id>dripcore[\w.]*)"')


def documented_modules() -> list[tuple[str, str]]:
    """(page, module) for each whole module an API page renders with ``::: module``."""
    found = []
    for page in sorted(API.glob("*.md")):
        text = page.read_text("utf-8")
        for match in DIRECTIVE.finditer(text):
            after = text[match.end() : match.end() + 200]
            if "members: false" in after.split(":::")[0]:
                continue  # the module's docstring only
            try:
                importlib.import_module(match["path"])
            except ImportError:
                continue  # a class or function, not a module
            found.append((f"reference/api/{page.stem}", match["path"]))
    return found


def public(kind: str) -> Iterator[tuple[str, str, Any]]:
    """(page, path, class) for each exported attrs class (``kind="attrs"``) or Enum of the documented modules."""
    for page, name in documented_modules():
        module = importlib.import_module(name)
        for export in getattr(module, "__all__", ()):
            value = getattr(module, export)
            if not isinstance(value, type):
                continue
            if (kind == "attrs" and attrs.has(value)) or (kind == "enum" and issubclass(value, enum.Enum)):
                yield page, f"{name}.{export}", value


def entry(page: str, path: str) -> str:
    """The HTML of one object's entry: from its heading to the heading of the next object that is not its member."""
    start = page.find(f'id="{path}"')
    assert start >= 0, f"{path} has no entry"
    for match in HEADING_ID.finditer(page, start + 1):
        if not match["id"].startswith(f"{path}."):
            return page[start : match.start()]
    return page[start:]


def text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


ATTRS_CLASSES = list(public("attrs"))
ENUMS = list(public("enum"))


def test_the_reference_finds_what_to_check() -> None:
    """A guard against a scan that finds nothing."""
    paths = {path for _, path, _ in ATTRS_CLASSES}
    assert {"dripcore.model.Sequence", "dripcore.engine.TickReport", "dripcore.ports.OutboxMessage"} <= paths
    assert "dripcore.model.ExitReason" in {path for _, path, _ in ENUMS}


@pytest.mark.parametrize(("page", "path", "cls"), ATTRS_CLASSES, ids=[path for _, path, _ in ATTRS_CLASSES])
def test_every_attrs_class_shows_its_constructor_and_fields(
    site_build: SiteBuild, page: str, path: str, cls: type
) -> None:
    html_entry = entry(site_build.page(page), path)
    fields = [field.alias for field in attrs.fields(cls) if field.init]
    signature = text(html_entry.split('class="doc-signature', 1)[1].split("</code>", 1)[0]) if fields else ""
    shown = text(html_entry)
    for name in fields:
        assert re.search(rf"\b{name}\b", signature), f"{path}: {name} is not in the signature {signature!r}"
        assert f"<code>{name}</code>" in html_entry, f"{path}: {name} is not in the fields table"
    if fields:
        assert "Fields:" in shown


def test_the_sequence_entry_shows_steps_with_type_and_default(site_build: SiteBuild) -> None:
    shown = text(entry(site_build.page("reference/api/model"), "dripcore.model.Sequence"))
    assert "steps: tuple[Step, ...] = ()" in shown
    assert "status: SequenceStatus = SequenceStatus.DRAFT" in shown


def test_a_field_described_in_its_class_docstring_has_that_description(site_build: SiteBuild) -> None:
    shown = text(entry(site_build.page("reference/api/engine"), "dripcore.engine.Limits"))
    assert "lease: timedelta = timedelta(minutes=5)" in shown
    assert "How long a claim is held" in shown


@pytest.mark.parametrize(("page", "path", "cls"), ENUMS, ids=[path for _, path, _ in ENUMS])
def test_every_enum_lists_its_members_and_values(site_build: SiteBuild, page: str, path: str, cls: Any) -> None:
    html_entry = entry(site_build.page(page), path)
    assert "Members:" in html_entry
    for member in cls:
        assert f"<code>{member.name}</code>" in html_entry, f"{path}.{member.name} is not listed"
        assert html.escape(repr(member.value)) in html_entry or repr(member.value) in text(html_entry)


DESCRIBED = ATTRS_CLASSES + ENUMS
TABLE = re.compile(r"<table>(?P<table>.*?)</table>", re.S)
ROW = re.compile(r"<tr[^>]*>(?P<row>.*?)</tr>", re.S)
CELL = re.compile(r"<t[hd][^>]*>(?P<cell>.*?)</t[hd]>", re.S)


def described(html_entry: str) -> dict[str, str]:
    """Name -> description cell of each row of an entry's own Fields or Members table."""
    nested = HEADING_ID.search(html_entry, 1)
    own = html_entry if nested is None else html_entry[: nested.start()]
    found = {}
    for table in TABLE.finditer(own):
        rows = [[" ".join(text(cell).split()) for cell in CELL.findall(row)] for row in ROW.findall(table["table"])]
        if not rows or rows[0][:1] not in (["Name"], ["Member"]) or "Description" not in rows[0]:
            continue
        column = rows[0].index("Description")
        found.update({row[0]: row[column] for row in rows[1:] if len(row) > column})
    return found


@pytest.mark.parametrize(("page", "path", "cls"), DESCRIBED, ids=[path for _, path, _ in DESCRIBED])
def test_every_field_and_member_has_a_description(site_build: SiteBuild, page: str, path: str, cls: Any) -> None:
    """A new field or enum member without a docstring below it would show an empty description cell."""
    cells = described(entry(site_build.page(page), path))
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        names = list(cls.__members__)
    else:
        names = [field.alias for field in attrs.fields(cls) if field.init]
    assert set(names) <= set(cells), f"{path}: not in its table: {sorted(set(names) - set(cells))}"
    missing = [name for name in names if not cells[name]]
    assert not missing, f"{path}: no description for {missing}; give each a docstring right below it"


def test_exit_reason_lists_unsubscribed(site_build: SiteBuild) -> None:
    shown = text(entry(site_build.page("reference/api/model"), "dripcore.model.ExitReason"))
    assert "UNSUBSCRIBED" in shown
    assert "'unsubscribed'" in shown


@pytest.mark.parametrize(
    ("attribute", "kind"),
    [("store", "Store"), ("sender", "MailSender"), ("contacts", "ContactDirectory"), ("clock", "Clock")],
)
def test_the_engine_page_documents_drips_attributes_with_their_types(
    site_build: SiteBuild, attribute: str, kind: str
) -> None:
    shown = text(entry(site_build.page("reference/api/engine"), f"dripcore.engine.Drip.{attribute}"))
    assert f"{attribute}: {kind}" in shown
    assert "_Forwarded" not in shown


@pytest.mark.parametrize(
    "path",
    [
        "dripcore.ports.Store.capabilities",
        "dripcore.ports.MailSender.max_in_flight",
        "dripcore.ports.MailSender.honours_idempotency_keys",
    ],
)
def test_the_ports_page_documents_the_class_attributes(site_build: SiteBuild, path: str) -> None:
    shown = text(entry(site_build.page("reference/api/ports"), path))
    assert len(shown.split()) > 8, f"{path} has no description: {shown!r}"


def test_the_testing_page_shows_the_kits_hooks_and_groups_not_its_test_methods(site_build: SiteBuild) -> None:
    page = site_build.page("reference/api/testing")
    ids = HEADING_ID.findall(page)
    assert not [found for found in ids if ".test_" in found]
    assert not re.search(r"<h\d[^>]*>[^<]*test_", page)
    for hook in ("StoreContract.store", "StoreContract.store_factory", "StoreStateMachine.make_store"):
        assert f"dripcore.testing.contract.{hook}" in ids
    from dripcore.testing.contract import StoreContract

    for group in StoreContract.__bases__:
        assert f"<code>{group.__name__}</code>" in page, f"the kit's {group.__name__} is not described"
