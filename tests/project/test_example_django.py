"""The Django example project works as written: sign-up enrolls, the worker mails over SMTP, links unsubscribe.

One project on temporary databases for the whole module: Django runs in this
process (the ORM, the test client), the worker runs as ``manage.py drip_worker``
in a process of its own, and mail goes to aiosmtpd in a third, which writes each
message to a Maildir.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

pytest.importorskip("django", reason="pip install -e '.[django]'")

import django
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client, override_settings

import dripcore
from dripcore import EnrollmentStatus, ExitReason, InvalidUnsubscribeToken, UnsubscribeLinks
from dripcore.ports import OutboxStatus
from tests.workers.smtp_server import start_server

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "django_app"
TIMEOUT = 30.0
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
    """Poll ``probe`` until it returns something (generous timeout, no assertion on time)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Site:
    """The example project on temporary databases, with the SMTP server its mail goes to."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data, self.env = data, env
        self.maildir = data / "mail"

    def mail(self) -> list[EmailMessage]:
        """Every message the SMTP server has received."""
        folder = self.maildir / "new"
        files = sorted(folder.iterdir()) if folder.exists() else []
        return [message_from_bytes(f.read_bytes(), policy=email_policy.default) for f in files]  # type: ignore[misc]

    def mail_to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mail() if str(m["To"]) == address]

    def worker(self, **env: str) -> subprocess.Popen[str]:
        """``python manage.py drip_worker`` in a process of its own, once it has synced and is running."""
        process = subprocess.Popen(
            [sys.executable, "manage.py", "drip_worker", "--idle", "1"],
            cwd=PROJECT, env={**self.env, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        watchdog = threading.Timer(TIMEOUT, process.kill)  # a worker that never gets going is killed
        watchdog.start()
        try:
            lines = [process.stdout.readline(), process.stdout.readline()]
        finally:
            watchdog.cancel()
        if not lines[0].startswith("sequences:") or not lines[1].startswith("delivering"):
            process.kill()
            _, err = process.communicate()
            raise AssertionError(f"the worker did not start: {lines!r}\n{err}")
        return process


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("django_site")
    port = free_port()
    smtp = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Mailbox",
         str(data / "mail")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip

    def listening() -> bool:
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", port)) == 0

    env = {
        **os.environ,
        "PYTHONPATH": str(Path(dripcore.__file__).resolve().parents[1]),  # the dripcore this test imports
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "drip_site.settings",
        "DJANGO_ALLOWED_HOSTS": "testserver",
        "DRIP_SITE_DATA_DIR": str(data),
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(port),
        "DRIPCORE_UNSUBSCRIBE_URL": "https://testserver/unsubscribe/{token}/",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "DJANGO_SETTINGS_MODULE",
            "DJANGO_ALLOWED_HOSTS",
            "DRIP_SITE_DATA_DIR",
            "EMAIL_HOST",
            "EMAIL_PORT",
        ):
            patch.setenv(name, env[name])
        patch.setenv("DRIPCORE_UNSUBSCRIBE_URL", env["DRIPCORE_UNSUBSCRIBE_URL"])
        patch.syspath_prepend(str(PROJECT))
        try:
            eventually(lambda: listening() or smtp.poll() is not None, "the SMTP server")
            assert smtp.poll() is None, smtp.communicate()[1]
            django.setup()
            call_command("migrate", verbosity=0)
            call_command("sync_sequences")  # the deploy step: before the first sign-up
            yield Site(data, env)
        finally:
            from drip_app.engine import get_drip

            get_drip().store.close()
            get_drip.cache_clear()
            connections.close_all()
            smtp.terminate()
            smtp.communicate(timeout=TIMEOUT)


def sign_up(username: str, **fields: Any) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username, email=f"{username}@example.com", **fields)


def enrollment_of(user: Any) -> Any:
    from drip_app.engine import get_drip

    found = get_drip().enrollments("welcome", contact_id=str(user.pk))
    return found[-1] if found else None


def unsubscribe_path(message: EmailMessage) -> str:
    header = str(message["List-Unsubscribe"])
    assert header.startswith("<https://testserver/unsubscribe/"), header
    assert header.endswith("/>"), header
    return urlsplit(header[1:-1]).path


# --------------------------------------------------------------------------- sign-up, delivery, unsubscribe


def test_a_signed_up_user_gets_mail_whose_one_click_link_unsubscribes_them_and_nobody_else(site: Site) -> None:
    from drip_app.models import Profile

    ana = sign_up("ana", first_name="Ana")
    Profile.objects.create(user=ana, timezone="Europe/Lisbon")
    bo = sign_up("bo", first_name="Bo")  # no profile: signs up, is enrolled and mailed all the same
    assert not Profile.objects.filter(user=bo).exists()
    assert enrollment_of(ana).status is EnrollmentStatus.ACTIVE
    assert enrollment_of(bo).status is EnrollmentStatus.ACTIVE

    worker = site.worker()
    try:
        eventually(lambda: len(site.mail()) >= 2, "the welcome emails")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err

    [to_ana] = site.mail_to("ana@example.com")
    [to_bo] = site.mail_to("bo@example.com")
    assert str(to_bo["Subject"]) == "Welcome, Bo!"
    assert str(to_bo["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    path = unsubscribe_path(to_bo)
    assert path != unsubscribe_path(to_ana)

    client = Client(enforce_csrf_checks=True)  # as a mailbox provider: no cookie, no CSRF token
    page = client.get(path)
    assert page.status_code == 200
    assert b'<form method="post">' in page.content
    assert enrollment_of(bo).status is EnrollmentStatus.ACTIVE  # a GET (a link scanner) unsubscribes nobody

    answer = client.post(path, {"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    assert b"You are unsubscribed" in answer.content
    gone = enrollment_of(bo)
    assert (gone.status, gone.exit_reason) == (EnrollmentStatus.EXITED, ExitReason.UNSUBSCRIBED)
    assert Profile.objects.get(user=bo).email_suppressed == "unsubscribed"  # created for a user who had none
    assert enrollment_of(ana).status is EnrollmentStatus.ACTIVE
    assert Profile.objects.get(user=ana).email_suppressed == ""
    assert client.post(path, {"List-Unsubscribe": "One-Click"}).status_code == 200  # again: still fine


def test_a_tampered_token_is_refused_with_400_and_unsubscribes_nobody(site: Site) -> None:
    from drip_app.engine import unsubscribe_links

    cy = sign_up("cy", first_name="Cy")
    token = unsubscribe_links().token(str(cy.pk), enrollment_of(cy).id)
    version, payload, tag = token.split(".")
    forged = unsubscribe_links().token("1", enrollment_of(cy).id).split(".")[1]  # another contact's ids
    client = Client(enforce_csrf_checks=True)
    for bad in (
        f"{version}.{forged}.{tag}",
        f"{version}.{payload}.{tag[:-1]}{'B' if tag.endswith('A') else 'A'}",
        "not-a-token",
    ):
        assert client.post(f"/unsubscribe/{bad}/", {"List-Unsubscribe": "One-Click"}).status_code == 400
        assert client.get(f"/unsubscribe/{bad}/").status_code == 400
    assert enrollment_of(cy).status is EnrollmentStatus.ACTIVE
    assert client.post(f"/unsubscribe/{token}/", {"List-Unsubscribe": "One-Click"}).status_code == 200
    assert enrollment_of(cy).status is EnrollmentStatus.EXITED


def test_a_rolled_back_sign_up_enrolls_nobody_and_a_user_without_email_signs_up_fine(site: Site) -> None:
    from django.contrib.auth import get_user_model

    ghosts = []

    def failed_sign_up() -> None:
        with transaction.atomic():
            ghosts.append(sign_up("ghost"))
            raise RuntimeError("the sign-up form failed later on")

    with pytest.raises(RuntimeError):
        failed_sign_up()
    assert not get_user_model().objects.filter(username="ghost").exists()
    assert enrollment_of(ghosts[0]) is None  # on_commit never ran
    nobody = get_user_model().objects.create_user("nobody")  # no email, no profile: no exception either
    assert enrollment_of(nobody) is None


# --------------------------------------------------------------------------- the worker command


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_worker_command_stops_cleanly_on(site: Site, signum: signal.Signals) -> None:
    worker = site.worker()
    worker.send_signal(signum)
    out, err = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err
    assert f"{signum.name}: stopping after the current batch" in out
    assert out.rstrip().endswith("drip worker stopped")


def test_a_stopped_worker_finishes_and_records_the_email_it_is_sending(site: Site, tmp_path: Path) -> None:
    from drip_app.engine import get_drip

    store = get_drip().store
    with start_server(tmp_path / "accepted.log", latency_ms=1500) as slow_server:
        dee = sign_up("dee", first_name="Dee")
        key = f"{enrollment_of(dee).id}:1"
        worker = site.worker(EMAIL_PORT=str(slow_server.port))
        # Committed with the enrollment's new state, then handed to the server, which takes 1.5 s to accept it.
        eventually(lambda: store.get_message(key), "the welcome email in the outbox")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=TIMEOUT)
        accepted = [message.key for message in slow_server.accepted()]
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err
    assert accepted == [key]  # sent once, and not cut off
    message = store.get_message(key)
    assert message is not None
    assert message.status is OutboxStatus.DELIVERED  # and recorded before the worker exited


# --------------------------------------------------------------------------- settings


def test_the_sender_follows_djangos_email_settings(site: Site) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from drip_app.engine import build_sender

    mail = {"EMAIL_HOST": "smtp.example.com", "EMAIL_HOST_USER": "drip", "EMAIL_HOST_PASSWORD": "pw"}
    with override_settings(**mail, EMAIL_USE_SSL=True, EMAIL_PORT=465, EMAIL_TIMEOUT=7):
        sender = build_sender()
        assert (sender.security, sender.port, sender.host, sender.timeout) == ("tls", 465, "smtp.example.com", 7)
    with override_settings(**mail, EMAIL_USE_TLS=True, EMAIL_PORT=587, EMAIL_TIMEOUT=None):
        sender = build_sender()
        assert (sender.security, sender.port, sender.timeout) == ("starttls", 587, 30.0)
    with override_settings(EMAIL_USE_TLS=True, EMAIL_USE_SSL=True), pytest.raises(ImproperlyConfigured):
        build_sender()


def test_unsubscribe_links_signed_with_an_old_secret_still_work(site: Site) -> None:
    from drip_app.engine import unsubscribe_links

    make = unsubscribe_links.__wrapped__  # the settings-reading function, without its per-process cache
    old = UnsubscribeLinks("https://testserver/unsubscribe/{token}/", secret="the old secret, retired")
    token = old.token("42", "enr-1")
    with override_settings(DRIPCORE_UNSUBSCRIBE_SECRET="the new secret, in use", DRIPCORE_UNSUBSCRIBE_OLD_SECRETS=[]):
        assert make().verify(make().token("42", "enr-1")).contact_id == "42"
        with pytest.raises(InvalidUnsubscribeToken, match="signature"):
            make().verify(token)
    with override_settings(
        DRIPCORE_UNSUBSCRIBE_SECRET="the new secret, in use",
        DRIPCORE_UNSUBSCRIBE_OLD_SECRETS=["the old secret, retired"],
    ):
        assert make().verify(token).contact_id == "42"
    # Without a secret of its own, SECRET_KEY signs and SECRET_KEY_FALLBACKS verify.
    with override_settings(SECRET_KEY="the old secret, retired", DRIPCORE_UNSUBSCRIBE_SECRET=""):
        from_key = make().token("42", "enr-1")
    with override_settings(SECRET_KEY="a brand new SECRET_KEY", SECRET_KEY_FALLBACKS=["the old secret, retired"]):
        assert make().verify(from_key).contact_id == "42"
