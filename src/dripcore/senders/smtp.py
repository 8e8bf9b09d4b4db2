"""An SMTP :class:`~dripcore.ports.MailSender` on the standard library (``smtplib``, ``email``).

:class:`SMTPSender` turns an :class:`~dripcore.ports.Email` into a MIME
message and hands it to an SMTP server:

- the body is ``multipart/alternative`` (text, then HTML) when both exist,
  otherwise the single part there is; non-ASCII text is sent
  quoted-printable or base64, so any server takes it;
- ``From`` and ``Reply-To`` come from ``email.sender``, else from the
  ``default_sender`` given to the constructor;
- the renderer's headers (``List-Unsubscribe``, ``List-Unsubscribe-Post``)
  are copied; they may not replace the headers the sender writes itself;
- the idempotency key becomes a deterministic ``Message-ID``
  (:func:`message_id`: the same key always gives the same id, so a
  receiving system can drop a duplicate after a crash) and an
  ``X-Dripcore-Key`` header, which bounce reports quote back.

One connection is kept open and reused (``max_messages_per_connection``
recycles it). A pooled connection the server has closed in the meantime is
detected before any data goes out, and the message is retried once on a
fresh connection. The sender also remembers the keys it has delivered (the
last ``remember_keys``) and does not send one of them again in this process.

How failures map onto the :class:`~dripcore.ports.MailSender` contract:

- a 4xx reply, a timeout, a refused or lost connection, and problems of the
  sender's own setup (TLS, login, a greeting other than 220) raise
  :class:`~dripcore.errors.TransientSendError`: the engine retries with
  backoff, so fixing the configuration loses no email;
- a 5xx reply raises :class:`~dripcore.errors.PermanentSendError`. It carries
  ``reason="bounced"`` (the contact is suppressed) when the recipient's
  address is at fault: a 550, 551 or 553 to ``RCPT TO``, or a 5xx to
  ``RCPT TO`` or ``DATA`` with an enhanced status code 5.1.x (bad address) or
  5.2.1 (mailbox disabled).
  A policy refusal (5.7.x, such as "relaying denied") or a refusal of the
  content at DATA is permanent without a reason: it is not the contact's fault;
- an email that can't be written as a message (a header with a line break,
  an address the server can't take) is permanent too.

SMTP never reports complaints; they arrive through the provider's feedback
loop, for :meth:`dripcore.Drip.contact_complained`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import smtplib
import ssl
import threading
from collections import OrderedDict
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Literal

from ..errors import PermanentSendError, SendError, TransientSendError
from ..model import SenderIdentity
from ..ports import Email, MailSender

__all__ = ["RESERVED_HEADERS", "SMTPSender", "Security", "message_id"]

Security = Literal["none", "starttls", "tls"]
"""How the connection is protected: plain, upgraded with STARTTLS, or TLS from the first byte."""

_DEFAULT_PORTS: dict[str, int] = {"none": 25, "starttls": 587, "tls": 465}

# Built 7-bit (non-ASCII bodies become quoted-printable or base64, so no
# 8BITMIME is needed); written with headers folded only past RFC 5322's hard
# 998-character limit, because folding at 78 would RFC 2047-encode a long
# List-Unsubscribe URL into something no mail client can use.
_BUILD = email_policy.SMTP.clone(cte_type="7bit")
_WIRE = _BUILD.clone(max_line_length=998)
_WIRE_UTF8 = _WIRE.clone(utf8=True)

#: Headers the sender writes itself; a rendered header may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "bcc", "cc", "content-transfer-encoding", "content-type", "date", "from", "message-id",
        "mime-version", "reply-to", "return-path", "sender", "subject", "to", "x-dripcore-key",
    }
)  # fmt: skip
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII but the colon (RFC 5322 ftext)
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_BOUNCE_CODES = frozenset({550, 551, 553})


def message_id(key: str, domain: str) -> str:
    """The ``Message-ID`` for an idempotency key: ``<dripcore.<hash>@<domain>>``, the same on every call.

    The key is hashed (SHA-256, 128 bits kept) because it may hold characters
    a Message-ID can't.

    >>> message_id("enr_1:2", "example.com")
    '<dripcore.b8c5bf2caba4f1287eede3a32c278eb7@example.com>'
    """
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<dripcore.{digest}@{domain}>"


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _failure(code: int, reply: bytes | str, stage: str) -> SendError:
    """The dripcore error for an SMTP reply ``code`` to ``stage`` (``"MAIL FROM"``, ``"RCPT TO"``, ``"DATA"``)."""
    text = _text(reply)
    message = f"SMTP {code} to {stage}: {text}"
    if not 500 <= code < 600:
        return TransientSendError(message)
    enhanced = _ENHANCED.match(text)
    subject_detail = (int(enhanced.group(2)), int(enhanced.group(3))) if enhanced else None
    if stage == "MAIL FROM":
        bounced = False  # an address problem at MAIL FROM is our sender's, never the contact's
    elif subject_detail is not None:
        bounced = subject_detail[0] == 1 or subject_detail == (2, 1)
    else:
        bounced = stage == "RCPT TO" and code in _BOUNCE_CODES
    return PermanentSendError(message, reason="bounced" if bounced else None)


def _address(addr_spec: str, display_name: str | None = None) -> Address:
    if addr_spec.isascii():
        return Address(display_name=display_name or "", addr_spec=addr_spec)
    # The email package refuses to parse a non-ASCII local part; given in pieces
    # it writes it as is under SMTPUTF8, which send() then asks the server for.
    username, _, domain = addr_spec.rpartition("@")
    return Address(display_name=display_name or "", username=username, domain=domain)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SMTPSender(MailSender):
    """Sends emails through an SMTP server, one reused connection at a time.

    ``default_sender`` (a :class:`~dripcore.model.SenderIdentity` or a bare
    address) is used when an email has no sender of its own. ``security`` is
    ``"none"``, ``"starttls"`` or ``"tls"``; ``port`` defaults to 25, 587 or
    465 to match. ``username``/``password`` log in; they are refused with
    ``security="none"`` unless the server is on this machine, so a password
    never crosses a network in clear. ``timeout`` bounds every socket
    operation, in seconds. ``message_id_domain`` is the right-hand side of
    Message-IDs (default: the default sender's domain); ``envelope_from``
    is the bounce address (default: the From address). Thread-safe: sends
    are serialised on the one connection.

    >>> sender = SMTPSender(host="localhost", default_sender="news@example.com")
    >>> sender.port
    25
    """

    def __init__(
        self,
        *,
        default_sender: SenderIdentity | str,
        host: str = "localhost",
        port: int | None = None,
        security: Security = "none",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        message_id_domain: str | None = None,
        envelope_from: str | None = None,
        max_messages_per_connection: int = 100,
        remember_keys: int = 10_000,
    ) -> None:
        if security not in _DEFAULT_PORTS:
            raise ValueError(f"security={security!r}: expected 'none', 'starttls' or 'tls'")
        if username is not None and security == "none" and not _is_loopback(host):
            raise ValueError(
                f"username={username!r} with security='none' would send the password to {host!r} in clear; "
                "use security='starttls' or 'tls'"
            )
        if timeout <= 0:
            raise ValueError(f"timeout={timeout!r}: must be positive")
        if max_messages_per_connection < 1:
            raise ValueError(f"max_messages_per_connection={max_messages_per_connection!r}: must be at least 1")
        if isinstance(default_sender, str):
            default_sender = SenderIdentity(from_email=default_sender)
        self.default_sender = default_sender
        self.host = host
        self.port = port if port is not None else _DEFAULT_PORTS[security]
        self.security = security
        self.username = username
        self._password = password
        self.timeout = timeout
        self._ssl_context = ssl_context
        self.local_hostname = local_hostname
        domain = message_id_domain or default_sender.from_email.rpartition("@")[2]
        self.message_id_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
        self.envelope_from = envelope_from
        self.max_messages_per_connection = max_messages_per_connection
        self.remember_keys = remember_keys
        self._lock = threading.Lock()
        self._smtp: smtplib.SMTP | None = None
        self._sent_on_connection = 0
        self._delivered: OrderedDict[str, str] = OrderedDict()

    def __repr__(self) -> str:
        return f"SMTPSender(host={self.host!r}, port={self.port}, security={self.security!r})"

    # -- the MailSender port

    def send(self, email: Email) -> str | None:
        """Send ``email``; return its Message-ID. Raises Transient/PermanentSendError (see the module doc)."""
        mid = message_id(email.idempotency_key, self.message_id_domain)
        with self._lock:
            if email.idempotency_key in self._delivered:
                return self._delivered[email.idempotency_key]
            message = self.build_message(email)
            sender = email.sender or self.default_sender
            envelope_from = self.envelope_from or sender.from_email
            utf8 = not (envelope_from.isascii() and email.to.isascii())
            try:
                data = message.as_bytes(policy=_WIRE_UTF8 if utf8 else _WIRE)
            except (ValueError, TypeError, UnicodeError) as exc:
                raise PermanentSendError(f"can't write the message: {exc}") from exc
            self._transmit(envelope_from, email.to, data, utf8)
            self._delivered[email.idempotency_key] = mid
            while len(self._delivered) > self.remember_keys:
                self._delivered.popitem(last=False)
            return mid

    def close(self) -> None:
        """Say QUIT and close the connection, if one is open."""
        with self._lock:
            self._drop(polite=True)

    def __enter__(self) -> SMTPSender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- building

    def build_message(self, email: Email) -> EmailMessage:
        """The MIME message for ``email`` (what :meth:`send` transmits). Raises PermanentSendError."""
        sender = email.sender or self.default_sender
        message = EmailMessage(policy=_BUILD)
        try:
            message["From"] = _address(sender.from_email, sender.from_name)
            message["To"] = _address(email.to)
            if sender.reply_to is not None:
                message["Reply-To"] = _address(sender.reply_to)
            message["Subject"] = email.subject
            message["Date"] = formatdate(usegmt=True)
            message["Message-ID"] = message_id(email.idempotency_key, self.message_id_domain)
            message["X-Dripcore-Key"] = email.idempotency_key
            for name, value in email.headers.items():
                if not _HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
                    raise PermanentSendError(
                        f"header {name!r} can't be set by a renderer (invalid, or written by the sender)"
                    )
                message[name] = value
            if email.text is not None:
                message.set_content(email.text)
                if email.html is not None:
                    message.add_alternative(email.html, subtype="html")
            elif email.html is not None:
                message.set_content(email.html, subtype="html")
            else:
                raise PermanentSendError(f"email {email.idempotency_key!r} has neither a text nor an HTML body")
        except (ValueError, TypeError, IndexError) as exc:  # the email package's verdict on a header or address
            raise PermanentSendError(f"can't build the message: {exc}") from exc
        return message

    # -- the connection

    def _connect(self) -> smtplib.SMTP:
        where = f"{self.host}:{self.port}"
        connection: smtplib.SMTP | None = None
        try:
            if self.security == "tls":
                connection = smtplib.SMTP_SSL(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout,
                    context=self._ssl_context or ssl.create_default_context(),
                )  # fmt: skip
            else:
                connection = smtplib.SMTP(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
                )
            connection.ehlo()
            if self.security == "starttls":
                connection.starttls(context=self._ssl_context or ssl.create_default_context())
                connection.ehlo()
            if self.username is not None:
                connection.login(self.username, self._password or "")
        except smtplib.SMTPResponseException as exc:
            _close_quietly(connection)
            raise TransientSendError(
                f"SMTP server {where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            _close_quietly(connection)
            raise TransientSendError(f"can't reach SMTP server {where}: {exc or type(exc).__name__}") from exc
        return connection

    def _connection(self) -> tuple[smtplib.SMTP, bool]:
        """The open connection (recycled after max_messages_per_connection), and whether it was reused."""
        if self._smtp is not None and self._sent_on_connection >= self.max_messages_per_connection:
            self._drop(polite=True)
        if self._smtp is not None:
            return self._smtp, True
        self._smtp = self._connect()
        self._sent_on_connection = 0
        return self._smtp, False

    def _drop(self, *, polite: bool = False) -> None:
        connection, self._smtp = self._smtp, None
        if connection is None:
            return
        if polite:
            try:
                connection.quit()
                return
            except (OSError, smtplib.SMTPException):
                pass
        _close_quietly(connection)

    def _reset(self, connection: smtplib.SMTP) -> None:
        try:
            connection.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    # -- the transaction

    def _envelope(self, envelope_from: str, to: str, utf8: bool) -> smtplib.SMTP:
        """MAIL FROM and RCPT TO; a pooled connection found closed is replaced once (no data went out yet)."""
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                if utf8 and not connection.has_extn("smtputf8"):
                    raise PermanentSendError(
                        f"SMTP server {self.host}:{self.port} can't take the non-ASCII address in "
                        f"{envelope_from!r} -> {to!r} (no SMTPUTF8)"
                    )
                code, reply = connection.mail(envelope_from, ["SMTPUTF8"] if utf8 else [])
                if code == 421:
                    raise smtplib.SMTPServerDisconnected(f"SMTP 421 to MAIL FROM: {_text(reply)}")
                if code != 250:
                    self._reset(connection)
                    raise _failure(code, reply, "MAIL FROM")
                code, reply = connection.rcpt(to)
                if code == 421:
                    raise smtplib.SMTPServerDisconnected(f"SMTP 421 to RCPT TO: {_text(reply)}")
                if code not in (250, 251):
                    self._reset(connection)
                    raise _failure(code, reply, "RCPT TO")
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                if reused and attempt == 1:
                    continue
                raise TransientSendError(f"SMTP connection to {self.host}:{self.port} lost: {exc}") from exc
            return connection
        raise AssertionError("unreachable")  # pragma: no cover

    def _transmit(self, envelope_from: str, to: str, data: bytes, utf8: bool) -> None:
        connection = self._envelope(envelope_from, to, utf8)
        try:
            code, reply = connection.data(data)
        except smtplib.SMTPResponseException as exc:  # DATA itself refused (no 354)
            self._reset(connection)
            raise _failure(exc.smtp_code, exc.smtp_error, "DATA") from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TransientSendError(
                f"SMTP connection to {self.host}:{self.port} lost during DATA (the server may have the message; "
                f"its Message-ID lets the receiver drop a duplicate): {exc}"
            ) from exc
        if code != 250:
            if code == 421:
                self._drop()
            else:
                self._reset(connection)
            raise _failure(code, reply, "DATA")
        self._sent_on_connection += 1


def _close_quietly(connection: smtplib.SMTP | None) -> None:
    if connection is None:
        return
    with contextlib.suppress(OSError):
        connection.close()
