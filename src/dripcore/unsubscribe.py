"""Signed unsubscribe links: a URL per contact and enrollment that only your secret can make.

An unsubscribe link must work for whoever received the email, without a login, and
must not let anyone unsubscribe anyone else by editing an id in it. :class:`UnsubscribeLinks`
puts a token in your URL that carries the contact and enrollment ids with an HMAC-SHA256
tag over them, keyed by a secret only your servers know; :meth:`UnsubscribeLinks.verify`
gives the ids back, or raises :class:`~dripcore.errors.InvalidUnsubscribeToken` for a token
that was tampered with, cut short or signed with another secret.

>>> links = UnsubscribeLinks("https://example.com/unsubscribe/{token}", secret="a secret of 16+ bytes")
>>> url = links.url("ana", "enr-1")
>>> url.startswith("https://example.com/unsubscribe/1.")
True
>>> links.verify(url.rsplit("/", 1)[1])
UnsubscribeRequest(contact_id='ana', enrollment_id='enr-1')

It is an ``unsubscribe_url`` for :class:`~dripcore.render.LiquidRenderer`:
``LiquidRenderer(unsubscribe_url=links)`` puts each contact's signed link in the
``List-Unsubscribe`` header (with ``List-Unsubscribe-Post`` for RFC 8058's one-click
POST, when the link is ``https``) and in ``{{ unsubscribe_url }}``.

Tokens do not expire: an unsubscribe link has to keep working for as long as the email
may be read. To rotate the secret, sign with the new one and keep the old one in
``old_secrets`` until the emails it signed no longer matter; a leaked secret is revoked
by dropping it (its links then fail with a 400, and the reader unsubscribes another way).
The key is derived from your secret for this one purpose, so the secret may be one your
framework already keeps (Django's ``SECRET_KEY``) without a token here being valid anywhere
else. The secret must be random, such as ``secrets.token_urlsafe(32)``: every reader holds a
signed token, and a guessable secret can be found from one offline.

The token is signed, not encrypted: whoever sees the URL can read the two ids in it (base64
of a JSON list). Use opaque contact ids (a database key, not an email address) if that matters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs

from .errors import InvalidArgument, InvalidUnsubscribeToken
from .model import Contact, Enrollment
from .render.links import unsubscribe_url_problem

__all__ = ["UnsubscribeLinks", "UnsubscribeRequest"]

_FIELD = "{token}"
_VERSION = "1"
_PURPOSE = b"dripcore.unsubscribe.v1"
_TAG_BYTES = 16  # a 128-bit tag: forging one takes 2**128 guesses
_MIN_SECRET_BYTES = 16
_MAX_TOKEN = 4096


@attrs.frozen
class UnsubscribeRequest:
    """Who a verified unsubscribe token speaks for: the contact, and the enrollment whose email
    carried the link. Unsubscribing is the contact's: ``drip.contact_unsubscribed(contact_id)``."""

    contact_id: str
    """The contact to unsubscribe."""
    enrollment_id: str
    """The enrollment whose email carried the link (the sequence it was in is ``drip.get_enrollment(...)``'s)."""


def _key(secret: str | bytes, field: str) -> bytes:
    """The signing key for ``secret``: HMAC(secret, purpose), so the key is ours alone."""
    if isinstance(secret, str):
        try:
            raw = secret.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(field, "<hidden>", "must be valid Unicode text or bytes") from None
    elif isinstance(secret, bytes):
        raw = secret
    else:
        raise InvalidArgument(field, secret, f"must be a str or bytes, not {type(secret).__name__}")
    if len(raw) < _MIN_SECRET_BYTES:
        raise InvalidArgument(field, "<hidden>", f"must be at least {_MIN_SECRET_BYTES} bytes (it has {len(raw)})")
    return hmac.new(raw, _PURPOSE, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Strict URL-safe base64 without padding: None for anything that does not round-trip."""
    if not text.isascii():
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64(data) == text else None


class UnsubscribeLinks:
    """Makes and checks signed unsubscribe links.

    ``url`` is your unsubscribe endpoint, ``https`` (or ``http`` for a local test: mailbox
    providers offer one-click unsubscribing, ``List-Unsubscribe-Post``, for ``https`` links
    only), with ``{token}`` exactly once, in the path
    (``https://example.com/unsubscribe/{token}``) or a query value
    (``https://example.com/u?t={token}``): the token is URL-safe as it is (letters,
    digits, ``-``, ``_`` and ``.``). ``secret`` (str or bytes, at least 16 bytes, random)
    signs; ``old_secrets`` still verify, for rotation. A bad argument raises
    :class:`~dripcore.errors.InvalidArgument` naming it.

    An instance is the callable ``(contact, enrollment) -> url`` that
    :class:`~dripcore.render.LiquidRenderer`'s ``unsubscribe_url`` takes.
    """

    def __init__(self, url: str, *, secret: str | bytes, old_secrets: Iterable[str | bytes] = ()) -> None:
        if not isinstance(url, str):
            raise InvalidArgument("url", url, f"must be a str, not {type(url).__name__}")
        if url.count(_FIELD) != 1:
            raise InvalidArgument("url", url, f"must contain {_FIELD} exactly once")
        problem = unsubscribe_url_problem(url.replace(_FIELD, "1.x.y"))
        if problem is not None:
            raise InvalidArgument("url", url, problem)
        parts = urlsplit(url.replace(_FIELD, "TOKEN"))
        if parts.scheme.lower() not in ("https", "http") or not parts.hostname:
            raise InvalidArgument("url", url, "must be an https (or http) URL with a host")
        if "TOKEN" not in parts.path and "TOKEN" not in parts.query:
            raise InvalidArgument("url", url, f"must have {_FIELD} in its path or query, where your server sees it")
        if isinstance(old_secrets, (str, bytes)) or not isinstance(old_secrets, Iterable):
            raise InvalidArgument("old_secrets", "<hidden>", "must be a list of secrets (empty for none)")
        self._url = url
        self._keys = (_key(secret, "secret"), *(_key(s, f"old_secrets[{i}]") for i, s in enumerate(old_secrets)))

    def __repr__(self) -> str:
        return f"UnsubscribeLinks({self._url!r}, {len(self._keys)} secret{'s' if len(self._keys) > 1 else ''})"

    def token(self, contact_id: str, enrollment_id: str) -> str:
        """The signed token for a contact and enrollment (URL-safe text)."""
        for field, value in (("contact_id", contact_id), ("enrollment_id", enrollment_id)):
            if not isinstance(value, str) or not value:
                raise InvalidArgument(field, value, "must be a non-empty str")
        try:
            data = json.dumps([contact_id, enrollment_id], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument("contact_id", contact_id, "the ids must be valid Unicode text") from None
        payload = _b64(data)
        token = f"{_VERSION}.{payload}.{self._tag(self._keys[0], payload)}"
        if len(token) > _MAX_TOKEN:  # ids far longer than any store keeps
            raise InvalidArgument("contact_id", contact_id, f"with the enrollment id, makes a token over {_MAX_TOKEN}")
        return token

    def url(self, contact_id: str, enrollment_id: str) -> str:
        """The unsubscribe URL for a contact and enrollment: ``url`` with their token in it."""
        return self._url.replace(_FIELD, self.token(contact_id, enrollment_id))

    def __call__(self, contact: Contact, enrollment: Enrollment) -> str:
        """The link for ``contact`` in ``enrollment`` (what the renderer calls)."""
        return self.url(contact.id, enrollment.id)

    def verify(self, token: str) -> UnsubscribeRequest:
        """The ids ``token`` was made for; raises :class:`~dripcore.errors.InvalidUnsubscribeToken`
        for a token that is malformed, was tampered with, or was signed by a secret not given here."""
        if not isinstance(token, str) or not token:
            raise InvalidUnsubscribeToken(token=token, reason="must be a non-empty str")
        if len(token) > _MAX_TOKEN:
            raise InvalidUnsubscribeToken(token=token, reason=f"is longer than {_MAX_TOKEN} characters")
        parts = token.split(".")
        if len(parts) != 3 or not token.isascii():
            raise InvalidUnsubscribeToken(token=token, reason="is not a dripcore unsubscribe token")
        version, payload, tag = parts
        if version != _VERSION:
            raise InvalidUnsubscribeToken(token=token, reason=f"has an unknown version {version!r}")
        # The tag is checked before the payload is read: nothing unsigned is parsed.
        if not any(hmac.compare_digest(self._tag(key, payload), tag) for key in self._keys):
            raise InvalidUnsubscribeToken(
                token=token, reason="its signature does not match (tampered with, or signed with another secret)"
            )
        data = _unb64(payload)
        try:
            ids = json.loads(data.decode("utf-8")) if data is not None else None
        except ValueError:
            ids = None
        if not (isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, str) and i for i in ids)):
            raise InvalidUnsubscribeToken(token=token, reason="its payload is not a contact and enrollment id")
        return UnsubscribeRequest(contact_id=ids[0], enrollment_id=ids[1])

    @staticmethod
    def _tag(key: bytes, payload: str) -> str:
        mac = hmac.new(key, f"{_VERSION}.{payload}".encode("ascii"), hashlib.sha256)
        return _b64(mac.digest()[:_TAG_BYTES])
