"""Writes an :class:`~dripcore.ports.Email` as the bytes of a MIME message, without the email package.

The standard library's :class:`email.message.EmailMessage` parses every header
it is given through its header registry and folds it again on the way out:
more than half of an SMTP send went there. The messages dripcore sends have
one shape, so they are written directly, by these rules:

- Header values holding a line break (any of ``str.splitlines``' separators:
  CR, LF, VT, FF, FS, GS, RS, NEL, U+2028, U+2029), anywhere, are refused:
  nothing can be injected, and no header can end the header block early.
- A value of printable ASCII that doesn't start or end with a space and holds
  no ``=?`` (which a reader could take for an encoded word) is written as it
  is, folded at spaces only past RFC 5322's hard limit of 998 characters, so a
  long ``List-Unsubscribe`` URL stays one plain line. Any other value (non-ASCII,
  a tab or control character, edge spaces, ``=?``, too long to fold) is written
  as RFC 2047 encoded words (UTF-8, Q or B, whichever is shorter; at most 75
  characters each, a character never split between two), which any reader
  decodes to exactly the value given.
- An address is one plain ``local@domain`` (the model's rule: a dot-atom local
  part, a host name): anything else, where a second recipient or a header
  could hide, is refused. A non-ASCII address is written as it is (the sender
  then asks the server for SMTPUTF8). A display name is written bare when it is
  words of RFC 5322 ``atext``, as a quoted string when it is other printable
  ASCII, and as encoded words otherwise.
- A body is written in UTF-8 with CRLF line ends (every CR, LF or CRLF of the
  text becomes one), and a final line end: as it is (``7bit``) when it is
  ASCII in lines of at most 78 characters, else quoted-printable or base64,
  whichever is shorter. Text and HTML together make a ``multipart/alternative``
  (text first) whose boundary can't occur in either part.
- The renderer's headers go after the sender's own, names as given; a name
  that isn't RFC 5322 ``ftext`` or that the sender writes itself is refused,
  and ``Content-*`` headers are left out (the sender writes the MIME
  structure), as the email package did.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable

from ..errors import PermanentSendError
from ..model import SenderIdentity
from ..ports import Email

__all__ = ["RESERVED_HEADERS", "is_plain_address", "write_message"]

#: Headers the sender writes itself; a rendered header may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "bcc", "cc", "content-transfer-encoding", "content-type", "date", "from", "message-id",
        "mime-version", "reply-to", "return-path", "sender", "subject", "to", "x-dripcore-key",
    }
)  # fmt: skip

_MAX_LINE = 998  # RFC 5322's hard limit, CRLF excluded
_MAX_BODY_LINE = 78  # RFC 5322's "should": longer lines go quoted-printable or base64
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII but the colon (RFC 5322 ftext)
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # what str.splitlines splits on
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LDH_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ASCII_ADDRESS = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@{_LDH_LABEL}(?:\.{_LDH_LABEL})*")
_ASCII_LOCAL_CHAR = re.compile(rf"{_ATEXT}|\.")
_ASCII_DOMAIN_CHAR = re.compile(r"[A-Za-z0-9.-]")
_ATOMS = re.compile(rf"{_ATEXT}+(?: {_ATEXT}+)*")
# RFC 2047 5(3): the characters an encoded word may hold as they are, in a phrase too.
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q = tuple("_" if byte == 0x20 else chr(byte) if byte in _Q_SAFE else f"={byte:02X}" for byte in range(256))
_EW_TEXT = 63  # 75 characters for a word, less "=?utf-8?q?" and "?="
_EW_BYTES_B = 45  # bytes whose base64 (60 characters) fits in a word


def write_message(email: Email, *, sender: SenderIdentity, message_id: str, date: str) -> bytes:
    """The bytes of ``email`` as an RFC 5322 MIME message, From ``sender``. Raises PermanentSendError.

    ``message_id`` and ``date`` are written as given (the caller derives and formats them).
    """
    try:
        lines = [
            _mailbox_header("From", sender.from_email, sender.from_name),
            _mailbox_header("To", email.to, None),
        ]
        if sender.reply_to is not None:
            lines.append(_mailbox_header("Reply-To", sender.reply_to, None))
        lines += [
            _unstructured("Subject", email.subject),
            f"Date: {date}",
            f"Message-ID: {message_id}",
            _unstructured("X-Dripcore-Key", email.idempotency_key),
        ]
        lines += _rendered_headers(email.headers.items())
        parts = [
            _text_part(content, subtype)
            for content, subtype in ((email.text, "plain"), (email.html, "html"))
            if content is not None
        ]
    except UnicodeError as exc:  # a lone surrogate can't be written in UTF-8
        raise PermanentSendError(f"can't write the message: {exc}") from exc
    if not parts:
        raise PermanentSendError(f"email {email.idempotency_key!r} has neither a text nor an HTML body")
    lines.append("MIME-Version: 1.0")
    if len(parts) == 1:
        head = "\r\n".join(lines).encode("utf-8")
        return head + b"\r\n" + parts[0]
    boundary = _boundary(message_id, parts)
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = "\r\n".join(lines).encode("utf-8")
    delimiter = b"--" + boundary.encode("ascii")
    # A part ends with its own CRLF; the CRLF before each "--boundary" belongs to the delimiter.
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    return head + b"\r\n\r\n" + body + delimiter + b"--\r\n"


# -- headers


def _rendered_headers(headers: Iterable[tuple[str, str]]) -> list[str]:
    lines = []
    for name, value in headers:
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name) or name.lower() in RESERVED_HEADERS:
            raise PermanentSendError(f"header {name!r} can't be set by a renderer (invalid, or written by the sender)")
        if name.lower().startswith("content-"):
            continue
        lines.append(_unstructured(name, value))
    return lines


def _refuse_line_breaks(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise PermanentSendError(f"header {name}: a value must be a string, not {type(value).__name__}")
    if _LINE_BREAK.search(value) is not None:
        raise PermanentSendError(f"header {name}: {value[:80]!r} holds a line break (header injection refused)")
    return value


def _plain(value: str) -> bool:
    """Whether ``value`` can be written as it is: printable ASCII, no edge space, no ``=?``."""
    return (
        value.isascii()
        and value.isprintable()
        and "=?" not in value
        and not value.startswith(" ")
        and not value.endswith(" ")
    )


def _unstructured(name: str, value: str) -> str:
    """``Name: value`` for a text header (RFC 5322 unstructured), folded or encoded as the rules say."""
    value = _refuse_line_breaks(name, value)
    if not value:
        return f"{name}:"
    if _plain(value):
        line = f"{name}: {value}"
        if len(line) <= _MAX_LINE:
            return line
        folded = _fold_at_spaces(line)
        if folded is not None:
            return folded
    return f"{name}: " + "\r\n ".join(_encoded_words(value))


def _fold_at_spaces(line: str) -> str | None:
    """``line`` broken before spaces into lines of at most 998 characters, or None if it can't be."""
    out: list[str] = []
    rest = line
    while len(rest) > _MAX_LINE:
        cut = rest.rfind(" ", 1, _MAX_LINE + 1)
        # A fold must leave text on both sides: no line of only spaces, no empty line.
        while cut > 0 and rest[cut - 1] == " ":
            cut -= 1
        if cut <= 0 or not rest[:cut].strip():
            return None
        out.append(rest[:cut])
        rest = rest[cut:]
    out.append(rest)
    return "\r\n".join(out)


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 encoded words (UTF-8; Q or B, the shorter), each at most 75 characters."""
    data = text.encode("utf-8")
    quoted = "".join(map(_Q.__getitem__, data))
    if len(quoted) <= (len(data) + 2) // 3 * 4:
        if len(quoted) <= _EW_TEXT:
            return [f"=?utf-8?q?{quoted}?="]
        words: list[str] = []
        chunk: list[str] = []
        size = 0
        for char in text:
            encoded = "".join(_Q[byte] for byte in char.encode("utf-8"))
            if size + len(encoded) > _EW_TEXT and chunk:
                words.append("=?utf-8?q?" + "".join(chunk) + "?=")
                chunk, size = [], 0
            chunk.append(encoded)
            size += len(encoded)
        words.append("=?utf-8?q?" + "".join(chunk) + "?=")
        return words
    words = []
    pending = b""
    for char in text:
        encoded_char = char.encode("utf-8")
        if len(pending) + len(encoded_char) > _EW_BYTES_B and pending:
            words.append("=?utf-8?b?" + base64.b64encode(pending).decode("ascii") + "?=")
            pending = b""
        pending += encoded_char
    words.append("=?utf-8?b?" + base64.b64encode(pending).decode("ascii") + "?=")
    return words


def _mailbox_header(name: str, address: str, display_name: str | None) -> str:
    address = _address(name, address)
    if not display_name:
        return f"{name}: {address}"
    display_name = _refuse_line_breaks(name, display_name)
    if _ATOMS.fullmatch(display_name) and "=?" not in display_name:
        line = f"{name}: {display_name} <{address}>"
    elif display_name.isascii() and display_name.isprintable() and "=?" not in display_name:
        quoted = display_name.replace("\\", "\\\\").replace('"', '\\"')
        line = f'{name}: "{quoted}" <{address}>'
    else:
        line = ""
    if line and len(line) <= _MAX_LINE:
        return line
    return f"{name}: " + "\r\n ".join(_encoded_words(display_name)) + f" <{address}>"


def _address(name: str, address: str) -> str:
    """``address`` if it is one plain address; else PermanentSendError."""
    if is_plain_address(address):
        return address
    raise PermanentSendError(f"{name}: {address!r} is not one plain email address")


def is_plain_address(address: object) -> bool:
    """Whether ``address`` is one plain ``local@domain`` (ASCII, or internationalised for SMTPUTF8)."""
    if not isinstance(address, str):
        return False
    if _ASCII_ADDRESS.fullmatch(address):
        return True
    if address.isascii():
        return False
    local, at, domain = address.rpartition("@")
    return (
        bool(at and local and domain)
        and "@" not in local
        and ".." not in address
        and not local.startswith(".")
        and not local.endswith(".")
        and all(_ASCII_LOCAL_CHAR.fullmatch(c) if c.isascii() else c.isprintable() for c in local)
        and all(_ASCII_DOMAIN_CHAR.fullmatch(c) if c.isascii() else c.isprintable() for c in domain)
    )


# -- bodies


def _text_part(content: str, subtype: str) -> bytes:
    """The headers and body of a ``text/<subtype>`` part in UTF-8."""
    lines = content.encode("utf-8").splitlines()  # bytes split on CR, LF and CRLF only
    body = b"\r\n".join(lines) + b"\r\n"
    if body.isascii() and max(map(len, lines), default=0) <= _MAX_BODY_LINE:
        encoding = b"7bit"
    else:
        quoted = binascii.b2a_qp(body)  # CRLF line ends in, CRLF (soft breaks too) out
        base64_length = (len(body) + 2) // 3 * 4 * 78 // 76
        if len(quoted) <= base64_length:
            encoding, body = b"quoted-printable", quoted
        else:
            encoding, body = b"base64", base64.encodebytes(body).replace(b"\n", b"\r\n")
    return (
        b"Content-Type: text/" + subtype.encode("ascii") + b'; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + body
    )


def _boundary(message_id: str, parts: list[bytes]) -> str:
    """A multipart boundary found in none of ``parts`` (the same for the same Message-ID)."""
    seed = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:24]
    # "=_" never occurs in quoted-printable or base64, so only a 7bit part could hold it.
    for attempt in range(1000):
        boundary = f"=_dripcore_{seed}_{attempt}"
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in part for part in parts):
            return boundary
    raise PermanentSendError("no multipart boundary fits this message")  # pragma: no cover - 1000 crafted bodies
