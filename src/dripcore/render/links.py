"""Unsubscribe links: the default placeholder, a builder from a pattern, and the check a host's link must pass."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote

from ..errors import InvalidArgument
from ..model import Contact, Enrollment

__all__ = ["UnsubscribeUrl", "placeholder_unsubscribe_url", "unsubscribe_link", "unsubscribe_url_problem"]

UnsubscribeUrl = Callable[[Contact, Enrollment], str]
"""Builds a contact's unsubscribe link for one enrollment."""

_URL_SCHEMES = frozenset({"https", "http", "mailto"})
_BAD_URL_CHARACTER = re.compile(r"[\s<>\"'\x00-\x1f\x7f]")


def placeholder_unsubscribe_url(contact: Contact, enrollment: Enrollment) -> str:
    """The default unsubscribe link: ``https://unsubscribe.invalid/<sequence>/<enrollment>``.

    ``.invalid`` is reserved and never resolves: pass your own
    ``unsubscribe_url`` to :class:`~dripcore.render.LiquidRenderer` before sending real email.
    """
    return f"https://unsubscribe.invalid/{_path_segment(enrollment.sequence_id)}/{_path_segment(enrollment.id)}"


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]+")


def _path_segment(text: str) -> str:
    """``text`` percent-encoded as one URL path segment (most ids need nothing)."""
    if (text.isascii() and text.isalnum()) or _URL_SAFE.fullmatch(text):  # the first test is the cheaper
        return text
    return quote(text, safe="")


def unsubscribe_link(pattern: str) -> UnsubscribeUrl:
    """An unsubscribe-link builder from a pattern with ``{contact_id}``, ``{enrollment_id}``,
    ``{sequence_id}`` and ``{email}`` fields (each URL-quoted).

    >>> from datetime import datetime, timezone
    >>> link = unsubscribe_link("https://example.com/unsubscribe?e={enrollment_id}&to={email}")
    >>> contact = Contact(id="c1", email="ana+news@example.com")
    >>> at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> enrollment = Enrollment(id="e1", sequence_id="s1", contact_id="c1", status="active",
    ...     enrolled_at=at, next_step_due_at=at)
    >>> link(contact, enrollment)
    'https://example.com/unsubscribe?e=e1&to=ana%2Bnews%40example.com'
    """
    fields = ("contact_id", "enrollment_id", "sequence_id", "email")
    try:
        pattern.format(**dict.fromkeys(fields, "x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidArgument(
            "unsubscribe_url", pattern, f"use only the fields {', '.join(fields)} ({type(exc).__name__}: {exc})"
        ) from None

    def build(contact: Contact, enrollment: Enrollment) -> str:
        return pattern.format(
            contact_id=quote(contact.id, safe=""),
            enrollment_id=quote(enrollment.id, safe=""),
            sequence_id=quote(enrollment.sequence_id, safe=""),
            email=quote(contact.email, safe=""),
        )

    return build


def unsubscribe_url_problem(url: object) -> str | None:
    """What is wrong with a link a host's ``unsubscribe_url`` returned, or None when it may be sent.

    >>> unsubscribe_url_problem("https://example.com/u/e1") is None
    True
    >>> unsubscribe_url_problem("javascript:alert(1)")
    'must be an https, http or mailto URL'
    """
    if not isinstance(url, str) or not url:
        return "must be a non-empty string"
    if _has_bad_url_character(url):
        return "must not contain whitespace, quotes, angle brackets or control characters"
    if url.partition(":")[0].lower() not in _URL_SCHEMES:
        return "must be an https, http or mailto URL"
    return None


def _has_bad_url_character(url: str) -> bool:
    """Whether ``_BAD_URL_CHARACTER`` occurs in ``url``, answered without the regex for an ASCII link."""
    if url.isascii():  # then only \x00-\x1f and \x7f are unprintable, and the only whitespace left is " "
        return not url.isprintable() or " " in url or "<" in url or ">" in url or '"' in url or "'" in url
    return _BAD_URL_CHARACTER.search(url) is not None
