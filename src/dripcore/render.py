"""Rendering step content for one contact.

:class:`SimpleRenderer` is the default: it substitutes ``{{ name }}`` variables
from the contact and the enrollment, HTML-escapes them in HTML bodies and
keeps subjects on one line. Variables: ``email``, ``firstName``/``FirstName``/
``first_name``, ``lastName``/``LastName``/``last_name``, every key of the
contact's metadata and of the enrollment's ``variables``. An unknown variable
renders as an empty string.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

from .errors import DripcoreError
from .model import Contact, Enrollment, Sequence, Step
from .ports import Rendered, Renderer

__all__ = ["RenderError", "SimpleRenderer", "template_variables"]

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")


class RenderError(DripcoreError):
    """A step could not be rendered; names the sequence and step."""

    def __init__(self, *, sequence_id: str, position: int, reason: str, line: int | None = None) -> None:
        self.sequence_id = sequence_id
        self.position = position
        self.line = line
        self.reason = reason
        where = f"sequence {sequence_id!r} step {position}" + (f" line {line}" if line is not None else "")
        super().__init__(f"{where}: {reason}")


def template_variables(contact: Contact, enrollment: Enrollment) -> dict[str, Any]:
    """The variables a step template can use, with the reference documents' spellings."""
    values: dict[str, Any] = {}
    values.update(contact.metadata)
    values.update(enrollment.variables)
    values.update(
        {
            "email": contact.email,
            "firstName": contact.first_name,
            "FirstName": contact.first_name,
            "first_name": contact.first_name,
            "lastName": contact.last_name,
            "LastName": contact.last_name,
            "last_name": contact.last_name,
        }
    )
    return values


def _substitute(template: str, values: Mapping[str, Any], escape: bool) -> str:
    def replace(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        text = "" if value is None else str(value)
        return html.escape(text) if escape else text

    return _VARIABLE.sub(replace, template)


class SimpleRenderer(Renderer):
    """``{{ variable }}`` substitution, HTML-escaped in HTML bodies, one-line subjects."""

    def render(self, step: Step, *, sequence: Sequence, contact: Contact, enrollment: Enrollment) -> Rendered:
        """Render ``step`` for ``contact``; template steps need a real template engine."""
        if step.template_id is not None and step.subject is None:
            raise RenderError(
                sequence_id=sequence.id, position=step.position,
                reason=f"template_id={step.template_id!r} needs a renderer with a template store",
            )  # fmt: skip
        values = template_variables(contact, enrollment)
        subject = " ".join(_substitute(step.subject or "", values, escape=False).split())
        return Rendered(
            subject=subject,
            html=None if step.html is None else _substitute(step.html, values, escape=True),
            text=None if step.text is None else _substitute(step.text, values, escape=False),
        )
