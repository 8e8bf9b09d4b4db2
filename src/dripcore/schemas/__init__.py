"""JSON Schemas of dripcore's wire formats, shipped with the package as data files.

``events.json`` (JSON Schema draft 2020-12) describes the payload of every
lifecycle event, exactly as :func:`dripcore.serialization.event_to_json`
writes it and an :class:`~dripcore.ports.EventSink` (a webhook) receives it:
one definition per wire name under ``$defs``, chosen by the ``type`` field.

>>> schema = event_schema()
>>> schema["$defs"]["sequence.cancelled"]["required"]
['type', 'enrollment_id', 'sequence_id', 'contact_id', 'at', 'reason']
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["event_schema"]


def event_schema() -> dict[str, Any]:
    """The lifecycle-event JSON Schema (a fresh copy, safe to modify)."""
    schema: dict[str, Any] = json.loads(resources.files(__name__).joinpath("events.json").read_text("utf-8"))
    return schema
