"""Generate the documentation's pictures from the code, so they can't drift from it.

- ``docs/diagrams/enrollment-states.mmd``: a Mermaid state diagram of
  :data:`dripcore.scheduler.TRANSITIONS`, the enrollment state machine.
- ``docs/diagrams/sequence-states.mmd``: the same for
  :data:`dripcore.scheduler.SEQUENCE_TRANSITIONS`, the sequence state machine.
- ``docs/diagrams/prefab-<name>.svg``: a timeline of each prefab in
  :data:`dripcore.prefabs.PREFABS` for a sample contact, computed with
  :func:`dripcore.preview`.

Run ``python docs/_tools/pictures.py`` after changing the scheduler or a
prefab; ``--check`` exits 1 if a committed picture is out of date. The test
suite (``tests/project/test_docs.py``) regenerates them and compares the bytes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from dripcore import Contact, Delay, EnrollmentStatus, PlannedStep, Sequence, preview
from dripcore.prefabs import PREFABS
from dripcore.scheduler import SEQUENCE_STARTS, SEQUENCE_TRANSITIONS, TRANSITIONS, SequenceAction

DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"

#: The contact every prefab timeline is drawn for.
SAMPLE_CONTACT = Contact(id="ana", email="ana@example.com", first_name="Ana", timezone="Europe/Lisbon")

#: When the sample contact enters each prefab: the moment its trigger fires. The
#: birthday sweep enrolls at 00:00 UTC of the birthday (see Drip.sweep_anniversaries).
SAMPLE_STARTS: Mapping[str, datetime] = {
    "welcome": datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc),
    "post-purchase": datetime(2026, 3, 2, 14, 5, tzinfo=timezone.utc),
    "birthday": datetime(2026, 3, 9, 0, 0, tzinfo=timezone.utc),
}

#: How the trigger is described on each timeline.
TRIGGER_LABELS: Mapping[str, str] = {
    "welcome": "tag added",
    "post-purchase": "purchase",
    "birthday": "birthday sweep",
}


# --------------------------------------------------------------------------- state diagram


def state_diagram() -> str:
    """Mermaid ``stateDiagram-v2`` text for :data:`~dripcore.scheduler.TRANSITIONS`.

    Every (status, action) entry of the table becomes an edge; actions that
    lead between the same two statuses share one edge label. Statuses with an
    empty row are terminal and lead to the end state.
    """
    return _mermaid({EnrollmentStatus.ACTIVE: "enroll"}, TRANSITIONS)


def sequence_diagram() -> str:
    """Mermaid ``stateDiagram-v2`` text for :data:`~dripcore.scheduler.SEQUENCE_TRANSITIONS`.

    Drawn like :func:`state_diagram`; a new sequence starts in one of
    :data:`~dripcore.scheduler.SEQUENCE_STARTS`, and a status whose row leads
    nowhere else is final.
    """
    starts = {status: SequenceAction.CREATE.value for status in SEQUENCE_TRANSITIONS if status in SEQUENCE_STARTS}
    return _mermaid(starts, SEQUENCE_TRANSITIONS)


def _mermaid(starts: Mapping[Any, str], table: Mapping[Any, Mapping[Any, Any]]) -> str:
    """A state diagram of ``table`` (status -> action -> status), entered at ``starts``."""
    lines = ["stateDiagram-v2", "    direction LR"]
    lines += [f"    [*] --> {status.value}: {label}" for status, label in starts.items()]
    for status, row in table.items():
        grouped: dict[Any, list[Any]] = {}
        for action, target in row.items():
            grouped.setdefault(target, []).append(action)
        for target, actions in grouped.items():
            label = ", ".join(action.value for action in actions)
            lines.append(f"    {status.value} --> {target.value}: {label}")
        if set(grouped) <= {status}:
            lines.append(f"    {status.value} --> [*]")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- prefab timelines

_WIDTH = 760
_LEFT = 200  # where the day axis starts
_RIGHT = 150  # room for the label after the last dot
_TOP = 64
_ROW = 44
_INK = "#1f2937"
_MUTED = "#6b7280"
_GRID = "#e5e7eb"
_ACCENT = "#3f51b5"
_SKIP = "#b45309"


def _x(at: datetime, start_day: datetime, days: int) -> int:
    span = _WIDTH - _LEFT - _RIGHT
    offset = (at - start_day).total_seconds() / 86400
    return _LEFT + round(span * offset / days)


def timeline_svg(sequence: Sequence, contact: Contact, start: datetime, *, trigger: str) -> str:
    """An SVG timeline of ``sequence`` for ``contact`` enrolled at ``start``, one row per planned step."""
    plan: tuple[PlannedStep, ...] = preview(sequence, contact, start)
    zone = contact.zone or timezone.utc
    local_start = start.astimezone(zone)
    start_day = local_start.replace(hour=0, minute=0, second=0, microsecond=0)
    last = max((p.local for p in plan), default=local_start)
    days = max(2, (last.date() - start_day.date()).days + 2)
    height = _TOP + _ROW * (len(plan) + 1) + 28
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" '
        f'height="{height}" font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="13" '
        f'role="img" aria-labelledby="title">',
        f'<title id="title">{escape(sequence.name)}: when each step goes for {escape(contact.first_name)} '
        f"({escape(str(contact.timezone))})</title>",
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="16" y="24" font-size="15" font-weight="600" fill="{_INK}">{escape(sequence.name)}</text>',
        f'<text x="16" y="44" fill="{_MUTED}">{escape(contact.first_name)}, {escape(str(contact.timezone))}; '
        f"{escape(trigger)} {local_start:%a %d %b %Y %H:%M} local time</text>",
    ]
    bottom = height - 28
    step_width = (_WIDTH - _LEFT - _RIGHT) / days
    for i in range(days + 1):
        day = start_day + timedelta(days=i)
        x = _x(day, start_day, days)
        out.append(f'<line x1="{x}" y1="{_TOP - 8}" x2="{x}" y2="{bottom}" stroke="{_GRID}"/>')
        if i < days and (days <= 16 or i % 2 == 0):
            label_x = x + round(step_width / 2)
            out.append(
                f'<text x="{label_x}" y="{bottom + 18}" text-anchor="middle" fill="{_MUTED}" font-size="11">'
                f"{day:%a %d}</text>"
            )
    rows: list[tuple[str, datetime, str, bool]] = [("enrolled", local_start, trigger, False)]
    for planned in plan:
        name = f"step {planned.position}" + (f" · {planned.name}" if planned.name else "")
        step = sequence.step(planned.position)
        after = "" if step is None or (isinstance(step.delay, Delay) and step.delay.is_zero) else f" (+{step.delay})"
        note = (
            f"skipped ({planned.skipped.value})" if planned.skipped is not None else f"{planned.local:%a %H:%M}{after}"
        )
        rows.append((name, planned.local, note, planned.skipped is not None))
    for row, (name, when, note, skipped) in enumerate(rows):
        y = _TOP + _ROW * row + 14
        x = _x(when, start_day, days)
        colour = _SKIP if skipped else (_MUTED if row == 0 else _ACCENT)
        out.append(f'<text x="16" y="{y + 4}" fill="{_INK}">{escape(name)}</text>')
        out.append(f'<line x1="{_LEFT}" y1="{y}" x2="{x}" y2="{y}" stroke="{colour}" stroke-dasharray="3 3"/>')
        shape = (
            f'<rect x="{x - 6}" y="{y - 6}" width="12" height="12" fill="{colour}"/>'
            if row == 0
            else f'<circle cx="{x}" cy="{y}" r="7" fill="{colour}"/>'
        )
        out.append(shape)
        out.append(f'<text x="{x + 12}" y="{y + 4}" fill="{colour}">{escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- files


def pictures() -> dict[str, str]:
    """Every generated picture: file name (under ``docs/diagrams``) -> content."""
    files = {"enrollment-states.mmd": state_diagram(), "sequence-states.mmd": sequence_diagram()}
    factories: Mapping[str, Callable[[], Sequence]] = PREFABS
    for name, factory in factories.items():
        files[f"prefab-{name}.svg"] = timeline_svg(
            factory(), SAMPLE_CONTACT, SAMPLE_STARTS[name], trigger=TRIGGER_LABELS[name]
        )
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the pictures (or, with ``--check``, report the ones out of date)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed picture is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, content in pictures().items():
        path = DIAGRAMS / name
        current = path.read_text("utf-8") if path.exists() else None
        if current == content:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, "utf-8", newline="\n")
    verb = "out of date" if args.check else "written"
    for name in stale:
        print(f"{verb}: docs/diagrams/{name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
