"""Text the engine writes down: errors described and foreign strings made safe for any store, and new ids."""

from __future__ import annotations

import secrets
import time

__all__ = ["describe", "new_id", "safe_text"]


def safe_text(text: str, limit: int = 2000) -> str:
    """``text`` as every store can hold it: NUL and lone surrogates escaped, at most ``limit`` characters."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def describe(exc: BaseException) -> str:
    """``"ErrorType: message"``, safe to store and to log."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # an exception whose __str__ raises
        text = f"{type(exc).__name__} (unprintable)"
    return safe_text(text)


def new_id(prefix: str = "enr") -> str:
    """A new, time-sortable, unique id such as ``"enr_0193c9f1a2b3_5f2e8c1d9a7b"``."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}_{secrets.token_hex(6)}"
