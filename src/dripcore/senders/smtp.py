"""An SMTP :class:`~dripcore.ports.MailSender` on the standard library (``smtplib``).

:class:`SMTPSender` turns an :class:`~dripcore.ports.Email` into a MIME
message and hands it to an SMTP server:

- the body is ``multipart/alternative`` (text, then HTML) when both exist,
  otherwise the single part there is; non-ASCII text is sent
  quoted-printable or base64, so any server takes it;
- ``From`` and ``Reply-To`` come from ``email.sender``, else from the
  ``default_sender`` given to the constructor;
- the renderer's headers (``List-Unsubscribe``, ``List-Unsubscribe-Post``)
  are copied, never folded short of the 998-character line limit; they may
  not replace the headers the sender writes itself, and a value with a line
  break is refused;
- the idempotency key becomes a deterministic ``Message-ID``
  (:func:`message_id`: the same key always gives the same id, so a
  receiving system can drop a duplicate after a crash) and an
  ``X-Dripcore-Key`` header, which bounce reports quote back.

The message is written directly as bytes rather than through the email
package (whose header registry used to be most of the cost of a send): a
header of plain printable ASCII goes as it is, any other as RFC 2047 encoded
words, which read back exactly as given; a header value with a line break, or
an address that is not one plain ``local@domain``, is refused.

Connections: a pool of up to ``connections`` SMTP sessions, each used by one
thread at a time, so the engine may call :meth:`SMTPSender.send` from that
many threads at once (:attr:`SMTPSender.max_in_flight`); a further caller
waits for a free connection. A session is reused for many messages
(``max_messages_per_connection`` recycles it). One the server has closed in
the meantime is detected before any data goes out, and the message is retried
once on a fresh connection. The sender remembers the keys it has delivered
(the last ``remember_keys``) and does not send one of them again in this
process; two threads sending the same key at once send it once.

How failures map onto the :class:`~dripcore.ports.MailSender` contract:

- a 4xx reply, a timeout, a lost connection raise
  :class:`~dripcore.errors.TransientSendError`: the engine retries with
  backoff;
- when the sender as a whole can't send (the server can't be reached or
  refuses the session, TLS or login fails, a 421 "service not available")
  the error is a :class:`~dripcore.errors.SenderUnavailable`: transient, so
  fixing the configuration loses no email, and no message's fault, so the
  engine pauses sending instead of charging each message an attempt;
- a 5xx reply raises :class:`~dripcore.errors.PermanentSendError`. It carries
  ``reason="bounced"`` (the contact is suppressed) when the recipient's
  address is at fault: a 550, 551 or 553 to ``RCPT TO``, or a 5xx to
  ``RCPT TO`` or ``DATA`` with an enhanced status code 5.1.x (bad address) or
  5.2.1 (mailbox disabled).
  A policy refusal (5.7.x, such as "relaying denied") or a refusal of the
  content at DATA is permanent without a reason: it is not the contact's fault;
- an email that can't be written as a message (a header with a line break,
  an address that is not one plain address, an address the server can't
  take) is permanent too.

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
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Literal

from ..errors import InvalidArgument, PermanentSendError, SendError, SenderUnavailable, TransientSendError
from ..model import SenderIdentity
from ..ports import Email, MailSender
from . import _mime
from ._keys import DeliveredKeys
from ._pool import ConnectionPool, Lease

__all__ = ["MAX_CONNECTIONS", "RESERVED_HEADERS", "SMTPSender", "Security", "message_id"]

Security = Literal["none", "starttls", "tls"]
"""How the connection is protected: plain, upgraded with STARTTLS, or TLS from the first byte."""

_DEFAULT_PORTS: dict[str, int] = {"none": 25, "starttls": 587, "tls": 465}

#: Headers the sender writes itself; a rendered header may not replace them.
RESERVED_HEADERS = _mime.RESERVED_HEADERS

#: The most connections one :class:`SMTPSender` may keep (``connections=``).
MAX_CONNECTIONS = 100

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
    if code == 421:
        return SenderUnavailable(message)
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


class _Closing(smtplib.SMTPServerDisconnected):
    """A 421 reply: the server is closing the session."""

    def __init__(self, code: int, reply: bytes | str, stage: str) -> None:
        self.failure = _failure(code, reply, stage)
        super().__init__(str(self.failure))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _count(field: str, value: Any, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InvalidArgument(field, value, f"must be an integer {span}")
    return value


class SMTPSender(MailSender):
    """Sends emails through an SMTP server, over a pool of reused connections.

    ``default_sender`` (a :class:`~dripcore.model.SenderIdentity` or a bare
    address) is used when an email has no sender of its own. ``security`` is
    ``"none"``, ``"starttls"`` or ``"tls"``; ``port`` defaults to 25, 587 or
    465 to match. ``username``/``password`` log in; they are refused with
    ``security="none"`` unless the server is on this machine, so a password
    never crosses a network in clear. ``timeout`` bounds every socket
    operation, in seconds. ``message_id_domain`` is the right-hand side of
    Message-IDs (default: the default sender's domain); ``envelope_from``
    is the bounce address (default: the From address).

    ``connections`` (1 to :data:`MAX_CONNECTIONS`, default 8) is how many SMTP
    sessions it keeps, and so how many :meth:`send` calls it takes at once
    (:attr:`max_in_flight`); each is opened when first needed. Thread-safe.
    A bad argument raises :class:`~dripcore.errors.InvalidArgument`.

    >>> sender = SMTPSender(host="localhost", default_sender="news@example.com")
    >>> (sender.port, sender.max_in_flight)
    (25, 8)
    """

    #: How many :meth:`send` calls this sender takes at once, from as many threads: ``connections``.
    max_in_flight: int

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
        connections: int = 8,
        max_messages_per_connection: int = 100,
        remember_keys: int = 10_000,
    ) -> None:
        if security not in _DEFAULT_PORTS:
            raise InvalidArgument("security", security, "expected 'none', 'starttls' or 'tls'")
        if username is not None and security == "none" and not _is_loopback(host):
            raise InvalidArgument(
                "username", username,
                f"with security='none' the password would go to {host!r} in clear; use security='starttls' or 'tls'",
            )  # fmt: skip
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            raise InvalidArgument("timeout", timeout, "must be a positive number of seconds")
        self.connections = _count("connections", connections, 1, MAX_CONNECTIONS)
        self.max_messages_per_connection = _count("max_messages_per_connection", max_messages_per_connection, 1)
        self.remember_keys = _count("remember_keys", remember_keys, 0)
        if envelope_from is not None and not _mime.is_plain_address(envelope_from):
            raise InvalidArgument("envelope_from", envelope_from, "must be one plain email address")
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
        self.max_in_flight = self.connections
        self._keys = DeliveredKeys(self.remember_keys)
        self._pool: ConnectionPool[smtplib.SMTP] = ConnectionPool(
            self.connections, open=self._connect, close=_close, max_uses=self.max_messages_per_connection
        )

    def __repr__(self) -> str:
        return (
            f"SMTPSender(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"connections={self.connections})"
        )

    # -- the MailSender port

    def send(self, email: Email) -> str | None:
        """Send ``email``; return its Message-ID. Raises Transient/PermanentSendError (see the module doc).

        Thread-safe; blocks while all ``connections`` are in use.
        """
        key = email.idempotency_key
        known = self._keys.begin(key)
        if known is not None:
            return known
        try:
            mid = message_id(key, self.message_id_domain)
            sender = email.sender or self.default_sender
            data = _mime.write_message(email, sender=sender, message_id=mid, date=formatdate(usegmt=True))
            envelope_from = self.envelope_from or sender.from_email
            addresses = (envelope_from, email.to, sender.from_email, sender.reply_to or "")
            utf8 = not all(address.isascii() for address in addresses)
            with self._pool.lease() as lease:
                self._transmit(lease, envelope_from, email.to, data, utf8)
        except BaseException:
            self._keys.failed(key)
            raise
        self._keys.delivered(key, mid)
        return mid

    def close(self) -> None:
        """Say QUIT on every idle connection; those in use are closed when their send ends."""
        self._pool.close()

    def __enter__(self) -> SMTPSender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- building

    def message_bytes(self, email: Email) -> bytes:
        """The message :meth:`send` would transmit for ``email`` (dated now). Raises PermanentSendError."""
        sender = email.sender or self.default_sender
        mid = message_id(email.idempotency_key, self.message_id_domain)
        return _mime.write_message(email, sender=sender, message_id=mid, date=formatdate(usegmt=True))

    def build_message(self, email: Email) -> EmailMessage:
        """:meth:`message_bytes` parsed back by the email package, to inspect. Raises PermanentSendError."""
        message = message_from_bytes(self.message_bytes(email), policy=email_policy.default)
        assert isinstance(message, EmailMessage)
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
            _close(connection, False)
            raise SenderUnavailable(
                f"SMTP server {where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            _close(connection, False)
            raise SenderUnavailable(f"can't reach SMTP server {where}: {exc or type(exc).__name__}") from exc
        return connection

    def _reset(self, lease: Lease[smtplib.SMTP], connection: smtplib.SMTP) -> None:
        """RSET after a refusal, so the connection serves the next message; dropped if that fails."""
        try:
            connection.rset()
        except (OSError, smtplib.SMTPException):
            lease.discard()
        else:
            lease.give_back()

    # -- the transaction

    def _envelope(self, lease: Lease[smtplib.SMTP], envelope_from: str, to: str, utf8: bool) -> smtplib.SMTP:
        """MAIL FROM and RCPT TO; a pooled connection found closed is replaced once (no data went out yet)."""
        for attempt in (1, 2):
            connection, reused = lease.connection(fresh=attempt == 2)
            try:
                if utf8 and not connection.has_extn("smtputf8"):
                    lease.give_back()  # nothing was said on it: fit for the next message
                    raise PermanentSendError(
                        f"SMTP server {self.host}:{self.port} can't take the non-ASCII address in "
                        f"{envelope_from!r} -> {to!r} (no SMTPUTF8)"
                    )
                # The addresses are plain (checked when the message was written): no need for smtplib's
                # quoteaddr, which parses each one with the email package, a tenth of a send's time.
                if utf8:
                    code, reply = connection.mail(envelope_from, ["SMTPUTF8"])  # (and commands go in UTF-8)
                else:
                    code, reply = connection.docmd("MAIL", f"FROM:<{envelope_from}>")
                if code == 421:
                    raise _Closing(code, reply, "MAIL FROM")
                if code != 250:
                    self._reset(lease, connection)
                    raise _failure(code, reply, "MAIL FROM")
                code, reply = connection.docmd("RCPT", f"TO:<{to}>")
                if code == 421:
                    raise _Closing(code, reply, "RCPT TO")
                if code not in (250, 251):
                    self._reset(lease, connection)
                    raise _failure(code, reply, "RCPT TO")
            except (OSError, smtplib.SMTPException) as exc:
                lease.discard()
                if reused and attempt == 1:
                    continue
                if isinstance(exc, _Closing):
                    raise exc.failure from exc
                raise TransientSendError(f"SMTP connection to {self.host}:{self.port} lost: {exc}") from exc
            return connection
        raise AssertionError("unreachable")  # pragma: no cover

    def _transmit(self, lease: Lease[smtplib.SMTP], envelope_from: str, to: str, data: bytes, utf8: bool) -> None:
        connection = self._envelope(lease, envelope_from, to, utf8)
        try:
            code, reply = connection.data(data)
        except smtplib.SMTPResponseException as exc:  # DATA itself refused (no 354)
            if exc.smtp_code == 421:
                lease.discard()
            else:
                self._reset(lease, connection)
            raise _failure(exc.smtp_code, exc.smtp_error, "DATA") from exc
        except (OSError, smtplib.SMTPException) as exc:
            lease.discard()
            raise TransientSendError(
                f"SMTP connection to {self.host}:{self.port} lost during DATA (the server may have the message; "
                f"its Message-ID lets the receiver drop a duplicate): {exc}"
            ) from exc
        if code != 250:
            if code == 421:
                lease.discard()
            else:
                self._reset(lease, connection)
            raise _failure(code, reply, "DATA")
        lease.served()


def _close(connection: smtplib.SMTP | None, polite: bool) -> None:
    """End a connection: QUIT first when ``polite``, and close the socket whatever happens."""
    if connection is None:
        return
    if polite:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            connection.quit()
            return
    with contextlib.suppress(OSError):
        connection.close()
