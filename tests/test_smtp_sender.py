"""The SMTP sender, end to end against a real SMTP server (aiosmtpd) on the loopback interface."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from dripcore import Contact, Delay, Drip, EnrollmentStatus, ExitReason, SenderIdentity, Sequence, SequenceStatus, Step
from dripcore.adapters.memory import MemoryStore
from dripcore.errors import PermanentSendError, TransientSendError
from dripcore.ports import Email
from dripcore.render import LiquidRenderer
from dripcore.senders import SMTPSender, message_id
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


class Server:
    """A running aiosmtpd server and its mailbox."""

    def __init__(self, **smtp_options: Any) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port, **smtp_options)

    def __enter__(self) -> Server:
        self.controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.controller.stop()

    def sender(self, **options: Any) -> SMTPSender:
        options.setdefault("default_sender", SHOP)
        options.setdefault("timeout", 5.0)
        return SMTPSender(host="127.0.0.1", port=self.port, **options)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


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
        {"From": "ceo@bank.example"},
        {"Message-ID": "<forged@example.com>"},
        {"Bad Name": "x"},
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


def test_a_dead_port_is_transient() -> None:
    """Nobody listening: retry later."""
    sender = SMTPSender(host="127.0.0.1", port=free_port(), default_sender=SHOP, timeout=2.0)
    with pytest.raises(TransientSendError, match="can't reach SMTP server"):
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
            pytest.raises(TransientSendError, match="535"),
        ):
            sender.send(email())
        assert running.mailbox.messages == []


def test_a_password_is_never_sent_in_clear_to_a_remote_host() -> None:
    """Credentials without TLS are refused at construction unless the server is local."""
    with pytest.raises(ValueError, match="in clear"):
        SMTPSender(host="smtp.example.com", default_sender=SHOP, username="u", password="p")
    SMTPSender(host="smtp.example.com", default_sender=SHOP, username="u", password="p", security="starttls")


def test_starttls_against_a_server_without_it_is_transient(server: Server) -> None:
    """A TLS setup problem is the sender's configuration, not the email's fault."""
    with server.sender(security="starttls") as sender, pytest.raises(TransientSendError):
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
        with running.sender(security="starttls", ssl_context=untrusting) as s, pytest.raises(TransientSendError):
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
