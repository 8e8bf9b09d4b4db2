"""The signed-webhook EventSink example delivers authentic events and rejects forged ones."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook_sink.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webhook_sink_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_events_arrive_signed_and_in_order() -> None:
    received = load().main()
    assert [p["type"] for p in received] == ["sequence.subscribed", "sequence.step.sent"]


def test_forged_or_stale_signatures_are_rejected() -> None:
    example = load()
    secret, body, now = b"s", b'{"type":"sequence.completed"}', int(time.time())
    good = example.sign(secret, now, body)
    assert example.verify(secret, str(now), good, body)
    assert not example.verify(b"other", str(now), good, body)
    assert not example.verify(secret, str(now), good, body + b" ")
    assert not example.verify(secret, str(now - 3600), example.sign(secret, now - 3600, body), body)
    assert not example.verify(secret, "soon", good, body)
