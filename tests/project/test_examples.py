"""Every program in examples/ runs on its own and does what its docstring says."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from hypothesis import settings

from dripcore.ports import Store
from dripcore.testing.contract import StoreContract, StoreStateMachine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

from custom_store import DocumentStore, break_document  # noqa: E402

SECRET = "a-test-secret-of-32-characters.."


def run_example(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    """Run ``python examples/<args>`` in a fresh interpreter; returns its output, failing on any error."""
    env = {**os.environ, "PYTHONWARNINGS": "error", **(env or {})}
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout


# --------------------------------------------------------------------------- quickstart.py


def test_quickstart_prints_the_timeline_of_a_week() -> None:
    out = run_example(str(EXAMPLES / "quickstart.py"))
    assert "Mon 02 Mar 09:00 UTC  ana@example.com  'Welcome, Ana!'" in out
    assert "Tue 03 Mar 14:00 UTC  bo@example.com   'Three tips'" in out
    # a calendar-day delay keeps 09:00 local across New York's change to summer time
    assert "Mon 09 Mar 13:00 UTC  bo@example.com   'How is it going?'" in out
    assert "09:00 EDT local" in out
    assert "2 recipients, 2 completed, 6 emails sent." in out


def test_quickstart_is_the_tutorials_series() -> None:
    """The tutorial calls quickstart.py its steps 1 to 7: the same sequence and contacts."""
    import quickstart

    from tests.project.test_docs import python_blocks

    namespace: dict[str, Any] = {}
    exec(python_blocks(ROOT / "docs" / "tutorial.md")[0][1], namespace)  # step 1: the sequence
    assert namespace["welcome"] == quickstart.WELCOME
    assert '"ana", email="ana@example.com", first_name="Ana", timezone="Europe/Lisbon"' in (
        ROOT / "docs" / "tutorial.md"
    ).read_text("utf-8")


# --------------------------------------------------------------------------- twice in one directory


def _without_ids(output: str) -> str:
    """``output`` with each enrollment id (random, time-sortable) replaced by ``enr_*``."""
    return re.sub(r"enr_[0-9a-z_]+", "enr_*", output)


TWICE = {
    "quickstart": [str(EXAMPLES / "quickstart.py")],
    "custom_store": [str(EXAMPLES / "custom_store.py")],
    "webhook_sink": [str(EXAMPLES / "webhook_sink.py")],
    "fastapi_app": [str(EXAMPLES / "fastapi_app"), "--demo"],
}


@pytest.mark.parametrize("program", TWICE.values(), ids=TWICE.keys())
def test_an_example_runs_twice_in_the_same_directory(program: list[str], tmp_path: Path) -> None:
    """A reader who runs an example again gets the same result, and nothing is left in the directory."""
    first = run_example(*program, cwd=tmp_path)
    second = run_example(*program, cwd=tmp_path)
    assert _without_ids(first) == _without_ids(second)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- fastapi_app/


def test_fastapi_app_demo_plays_its_session() -> None:
    out = run_example(str(EXAMPLES / "fastapi_app"), "--demo")
    assert 'POST /sequences {"id": "onboarding", "name": "Onboarding"}\n  -> 201' in out
    assert "DELETE /sequences/onboarding\n  -> 409" in out
    assert "emails sent: ['Welcome!']" in out  # the paused, then cancelled, subscriber got nothing more
    assert "POST /unsubscribe/<Bo's token> List-Unsubscribe=One-Click\n  -> 200" in out  # one-click, signed


# --------------------------------------------------------------------------- custom_store.py


def test_custom_store_runs_the_welcome_series() -> None:
    out = run_example(str(EXAMPLES / "custom_store.py"))
    assert out.count("Welcome aboard, Ana") == 1
    assert "How is it going, Ana?" in out


class TestCustomStoreContract(StoreContract):
    """The example adapter passes every test of the storage contract kit."""

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        with DocumentStore() as store:
            yield store

    @pytest.fixture
    def break_enrollment(self) -> Any:
        return break_document


def test_custom_store_runs_every_capability_and_broken_record_test() -> None:
    """The example declares retention and corrupts documents for the kit: none of it is skipped."""
    assert {"frequency_cap", "retention"} <= DocumentStore.capabilities


class CustomStoreAgreesWithMemory(StoreStateMachine):
    """The example adapter and the reference MemoryStore agree on random operations, reopening included."""

    def make_store(self) -> Store:
        return DocumentStore()

    def reopen_store(self, store: Store) -> Store:
        assert isinstance(store, DocumentStore)
        store.close()
        return DocumentStore(store.documents)


TestCustomStoreStateMachine = CustomStoreAgreesWithMemory.TestCase
# The example scans JSON documents on every call: keep its state machine short (the
# memory and SQLite stores get the thorough runs).
TestCustomStoreStateMachine.settings = settings(max_examples=15, stateful_step_count=20, deadline=None)


# --------------------------------------------------------------------------- smtp_worker.py


class Mailbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = message_from_bytes(envelope.content, policy=email_policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 2.0.0 queued"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


def test_smtp_worker_delivers_a_welcome_series_over_smtp(smtp_server: tuple[int, Mailbox], tmp_path: Path) -> None:
    port, mailbox = smtp_server
    worker = [str(EXAMPLES / "smtp_worker.py"), "--db", str(tmp_path / "drip.db"), "--smtp-host", "127.0.0.1"]
    env = {"DRIP_UNSUBSCRIBE_SECRET": SECRET}
    out = run_example(*worker, "--smtp-port", str(port), "--seed", "--simulate", env=env)
    assert "completed=2" in out
    assert "6 emails delivered" in out
    subjects = sorted(str(m["Subject"]) for m in mailbox.messages)
    assert subjects == sorted(
        [f"Welcome aboard, {n}" for n in ("Ana", "Bo")]
        + ["Getting started: three tips"] * 2
        + [f"How is it going, {n}?" for n in ("Ana", "Bo")]
    )
    first = next(m for m in mailbox.messages if str(m["Subject"]) == "Welcome aboard, Ana")
    assert str(first["To"]) == "ana@example.com"
    assert str(first["Message-ID"]).startswith("<dripcore.")
    # A signed one-click unsubscribe link, which the application verifies with the same secret.
    url = str(first["List-Unsubscribe"]).strip("<>")
    assert url.startswith("https://example.com/unsubscribe/")
    assert str(first["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    from dripcore import UnsubscribeLinks

    links = UnsubscribeLinks("https://example.com/unsubscribe/{token}", secret=SECRET)
    assert links.verify(url.rsplit("/", 1)[1]).contact_id == "ana"

    # Run again on the same database: everything was delivered, nothing goes twice.
    run_example(*worker, "--smtp-port", str(port), "--drain", "--quiet", env=env)
    assert len(mailbox.messages) == 6


def test_smtp_worker_simulates_twice_without_seed_or_db(smtp_server: tuple[int, Mailbox], tmp_path: Path) -> None:
    """--simulate seeds by itself, needs no secret for a try-out, keeps its database out of the
    working directory (in the temporary directory, named at start), and a second run sends nothing."""
    port, mailbox = smtp_server
    temp, work = tmp_path / "temp", tmp_path / "work"
    temp.mkdir()
    work.mkdir()
    env = {"TMPDIR": str(temp), "DRIP_UNSUBSCRIBE_SECRET": ""}
    worker = [str(EXAMPLES / "smtp_worker.py"), "--smtp-host", "127.0.0.1", "--smtp-port", str(port), "--simulate"]
    first = run_example(*worker, cwd=work, env=env)
    assert f"database: {temp / 'dripcore-smtp-worker.db'}" in first
    assert "enrolled 2 contacts" in first
    assert "6 emails delivered" in first
    assert len(mailbox.messages) == 6
    second = run_example(*worker, "--quiet", cwd=work, env=env)
    assert "enrolled 0 contacts" in second
    assert "nothing to send" in second
    assert len(mailbox.messages) == 6
    assert list(work.iterdir()) == []


def test_smtp_worker_refuses_to_send_real_mail_without_a_secret(tmp_path: Path) -> None:
    """Without --simulate, unsigned links are not an option: the worker names the variable to set."""
    env = {**os.environ, "DRIP_UNSUBSCRIBE_SECRET": ""}
    program = [sys.executable, str(EXAMPLES / "smtp_worker.py"), "--db", str(tmp_path / "drip.db"), "--drain"]
    result = subprocess.run(program, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 2
    assert "DRIP_UNSUBSCRIBE_SECRET" in result.stderr
