"""MemoryTemplateStore: the templates of ``template_id`` steps, kept in a dict (for tests and small hosts)."""

from __future__ import annotations

from collections.abc import Mapping

from ..ports import Template, TemplateStore

__all__ = ["MemoryTemplateStore"]


class MemoryTemplateStore(TemplateStore):
    """Templates in a dict, for tests and small hosts.

    >>> store = MemoryTemplateStore({"welcome": Template(subject="Hi", text="Welcome, {{ firstName }}!")})
    >>> store.get("welcome").subject
    'Hi'
    """

    def __init__(self, templates: Mapping[str, Template] | None = None) -> None:
        self._templates: dict[str, Template] = dict(templates or {})

    def put(self, template_id: str, template: Template) -> None:
        """Add or replace a template."""
        self._templates[template_id] = template

    def get(self, template_id: str) -> Template | None:
        """The template with that id, or None."""
        return self._templates.get(template_id)
