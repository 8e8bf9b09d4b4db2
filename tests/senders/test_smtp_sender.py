"""The SMTP sender, end to end against a real SMTP server (aiosmtpd) on the loopback interface."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email import policy as email_policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dripcore import Contact, Delay, Drip, EnrollmentStatus, ExitReason, SenderIdentity, Sequence, SequenceStatus, Step
from dripcore.adapters.memory import MemoryStore
from dripcore.errors import (
    InvalidArgument,
    PermanentSendError,
    SenderUnavailable,
    TransientSendError,
    ValidationError,
)
from dripcore.ports import Email
from dripcore.render import LiquidRenderer
from dripcore.senders import SMTPSender, message_id
from dripcore.senders.smtp import RESERVED_HEADERS
from dripcore.testing import FakeClock, MemoryContacts, RecordingEvents

AT = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
SHOP = SenderIdentity(from_email="news@shop.example", from_name="Ana's Shop", reply_to="help@shop.example")
UNSUBSCRIBE = "https://shop.example/unsubscribe/" + "t" * 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    """An aiosmtpd handler that keeps what arrives and answers as a test tells it to."""

    def __init__(self) -> None:
        self.received: list[tuple[Envelope, EmailMessage]] = []
        self.peers: list[Any] = []
        self.mail_reply: str | None = None
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply: str | None = None

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        assert isinstance(envelope.content, bytes)
        parsed = message_from_bytes(envelope.content, policy=email_policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append((envelope, parsed))
        self.peers.append(session.peer)
        return "250 2.0.0 queued"

    @property
    def messages(self) -> list[EmailMessage]:
        return [message for _, message in self.received]

    @property
    def keys(self) -> list[str]:
        return [str(message["X-Dripcore-Key"]) for message in self.messages]


class Sessions:
    """Counts the SMTP sessions the server has open (server side): now, at most, in all."""

    def __init__(self) -> None:
        self.live: set[SMTP] = set()
        self.most = 0
        self.total = 0
        self._lock = threading.Lock()

    def opened(self, session: SMTP) -> None:
        with self._lock:
            self.live.add(session)
            self.total += 1
            self.most = max(self.most, len(self.live))

    def closed(self, session: SMTP) -> None:
        with self._lock:
            self.live.discard(session)

    @property
    def open(self) -> int:
        with self._lock:
            return len(self.live)


class CountingSMTP(SMTP):
    """aiosmtpd's SMTP protocol, reporting each session's start and end to a Sessions."""

    def __init__(self, *args: Any, sessions: Sessions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._counted:  # (called again after STARTTLS)
            self._counted = True
            self._sessions.opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.closed(self)
        super().connection_lost(error)


class CountingController(Controller):
    """An aiosmtpd Controller whose sessions are counted."""

    def __init__(self, handler: Any, *, sessions: Sessions, **options: Any) -> None:
        self.sessions = sessions
        super().__init__(handler, **options)

    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, sessions=self.sessions, **self.SMTP_kwargs)


class Server:
    """A running aiosmtpd server, its mailbox and its session count."""

    def __init__(self, mailbox: Mailbox | None = None, **smtp_options: Any) -> None:
        self.mailbox = mailbox or Mailbox()
        self.sessions = Sessions()
        self.port = free_port()
        self.controller = CountingController(
            self.mailbox, sessions=self.sessions, hostname="127.0.0.1", port=self.port, **smtp_options
        )

    def __enter__(self) -> Server:
        self.controller.start()
        # aiosmtpd's start() opens one session of its own to check the server is up: not ours to count.
        eventually(lambda: self.sessions.open == 0)
        self.sessions.most = self.sessions.total = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.controller.stop()

    def hang_up_everyone(self) -> None:
        """Close every open session from the server's side, as a restarting server would."""
        done = threading.Event()

        def close_all() -> None:
            for session in list(self.sessions.live):
                if session.transport is not None:
                    session.transport.close()
            done.set()

        self.controller.loop.call_soon_threadsafe(close_all)
        assert done.wait(10)
        eventually(lambda: self.sessions.open == 0)

    def sender(self, **options: Any) -> SMTPSender:
        options.setdefault("default_sender", SHOP)
        options.setdefault("timeout", 5.0)
        return SMTPSender(host="127.0.0.1", port=self.port, **options)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for ``condition`` (another thread's work) to hold; fail if it never does."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def send_all(sender: SMTPSender, emails: list[Email], threads: int) -> list[str | BaseException]:
    """Send ``emails`` from ``threads`` threads at once; each one's Message-ID, or what it raised."""

    def one(message: Email) -> str | BaseException:
        try:
            result = sender.send(message)
        except Exception as exc:
            return exc
        assert result is not None
        return result

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, emails))


def email(**fields: Any) -> Email:
    base: dict[str, Any] = {
        "idempotency_key": "enr_1:1",
        "enrollment_id": "enr_1",
        "sequence_id": "welcome",
        "contact_id": "c1",
        "position": 1,
        "to": "zoe@example.com",
        "subject": "Bienvenue, Zoë",
        "text": "Hello Zoë,\nwelcome aboard. Unsubscribe: " + UNSUBSCRIBE,
        "html": f'<p>Hello Zoë,</p><p>welcome aboard.</p><a href="{UNSUBSCRIBE}">Unsubscribe</a>',
        "headers": {"List-Unsubscribe": f"<{UNSUBSCRIBE}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    }
    return Email(**{**base, **fields})


# --------------------------------------------------------------------------- what arrives


def test_text_and_html_arrive_as_multipart_alternative(server: Server) -> None:
    """Both parts, text first, decoded intact (non-ASCII included)."""
    with server.sender() as sender:
        sender.send(email())
    [message] = server.mailbox.messages
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content().replace("\r\n", "\n") == email().text + "\n"  # type: ignore[attr-defined,operator]
    assert html.get_content_type() == "text/html"
    assert html.get_content().rstrip() == email().html  # type: ignore[attr-defined]


def test_headers_carry_sender_subject_and_the_unsubscribe_headers(server: Server) -> None:
    """From, Reply-To, To, Subject, List-Unsubscribe (unmangled), one-click POST, Date, MIME-Version."""
    with server.sender() as sender:
        sender.send(email())
    [(envelope, message)] = server.mailbox.received
    assert message["From"] == "Ana's Shop <news@shop.example>"
    assert message["Reply-To"] == "help@shop.example"
    assert message["To"] == "zoe@example.com"
    assert message["Subject"] == "Bienvenue, Zoë"
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Date"] is not None
    assert message["MIME-Version"] == "1.0"
    assert envelope.mail_from == "news@shop.example"
    assert envelope.rcpt_tos == ["zoe@example.com"]


def test_the_list_unsubscribe_header_is_never_encoded_on_the_wire(server: Server) -> None:
    """A long URL stays a plain <https://...> header line, which mail clients can use."""
    with server.sender() as sender:
        sender.send(email())
    [(envelope, _)] = server.mailbox.received
    assert isinstance(envelope.content, bytes)
    assert f"List-Unsubscribe: <{UNSUBSCRIBE}>".encode() in envelope.content
    assert all(len(line) <= 998 for line in envelope.content.split(b"\r\n"))


def test_the_idempotency_key_gives_a_stable_message_id(server: Server) -> None:
    """Same key, same Message-ID, from any sender instance; X-Dripcore-Key carries the key."""
    first = server.sender()
    second = server.sender()
    returned = first.send(email())
    again = second.send(email())
    other = first.send(email(idempotency_key="enr_1:2", position=2))
    first.close()
    second.close()
    ids = [m["Message-ID"] for m in server.mailbox.messages]
    assert ids[0] == ids[1] == returned == again == message_id("enr_1:1", "shop.example")
    assert ids[2] == other != ids[0]
    assert [m["X-Dripcore-Key"] for m in server.mailbox.messages] == ["enr_1:1", "enr_1:1", "enr_1:2"]


def test_a_key_already_delivered_by_this_sender_is_not_sent_again(server: Server) -> None:
    """Offered twice (a settle that failed after the send), it goes once."""
    with server.sender() as sender:
        assert sender.send(email()) == sender.send(email())
    assert len(server.mailbox.messages) == 1


@pytest.mark.parametrize(
    ("text", "html", "kind"), [("Only text", None, "text/plain"), (None, "<p>Only</p>", "text/html")]
)
def test_a_single_body_is_sent_as_a_single_part(server: Server, text: str | None, html: str | None, kind: str) -> None:
    """No alternative wrapper when there is only one body."""
    with server.sender() as sender:
        sender.send(email(text=text, html=html))
    [message] = server.mailbox.messages
    assert message.get_content_type() == kind
    assert not message.is_multipart()


def test_the_emails_own_sender_overrides_the_default(server: Server) -> None:
    """A step's sender identity becomes From and Reply-To; the envelope follows From."""
    own = SenderIdentity(from_email="ceo@shop.example", from_name="Marta")
    with server.sender() as sender:
        sender.send(email(sender=own))
    [(envelope, message)] = server.mailbox.received
    assert message["From"] == "Marta <ceo@shop.example>"
    assert message["Reply-To"] is None
    assert envelope.mail_from == "ceo@shop.example"


def test_a_bounce_address_can_be_set_for_the_envelope(server: Server) -> None:
    """envelope_from (Return-Path) differs from the visible From."""
    with server.sender(envelope_from="bounces@shop.example") as sender:
        sender.send(email())
    [(envelope, message)] = server.mailbox.received
    assert envelope.mail_from == "bounces@shop.example"
    assert message["From"] == "Ana's Shop <news@shop.example>"


def test_a_non_ascii_address_uses_smtputf8() -> None:
    """An internationalised address goes out with SMTPUTF8 when the server offers it."""
    with Server(enable_SMTPUTF8=True) as running, running.sender() as sender:
        sender.send(email(to="zoë@exämple.com"))
    [(envelope, message)] = running.mailbox.received
    assert envelope.rcpt_tos == ["zoë@exämple.com"]
    assert "SMTPUTF8" in envelope.mail_options
    assert message["To"] == "zoë@exämple.com"


def test_a_non_ascii_address_without_smtputf8_is_permanent() -> None:
    """The server can never take that address: permanent, not a bounce."""
    with (
        Server(enable_SMTPUTF8=False) as running,
        running.sender() as sender,
        pytest.raises(PermanentSendError) as caught,
    ):
        sender.send(email(to="zoë@exämple.com"))
    assert caught.value.reason is None
    assert running.mailbox.messages == []


# --------------------------------------------------------------------------- bad emails


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Campaign": "spring\r\nBcc: everyone@example.com"},
        {"X-Campaign": "spring\nBcc: everyone@example.com"},
        {"X-Campaign": "spring\r\n"},  # a trailing line break would end the header block early
        {"X-Campaign": "spring\n"},
        {"X-Campaign": "spring\u2028"},
        {"X-Campaign": "a\x0bb"},
        {"From": "ceo@bank.example"},
        {"Message-ID": "<forged@example.com>"},
        {"Bad Name": "x"},
        {"X-Colon:": "x"},
        {"": "x"},
    ],
)
def test_headers_that_could_inject_or_override_are_refused(server: Server, headers: dict[str, str]) -> None:
    """No header injection, and a rendered header can't replace the sender's own."""
    with server.sender() as sender, pytest.raises(PermanentSendError):
        sender.send(email(headers=headers))
    assert server.mailbox.messages == []


# --------------------------------------------------------------------------- the connection


def test_one_connection_is_reused_for_many_emails(server: Server) -> None:
    """Three emails, one SMTP session."""
    with server.sender() as sender:
        for n in range(3):
            sender.send(email(idempotency_key=f"enr_1:{n + 1}"))
    assert len(server.mailbox.messages) == 3
    assert len(set(server.mailbox.peers)) == 1


def test_connections_are_recycled_after_a_number_of_messages(server: Server) -> None:
    """max_messages_per_connection: five emails, two per session, three sessions."""
    with server.sender(max_messages_per_connection=2) as sender:
        for n in range(5):
            sender.send(email(idempotency_key=f"enr_1:{n + 1}"))
    assert len(set(server.mailbox.peers)) == 3


def test_a_connection_the_server_closed_is_replaced_without_losing_the_email() -> None:
    """The server drops an idle session; the next email reconnects and goes through."""
    with Server(timeout=0.3) as running, running.sender() as sender:
        sender.send(email(idempotency_key="enr_1:1"))
        time.sleep(0.8)
        sender.send(email(idempotency_key="enr_1:2"))
    assert [m["X-Dripcore-Key"] for m in running.mailbox.messages] == ["enr_1:1", "enr_1:2"]
    assert len(set(running.mailbox.peers)) == 2


def test_a_dead_port_means_the_sender_is_unavailable() -> None:
    """Nobody listening: retry later, and no message is at fault."""
    sender = SMTPSender(host="127.0.0.1", port=free_port(), default_sender=SHOP, timeout=2.0)
    with pytest.raises(SenderUnavailable, match="can't reach SMTP server"):
        sender.send(email())


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize(
    ("stage", "reply"),
    [
        ("rcpt", "451 4.3.0 Temporary failure, try again later"),
        ("rcpt", "452 4.2.2 Mailbox full"),
        ("mail", "451 4.7.1 Greylisted"),
        ("data", "451 4.3.0 Queue unavailable"),
        ("mail", "421 4.3.2 Service shutting down"),
        ("rcpt", "421 4.7.0 Too many connections"),
        ("data", "421 4.3.2 Closing"),
    ],
)
def test_4xx_replies_are_transient(server: Server, stage: str, reply: str) -> None:
    """A temporary refusal is retried by the engine; the connection stays usable."""
    _answer(server, stage, reply)
    with server.sender() as sender:
        with pytest.raises(TransientSendError, match=reply.split()[0]):
            sender.send(email())
        _answer(server, stage, None)
        sender.send(email(idempotency_key="enr_1:2"))
    assert [m["X-Dripcore-Key"] for m in server.mailbox.messages] == ["enr_1:2"]


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_a_421_says_the_whole_sender_is_unavailable(server: Server, stage: str) -> None:
    """ "Service not available" is about the server, not the message: the whole-sender kind of transient."""
    _answer(server, stage, "421 4.3.2 Service shutting down")
    with server.sender() as sender, pytest.raises(SenderUnavailable, match="421"):
        sender.send(email())


@pytest.mark.parametrize(
    ("stage", "reply", "reason"),
    [
        ("rcpt", "550 5.1.1 No such user", "bounced"),
        ("rcpt", "551 User not local", "bounced"),
        ("rcpt", "553 Mailbox name not allowed", "bounced"),
        ("rcpt", "550 Requested action not taken: mailbox unavailable", "bounced"),
        ("rcpt", "554 5.2.1 Mailbox disabled", "bounced"),
        ("rcpt", "550 5.7.1 Relaying denied", None),
        ("mail", "550 5.7.1 Sender rejected", None),
        ("mail", "553 5.1.8 Sender address domain does not exist", None),
        ("data", "550 5.1.1 Recipient unknown (reported after DATA)", "bounced"),
        ("data", "554 5.7.1 Message rejected as spam", None),
        ("data", "552 5.3.4 Message too big", None),
    ],
)
def test_5xx_replies_are_permanent_and_recipient_errors_are_bounces(
    server: Server, stage: str, reply: str, reason: str | None
) -> None:
    """Only a fault of the recipient's address suppresses the contact."""
    _answer(server, stage, reply)
    with server.sender() as sender, pytest.raises(PermanentSendError) as caught:
        sender.send(email())
    assert caught.value.reason == reason
    assert reply.split()[0] in str(caught.value)


def _answer(server: Server, stage: str, reply: str | None) -> None:
    box = server.mailbox
    if stage == "mail":
        box.mail_reply = reply
    elif stage == "rcpt":
        box.rcpt_replies = {} if reply is None else {"zoe@example.com": reply}
    else:
        box.data_reply = reply


# --------------------------------------------------------------------------- login and TLS


# aiosmtpd's own AUTH code trips its deprecated Session.login_data (in the server thread).
_aiosmtpd_auth = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated:DeprecationWarning")


def _authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"drip", b"s3cret")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535 itself


@_aiosmtpd_auth
def test_login_with_the_right_password_sends() -> None:
    """username/password log in (plain auth is allowed to a server on this machine)."""
    with Server(authenticator=_authenticator, auth_require_tls=False) as running:
        with running.sender(username="drip", password="s3cret") as sender:
            sender.send(email())
        assert len(running.mailbox.messages) == 1


@_aiosmtpd_auth
def test_a_refused_login_is_transient_so_a_fixed_password_loses_nothing() -> None:
    """Setup problems are retried by the engine rather than failing every email for good."""
    with Server(authenticator=_authenticator, auth_require_tls=False) as running:
        with (
            running.sender(username="drip", password="wrong") as sender,
            pytest.raises(SenderUnavailable, match="535"),
        ):
            sender.send(email())
        assert running.mailbox.messages == []


def test_a_password_is_never_sent_in_clear_to_a_remote_host() -> None:
    """Credentials without TLS are refused at construction unless the server is local."""
    with pytest.raises(InvalidArgument, match="in clear"):
        SMTPSender(host="smtp.example.com", default_sender=SHOP, username="u", password="p")
    SMTPSender(host="smtp.example.com", default_sender=SHOP, username="u", password="p", security="starttls")


def test_starttls_against_a_server_without_it_is_transient(server: Server) -> None:
    """A TLS setup problem is the sender's configuration, not the email's fault."""
    with server.sender(security="starttls") as sender, pytest.raises(SenderUnavailable):
        sender.send(email())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: can't make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@_aiosmtpd_auth
def test_starttls_upgrades_the_connection_and_verifies_the_certificate(certificate: tuple[Path, Path]) -> None:
    """STARTTLS with a verified certificate, then login over the encrypted channel."""
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    with Server(tls_context=server_context, require_starttls=True, authenticator=_authenticator) as running:
        with running.sender(security="starttls", ssl_context=client_context, username="drip", password="s3cret") as s:
            s.send(email())
        assert len(running.mailbox.messages) == 1
        untrusting = ssl.create_default_context()  # the system CAs don't know our certificate
        with running.sender(security="starttls", ssl_context=untrusting) as s, pytest.raises(SenderUnavailable):
            s.send(email(idempotency_key="enr_1:2"))
        assert len(running.mailbox.messages) == 1


# --------------------------------------------------------------------------- through the engine


def test_drip_delivers_a_sequence_through_smtp(server: Server) -> None:
    """A real Drip renders with Liquid and sends over SMTP; a 550 bounce exits the contact."""
    server.mailbox.rcpt_replies = {"gone@example.com": "550 5.1.1 No such user"}
    contacts = MemoryContacts(
        [
            Contact(id="zoe", email="zoe@example.com", first_name="<Zoë>"),
            Contact(id="gone", email="gone@example.com", first_name="Gone"),
        ]
    )
    clock, events, store = FakeClock(AT), RecordingEvents(), MemoryStore()
    renderer = LiquidRenderer(unsubscribe_url="https://shop.example/u/{enrollment_id}")
    with server.sender() as sender:
        drip = Drip(store=store, sender=sender, clock=clock, contacts=contacts, events=events, renderer=renderer)
        drip.save_sequence(
            Sequence(
                id="welcome", name="Welcome", status=SequenceStatus.ACTIVE, sender=SHOP,
                steps=(
                    Step(position=1, subject="Welcome, {{firstName}}",
                         html="<p>Hi {{firstName}}</p>", text="Hi {{firstName}}"),
                    Step(position=2, delay=Delay.days(1), subject="Day two", text="Tips for you."),
                ),
            )
        )  # fmt: skip
        zoe, _ = drip.enroll("welcome", "zoe")
        gone, _ = drip.enroll("welcome", "gone")
        first = drip.tick()
        clock.advance(timedelta(days=1, minutes=1))
        second = drip.tick()

    assert (first.sent, first.failed, second.sent) == (1, 1, 1)
    step1, step2 = server.mailbox.messages
    assert step1["Subject"] == "Welcome, <Zoë>"
    assert step1["X-Dripcore-Key"] == f"{zoe.id}:1"
    assert step1["Message-ID"] == message_id(f"{zoe.id}:1", "shop.example")
    assert step1["List-Unsubscribe"] == f"<https://shop.example/u/{zoe.id}>"
    text, html = step1.iter_parts()
    assert "<p>Hi &lt;Zoë&gt;</p>" in html.get_content()  # type: ignore[attr-defined]
    assert f"https://shop.example/u/{zoe.id}" in text.get_content()  # type: ignore[attr-defined]
    assert step2["Subject"] == "Day two"
    assert step2["X-Dripcore-Key"] == f"{zoe.id}:2"
    bounced = store.get_enrollment(gone.id)
    assert bounced is not None
    assert (bounced.status, bounced.exit_reason) == (EnrollmentStatus.EXITED, ExitReason.BOUNCED)
    assert "sequence.step.failed" in events.names()


# --------------------------------------------------------------------------- many threads, a pool of connections


def batch(count: int, start: int = 0) -> list[Email]:
    """``count`` emails, each to its own recipient and with its own key."""
    return [
        email(idempotency_key=f"enr_{n}:1", enrollment_id=f"enr_{n}", to=f"user{n}@example.com")
        for n in range(start, start + count)
    ]


class GatedMailbox(Mailbox):
    """Holds the first ``gate`` messages at DATA until that many are there at once (a proof of parallelism)."""

    def __init__(self, gate: int, latency: float = 0.0) -> None:
        super().__init__()
        self.gate = gate
        self.latency = latency
        self.in_data = 0
        self.most_in_data = 0

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.in_data += 1
        self.most_in_data = max(self.most_in_data, self.in_data)
        try:
            deadline = time.monotonic() + 10
            while self.gate and self.in_data < self.gate and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            self.gate = 0  # the gate opens once
            if self.latency:
                await asyncio.sleep(self.latency)
            return await super().handle_DATA(server, session, envelope)
        finally:
            self.in_data -= 1


@pytest.mark.parametrize(("connections", "threads"), [(4, 4), (3, 8), (1, 4)])
def test_many_threads_deliver_every_email_once_over_at_most_the_pools_connections(
    connections: int, threads: int
) -> None:
    """K threads through one sender: each email arrives once, over at most `connections` sessions, used in parallel."""
    mailbox = GatedMailbox(gate=min(connections, threads), latency=0.002)
    emails = batch(60)
    with Server(mailbox) as running, running.sender(connections=connections, timeout=30.0) as sender:
        assert sender.max_in_flight == connections
        results = send_all(sender, emails, threads)
    assert results == [message_id(e.idempotency_key, "shop.example") for e in emails]
    assert sorted(running.mailbox.keys) == sorted(e.idempotency_key for e in emails)
    assert running.sessions.most <= connections
    assert mailbox.most_in_data == min(connections, threads)  # the first sends really were in flight together
    assert running.sessions.total <= connections  # reused, never reopened


def test_each_connection_is_recycled_after_its_own_number_of_messages() -> None:
    """max_messages_per_connection holds per pooled connection, under concurrency too."""
    with Server() as running, running.sender(connections=3, max_messages_per_connection=4) as sender:
        results = send_all(sender, batch(40), threads=3)
    assert all(isinstance(result, str) for result in results)
    per_session = Counter(running.mailbox.peers)
    assert sum(per_session.values()) == 40
    assert max(per_session.values()) <= 4
    assert running.sessions.most <= 3


def test_close_says_goodbye_on_every_pooled_connection() -> None:
    """After close() the server has no session left; the sender still works afterwards."""
    with Server(GatedMailbox(gate=3)) as running:
        sender = running.sender(connections=3, timeout=30.0)
        send_all(sender, batch(9), threads=3)
        assert running.sessions.open == 3
        sender.close()
        eventually(lambda: running.sessions.open == 0)
        sender.send(email(idempotency_key="after:1"))
        sender.close()
        eventually(lambda: running.sessions.open == 0)
    assert len(running.mailbox.messages) == 10


def test_connections_the_server_closed_while_idle_are_replaced_without_losing_an_email() -> None:
    """A restarted server hangs up on every pooled session; the next sends reconnect and all go through."""
    with Server(GatedMailbox(gate=4)) as running, running.sender(connections=4, timeout=30.0) as sender:
        send_all(sender, batch(8), threads=4)
        running.hang_up_everyone()
        results = send_all(sender, batch(40, start=100), threads=4)
    assert all(isinstance(result, str) for result in results), results
    assert sorted(running.mailbox.keys) == sorted(e.idempotency_key for e in batch(8) + batch(40, start=100))


class DroppingMailbox(Mailbox):
    """Hangs up without a word on some recipients' first attempt: at RCPT TO, at DATA before
    keeping the message, or after keeping it (then the client can't know it arrived)."""

    def __init__(self, plan: dict[str, str]) -> None:
        super().__init__()
        self.plan = plan
        self.dropped: dict[str, str] = {}

    def _drop(self, server: Any, recipient: str, stage: str) -> bool:
        if self.plan.get(recipient) != stage or recipient in self.dropped:
            return False
        self.dropped[recipient] = stage
        server.transport.close()
        return True

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._drop(server, address, "rcpt"):
            return "421 dropped"  # never reaches the client: the transport is closed
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        [recipient] = envelope.rcpt_tos
        if self._drop(server, recipient, "data-lost"):
            return "421 dropped"
        reply = await super().handle_DATA(server, session, envelope)
        self._drop(server, recipient, "data-kept")
        return reply


def test_a_server_dropping_connections_mid_batch_loses_nothing_silently() -> None:
    """Each email is delivered once, or raised Transient (and then arrived at most once); the pool recovers."""
    emails = batch(90)
    stages = ["rcpt", "data-lost", "data-kept"]
    plan = {e.to: stages[n % 3] for n, e in enumerate(emails) if n % 5 == 2}
    mailbox = DroppingMailbox(plan)
    with Server(mailbox) as running, running.sender(connections=4) as sender:
        results = send_all(sender, emails, threads=4)
        arrived = Counter(running.mailbox.keys)
        failed = [e for e, result in zip(emails, results, strict=True) if not isinstance(result, str)]
        for message, result in zip(emails, results, strict=True):
            if isinstance(result, str):
                assert arrived[message.idempotency_key] == 1, message.idempotency_key
            else:
                assert isinstance(result, TransientSendError), result
                assert arrived[message.idempotency_key] <= 1
                kept = mailbox.dropped.get(message.to) == "data-kept"
                assert arrived[message.idempotency_key] == (1 if kept else 0)
        assert failed, "the plan dropped no connection a send was using"
        assert running.sessions.most <= 4
        # The engine offers the failed ones again: they all go through now.
        again = send_all(sender, failed, threads=4)
    assert all(isinstance(result, str) for result in again), again
    arrived = Counter(running.mailbox.keys)
    assert set(arrived) == {e.idempotency_key for e in emails}
    twice = {key for key, count in arrived.items() if count > 1}
    assert twice == {e.idempotency_key for e in failed if mailbox.dropped.get(e.to) == "data-kept"}


# --------------------------------------------------------------------------- keys remembered across threads


def test_threads_sending_the_same_keys_at_once_send_each_one_once() -> None:
    """Eight threads offer the same 30 keys in different orders: each key goes out once, all get its Message-ID."""
    emails = batch(30)
    offers = [e for _ in range(8) for e in random.Random(7).sample(emails, len(emails))]
    with Server(GatedMailbox(gate=0, latency=0.003)) as running, running.sender(connections=8) as sender:
        results = send_all(sender, offers, threads=8)
    assert results == [message_id(e.idempotency_key, "shop.example") for e in offers]
    assert sorted(running.mailbox.keys) == sorted(e.idempotency_key for e in emails)


class HeldMailbox(Mailbox):
    """Holds each DATA until the test releases it, and refuses the first with a 451 if told to; counts MAIL FROM."""

    def __init__(self, refuse_first: bool) -> None:
        super().__init__()
        self.refuse_first = refuse_first
        self.mail_commands = 0
        self.in_data = threading.Event()
        self.release = threading.Event()

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mail_commands += 1
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.in_data.set()
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        if self.refuse_first:
            self.refuse_first = False
            return "451 4.3.0 try again"
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("first_fails", [False, True])
def test_a_key_being_sent_by_one_thread_is_not_sent_by_another_meanwhile(first_fails: bool) -> None:
    """The second thread waits for the first: it gets the first's Message-ID, or sends itself if the first failed."""
    mailbox = HeldMailbox(refuse_first=first_fails)
    expected = message_id("enr_1:1", "shop.example")
    with (
        Server(mailbox) as running,
        running.sender(connections=2, timeout=30.0) as sender,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        first = pool.submit(sender.send, email())
        assert mailbox.in_data.wait(10)
        second = pool.submit(sender.send, email())
        time.sleep(0.2)  # time for the second thread to (wrongly) start a transaction of its own
        assert mailbox.mail_commands == 1
        mailbox.release.set()
        if first_fails:
            with pytest.raises(TransientSendError, match="451"):
                first.result(10)
        else:
            assert first.result(10) == expected
        assert second.result(10) == expected
    assert running.mailbox.keys == ["enr_1:1"]
    assert mailbox.mail_commands == (2 if first_fails else 1)


# --------------------------------------------------------------------------- the sender as a whole


@_aiosmtpd_auth
def test_a_refused_login_makes_every_thread_see_the_sender_unavailable() -> None:
    """Bad credentials are the sender's fault, not any message's: each send raises SenderUnavailable, nothing goes."""
    with Server(authenticator=_authenticator, auth_require_tls=False) as running:
        with running.sender(username="drip", password="wrong", connections=4) as sender:
            results = send_all(sender, batch(12), threads=4)
        assert all(isinstance(result, SenderUnavailable) for result in results), results
        assert all(isinstance(result, TransientSendError) for result in results)
        assert running.mailbox.messages == []


@pytest.mark.parametrize("connections", [0, 101, -1, True, 2.0, "8", None])
def test_the_number_of_connections_is_checked(connections: Any) -> None:
    """connections is an integer from 1 to 100, else InvalidArgument naming it."""
    with pytest.raises(InvalidArgument) as caught:
        SMTPSender(host="localhost", default_sender=SHOP, connections=connections)
    assert caught.value.field == "connections"


@pytest.mark.parametrize(
    "options",
    [{"max_messages_per_connection": 0}, {"remember_keys": -1}, {"timeout": 0}, {"security": "ssl"},
     {"envelope_from": "Bounces <b@shop.example>"}],
)  # fmt: skip
def test_settings_out_of_range_raise_invalid_argument(options: dict[str, Any]) -> None:
    """Every constructor check raises dripcore's InvalidArgument (a ValueError too), naming the argument."""
    with pytest.raises(InvalidArgument) as caught:
        SMTPSender(host="localhost", default_sender=SHOP, **options)
    assert caught.value.field in options
    assert isinstance(caught.value, ValueError)


# --------------------------------------------------------------------------- the message, written directly

# The reference: how SMTPSender built messages before it wrote them directly (the email
# package's EmailMessage and header registry). The new writer must read back the same.
_REF_BUILD = email_policy.SMTP.clone(cte_type="7bit")
_REF_WIRE = _REF_BUILD.clone(max_line_length=998)
_REF_WIRE_UTF8 = _REF_WIRE.clone(utf8=True)


def _reference_address(addr_spec: str, display_name: str | None = None) -> Address:
    if addr_spec.isascii():
        return Address(display_name=display_name or "", addr_spec=addr_spec)
    username, _, domain = addr_spec.rpartition("@")
    return Address(display_name=display_name or "", username=username, domain=domain)


def reference_bytes(message: Email, sender: SenderIdentity, domain: str) -> bytes:
    """The message as the email package built it (the code SMTPSender.build_message had)."""
    built = EmailMessage(policy=_REF_BUILD)
    built["From"] = _reference_address(sender.from_email, sender.from_name)
    built["To"] = _reference_address(message.to)
    if sender.reply_to is not None:
        built["Reply-To"] = _reference_address(sender.reply_to)
    built["Subject"] = message.subject
    built["Date"] = formatdate(usegmt=True)
    built["Message-ID"] = message_id(message.idempotency_key, domain)
    built["X-Dripcore-Key"] = message.idempotency_key
    for name, value in message.headers.items():
        built[name] = value
    if message.text is not None:
        built.set_content(message.text)
        if message.html is not None:
            built.add_alternative(message.html, subtype="html")
    elif message.html is not None:
        built.set_content(message.html, subtype="html")
    utf8 = not (sender.from_email.isascii() and message.to.isascii())
    return built.as_bytes(policy=_REF_WIRE_UTF8 if utf8 else _REF_WIRE)


def read_back(raw: bytes) -> dict[str, Any]:
    """What a reader sees in a message: the fields, the structure, each part's decoded content."""
    parsed = message_from_bytes(raw, policy=email_policy.default)
    assert isinstance(parsed, EmailMessage)

    def mailbox(name: str) -> tuple[str, str] | None:
        header = parsed[name]
        if header is None:
            return None
        [address] = header.addresses
        return address.display_name, address.addr_spec

    parts = list(parsed.iter_parts()) if parsed.is_multipart() else [parsed]
    return {
        "names": sorted(name.lower() for name in parsed),
        "from": mailbox("From"),
        "to": mailbox("To"),
        "reply-to": mailbox("Reply-To"),
        "type": parsed.get_content_type(),
        "parts": [(part.get_content_type(), part.get_param("charset"), part.get_content()) for part in parts],
        **{
            name.lower(): str(parsed[name])
            for name in parsed
            if name.lower() not in {"from", "to", "reply-to", "date", "content-type", "content-transfer-encoding"}
        },
    }


def defects(raw: bytes) -> list[Any]:
    """Every defect the email package finds in a message, its headers and its parts."""
    parsed = message_from_bytes(raw, policy=email_policy.default)
    found: list[Any] = []
    for part in parsed.walk():
        found += part.defects
        found += [defect for _, value in part.items() for defect in getattr(value, "defects", ())]
    return found


_URL = "https://shop.example/unsubscribe/" + "t" * 150
_hard = st.sampled_from(["é", "ü", "ß", "Å", "中", "文", "😀", "—", "\u2019", "=?", "?=", "_", '"', "\\", "(", ")",
                         "<", ">", ",", ";", ":", "@", ".", "'", "=", "  ", "\t"])  # fmt: skip
_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_any_char = st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"])
header_texts = st.lists(st.one_of(_ascii, _ascii, _hard, _any_char), max_size=40).map("".join)
long_texts = st.lists(st.sampled_from(["word", "mot", "Zoë", "x" * 40, _URL]), min_size=20, max_size=60).map(" ".join)
body_lines = st.lists(
    st.one_of(
        st.lists(st.one_of(_ascii, _ascii, _hard, _any_char), max_size=100).map("".join),
        st.sampled_from([_URL, ".", "..", "From here", "trailing   ", "=3D", "a" * 120, "é" * 60, ""]),
    ),
    max_size=8,
)
bodies = st.tuples(body_lines, st.sampled_from(["\n", "\r\n", "\r"]), st.booleans()).map(
    lambda t: t[1].join(t[0]) + (t[1] if t[2] else "")
)
addresses = st.sampled_from(["zoe@example.com", "first.last+tag@sub.example.org", "o'brien@example.ie"])
custom_headers = st.dictionaries(
    st.sampled_from(["List-Unsubscribe", "List-Unsubscribe-Post", "X-Campaign", "List-Id", "Content-Language"]),
    st.one_of(header_texts, st.just(f"<{_URL}>"), st.just(f"<{_URL}>, <mailto:u@shop.example?subject=stop>")),
    max_size=3,
)


@st.composite
def emails_to_write(draw: st.DrawFn) -> tuple[Email, SenderIdentity]:
    name = draw(st.none() | header_texts)
    try:
        sender = SenderIdentity(from_email="news@shop.example", from_name=name, reply_to=draw(st.none() | addresses))
    except ValidationError:
        assume(False)
        raise
    text, html = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    message = email(
        idempotency_key=draw(st.sampled_from(["enr_1:1", "enr_01HZX:12", "clé:1"])),
        to=draw(addresses),
        subject=draw(header_texts | long_texts),
        text=draw(bodies) if text else None,
        html=draw(bodies) if html else None,
        headers=draw(custom_headers),
        sender=sender,
    )
    return message, sender


def rfc2047_mailbox(raw: bytes, name: str) -> tuple[str, str] | None:
    """A mailbox header as RFC 2047 (6.2) reads it: white space between adjacent encoded words is not text.

    Python's modern parser keeps that white space as a space inside a display name, so a long name
    written as several encoded words reads back with spaces the sender never wrote; mail clients
    follow the RFC, as ``email.header.decode_header`` does.
    """
    value = message_from_bytes(raw, policy=email_policy.compat32)[name]
    if value is None:
        return None
    display, _, address = re.sub(r"\r?\n[ \t]", " ", str(value)).rpartition(" <")
    return str(make_header(decode_header(display))), address.removesuffix(">")


def comparable(field: str, value: Any) -> Any:
    """A read-back value as a reader means it: Python's squeezes each run of spaces in a decoded display name."""
    if field in ("from", "to", "reply-to") and value is not None:
        name, address = value
        return " ".join(name.split()), address
    return value


# Where the email package's message did not read back as the email said, the new one does:
# it dropped a value's leading spaces or tabs, decoded text that looked like an encoded word
# ("=?utf-8?q?x?=" became "x"), and squeezed runs of spaces in a display name.
# Each example builds and parses several messages: a quarter of the profile's count keeps the
# thorough run to seconds (about 100 examples under ci).
_BUILDER_EXAMPLES = settings(max_examples=max(settings.default.max_examples // 4, 20))


@_BUILDER_EXAMPLES
@given(emails_to_write())
def test_the_written_message_reads_back_as_the_email_packages_did(case: tuple[Email, SenderIdentity]) -> None:
    """Fields, structure and decoded parts equal the reference builder's, or the email's own text where that lost it."""
    message, sender = case
    with SMTPSender(host="localhost", default_sender=SHOP) as smtp:
        written = smtp.message_bytes(message)
    new = read_back(written)
    old = read_back(reference_bytes(message, sender, "shop.example"))
    truth = {
        "subject": message.subject,
        "x-dripcore-key": message.idempotency_key,
        "from": (sender.from_name or "", sender.from_email),
        **{name.lower(): value for name, value in message.headers.items()},
    }
    assert new.keys() == old.keys()
    for field in new:
        mine, theirs = comparable(field, new[field]), comparable(field, old[field])
        if mine != theirs and field in ("from", "reply-to") and field in truth:
            # A long display name goes as several encoded words; read it as the RFC says.
            mine = comparable(field, rfc2047_mailbox(written, field))
            if mine == comparable(field, truth[field]):
                continue
        if mine != theirs:
            assert field in truth, field
            assert theirs != comparable(field, truth[field]), field
            assert mine == comparable(field, truth[field]), field
    assert defects(written) == []
    lines = written.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    assert b"\n" not in written.replace(b"\r\n", b"")
    assert b"\r" not in written.replace(b"\r\n", b"")
    for name, value in message.headers.items():
        if name.lower().startswith("content-"):
            continue
        if value and value.isascii() and value.isprintable() and "=?" not in value and value.strip() == value:
            assert f"{name}: {value}".encode() in written.replace(b"\r\n ", b" ")  # never encoded, at most folded


@_BUILDER_EXAMPLES
@given(emails_to_write())
def test_the_written_message_carries_the_emails_own_text(case: tuple[Email, SenderIdentity]) -> None:
    """Subject, names and rendered headers read back exactly as given; the Date is now, in UTC."""
    message, sender = case
    with SMTPSender(host="localhost", default_sender=SHOP) as smtp:
        written = smtp.message_bytes(message)
        new = read_back(written)
        date = smtp.build_message(message)["Date"]
    assert new["subject"] == message.subject
    name, address = new["from"]
    if (name.split(), address) != ((sender.from_name or "").split(), sender.from_email):
        # A long display name goes as several encoded words: read it as RFC 2047 says.
        name, address = rfc2047_mailbox(written, "from") or ("", "")
    # (Python's reader turns each run of spaces in a decoded phrase into one: a reader's habit.)
    assert (name.split(), address) == ((sender.from_name or "").split(), sender.from_email)
    assert new["message-id"] == message_id(message.idempotency_key, "shop.example")
    for name, value in message.headers.items():
        assert new.get(name.lower()) == (None if name.lower().startswith("content-") else value)
    assert parsedate_to_datetime(str(date)).utcoffset() == timedelta(0)


@pytest.mark.parametrize("subject", ["Hi\n", "Hi\r\n", "Hi\r", "Hi\u2028", "Hi\x85", "Hi\nBcc: x@evil.example"])
def test_a_subject_with_a_line_break_is_refused(server: Server, subject: str) -> None:
    """The email package let a trailing one through, which ended the header block early; no line break passes now."""
    with server.sender() as sender, pytest.raises(PermanentSendError, match="line break"):
        sender.send(email(subject=subject))
    assert server.mailbox.messages == []


@pytest.mark.parametrize("to", ["Zoë <zoe@example.com>", "a, b@example.com", "zoe@example.com>", "zoe", ""])
def test_a_recipient_that_is_not_one_plain_address_is_refused(server: Server, to: str) -> None:
    """Nothing but a bare address goes into To and RCPT TO: a second recipient can't hide there."""
    with server.sender() as sender, pytest.raises(PermanentSendError):
        sender.send(email(to=to))
    assert server.mailbox.messages == []


def test_text_that_looks_like_an_encoded_word_arrives_as_written(server: Server) -> None:
    """A subject or name holding '=?...?=' is encoded, so no reader decodes it into something else."""
    tricky = SenderIdentity(from_email="news@shop.example", from_name="=?utf-8?q?CEO?=")
    with server.sender() as sender:
        sender.send(email(subject="=?utf-8?q?Urgent?= offer", sender=tricky))
    [message] = server.mailbox.messages
    assert message["Subject"] == "=?utf-8?q?Urgent?= offer"
    assert message["From"].addresses[0].display_name == "=?utf-8?q?CEO?="


def test_rendered_content_headers_are_left_out_as_before(server: Server) -> None:
    """The sender writes the MIME structure: a renderer's Content-* header is dropped, as the email package did."""
    with server.sender() as sender:
        sender.send(email(headers={"Content-Language": "fr", "X-Campaign": "spring"}))
    [message] = server.mailbox.messages
    assert message["Content-Language"] is None
    assert message["X-Campaign"] == "spring"
    assert "content-type" in RESERVED_HEADERS


@pytest.mark.parametrize(
    ("name", "value", "folded"),
    [
        (
            "List-Unsubscribe",
            f"<https://shop.example/u/{'a' * 600}>, <mailto:u@shop.example?subject={'b' * 500}>",
            True,
        ),
        ("Subject", " ".join(["unsubscribe"] * 100), True),
        ("List-Unsubscribe", f"<https://shop.example/u/{'a' * 1200}>", False),
    ],
)
def test_a_header_past_the_line_limit_is_folded_at_a_space_else_encoded(
    server: Server, name: str, value: str, folded: bool
) -> None:
    """No line passes 998 characters; a header is folded where it has a space, else encoded; it reads back intact."""
    headers = {} if name == "Subject" else {name: value}
    subject = value if name == "Subject" else "Hello"
    with server.sender() as sender:
        sender.send(email(subject=subject, headers=headers))
    [(envelope, message)] = server.mailbox.received
    assert isinstance(envelope.content, bytes)
    assert all(len(line) <= 998 for line in envelope.content.split(b"\r\n"))
    assert message[name] == value
    assert (b"=?utf-8?" not in envelope.content.split(b"\r\n\r\n")[0]) == folded


def test_a_refused_recipient_leaves_the_connection_to_the_next_email(server: Server) -> None:
    """After a 550 (and RSET) the same session carries the next email."""
    server.mailbox.rcpt_replies = {"gone@example.com": "550 5.1.1 No such user"}
    with server.sender(connections=1) as sender:
        with pytest.raises(PermanentSendError):
            sender.send(email(to="gone@example.com"))
        sender.send(email(idempotency_key="enr_1:2"))
    assert server.mailbox.keys == ["enr_1:2"]
    assert server.sessions.total == 1


def test_drip_sends_over_all_the_pools_connections_at_once() -> None:
    """The engine reads max_in_flight: a tick of 40 first emails goes out over 4 sessions in parallel, each once."""
    mailbox = GatedMailbox(gate=4, latency=0.002)
    people = [Contact(id=f"c{n}", email=f"reader{n}@example.com", first_name=f"R{n}") for n in range(40)]
    clock = FakeClock(AT)
    with Server(mailbox) as running, running.sender(connections=4, timeout=30.0) as sender:
        drip = Drip(
            store=MemoryStore(), sender=sender, clock=clock, contacts=MemoryContacts(people),
            allow_placeholder_unsubscribe=True,  # the mail goes to a local test server
        )  # fmt: skip
        drip.save_sequence(
            Sequence(id="hello", name="Hello", status=SequenceStatus.ACTIVE, sender=SHOP,
                     steps=(Step(position=1, subject="Hello {{firstName}}", text="Hi {{firstName}}"),))
        )  # fmt: skip
        for person in people:
            drip.enroll("hello", person.id)
        report = drip.tick()
    assert report.sent == 40
    assert sorted(str(m["To"]) for m in running.mailbox.messages) == sorted(p.email for p in people)
    assert running.sessions.most <= 4
    assert mailbox.most_in_data == 4
