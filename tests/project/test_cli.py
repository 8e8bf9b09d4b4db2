"""The command line: the demo (the README's main job), the worker entry point, status and preview."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dripcore.__main__ import load_drip, main
from dripcore.errors import DripcoreError

ROOT = Path(__file__).resolve().parents[2]

HOST_APP = """
from dripcore import Contact, Drip, Sequence, SequenceStatus, Step
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.testing import MemoryContacts, RecordingSender

sender = RecordingSender()


def make():
    store = SQLiteStore({db!r})
    drip = Drip(store=store, sender=sender, contacts=MemoryContacts([Contact(id="ana", email="ana@example.com")]))
    if store.get_sequence("hello") is None:
        drip.save_sequence(
            Sequence(id="hello", name="Hello", status=SequenceStatus.ACTIVE,
                     steps=(Step(position=1, subject="Hi", text="Welcome"),))
        )
        drip.enroll("hello", "ana")
    return drip


not_a_drip = 42
"""


@pytest.fixture
def host_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "app.db"
    (tmp_path / "hostapp.py").write_text(HOST_APP.format(db=str(db)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("hostapp", None)
    return db


def test_demo_writes_a_sqlite_database_that_status_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "demo.db"
    assert main(["demo", "--db", str(db)]) == 0
    assert "store: SQLite" in capsys.readouterr().out
    assert main(["status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "welcome" in out
    assert "3 sequences" in out


def test_demo_refuses_to_reuse_a_database(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    assert main(["demo", "--db", str(db)]) == 0
    assert main(["demo", "--db", str(db)]) == 2


def test_run_once_sends_what_is_due(host_app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "hostapp:make", "--once"]) == 0
    import hostapp

    assert [e.subject for e in hostapp.sender.sent] == ["Hi"]


def test_load_drip_explains_bad_targets(host_app: Path) -> None:
    with pytest.raises(DripcoreError, match="expected MODULE:ATTR"):
        load_drip("hostapp")
    with pytest.raises(DripcoreError, match="no attribute 'nope'"):
        load_drip("hostapp:nope")
    with pytest.raises(DripcoreError, match="not a dripcore Drip"):
        load_drip("hostapp:not_a_drip")
    assert main(["run", "hostapp:nope"]) == 1


def test_sigterm_stops_the_worker_cleanly(host_app: Path) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "dripcore", "run", "hostapp:make", "--idle", "0.2"],
        cwd=host_app.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until the worker has sent the step
        status = subprocess.run(
            [sys.executable, "-m", "dripcore", "status", "--db", str(host_app)],
            capture_output=True, text=True, cwd=host_app.parent,
        )  # fmt: skip
        row = status.stdout.splitlines()[-1].split() if status.returncode == 0 else []
        if row[:1] == ["hello"] and row[4] == "1":  # completed
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=20)
    assert worker.returncode == 0, err
    assert "stopping after the current batch" in err
    assert "stopped" in err


def test_status_of_a_missing_file(tmp_path: Path) -> None:
    assert main(["status", "--db", str(tmp_path / "nope.db")]) == 2


def test_run_help_names_the_target_form() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dripcore", "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "MODULE:ATTR" in out
    assert "--once" in out


def test_preview_shows_each_step_and_how_long_after_enrollment(capsys: pytest.CaptureFixture[str]) -> None:
    """preview prints a prefab's timeline with its delays in words, the same on every run."""
    argv = ["preview", "welcome", "--timezone", "America/New_York", "--start", "2026-03-02T09:00"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "welcome (Welcome series) for a contact in America/New_York, enrolled Mon 2026-03-02 09:00 EST",
        "step  delay                  after enrollment         local time               subject",
        "   1  immediately            immediately              Mon 2026-03-02 09:00 EST Welcome aboard, {{FirstName}}",
        "   2  24 hours               1 day                    Tue 2026-03-03 09:00 EST Getting started: three tips",
        "   3  6 days                 1 week                   Mon 2026-03-09 09:00 EDT "
        "How is it going, {{FirstName}}?",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out == out


def test_preview_reads_a_sequence_from_a_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """preview --db plans a stored sequence: a monthly step lands on the last day of February."""
    from dripcore import Delay, Sequence, Step
    from dripcore.adapters.sqlite import SQLiteStore

    db = tmp_path / "app.db"
    with SQLiteStore(str(db)) as store:
        store.save_sequence(
            Sequence(
                id="monthly",
                name="Monthly",
                steps=(
                    Step(position=1, subject="Hi", text="."),
                    Step(position=2, delay=Delay.parse("P1M"), subject="A month in", text="."),
                ),
            )
        )
    assert main(["preview", "monthly", "--db", str(db), "--start", "2026-01-31T09:00Z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "monthly (Monthly) for a contact in UTC, enrolled Sat 2026-01-31 09:00 UTC"
    assert " ".join(lines[3].split()) == "2 1 month 1 month Sat 2026-02-28 09:00 UTC A month in"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["preview", "nope"], "no prefab called 'nope'"),
        (["preview", "welcome", "--start", "next week"], "not an ISO 8601 date and time"),
        (["preview", "welcome", "--db", "missing.db"], "does not exist"),
    ],
)
def test_preview_explains_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_preview_refuses_an_unknown_time_zone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "welcome", "--timezone", "Mars/Olympus"]) == 1
    assert "not a known IANA time zone" in capsys.readouterr().err


# --------------------------------------------------------------------------- the demo, as the README runs it


def test_demo_prints_a_two_week_timeline() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dripcore", "demo"], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert "Welcome series step 1 sent: 'Welcome aboard, Ana'" in out
    assert "Mon 03-09 09:00  ana    completed Welcome series" in out  # 0 h, +24 h, +6 days
    assert "left Welcome series (unsubscribed)" in out
    assert "Welcome series step 1 FAILED (bounced)" in out
    assert "left Welcome series (bounced)" in out
    assert "Happy birthday Eve!" in out
    assert "8 emails delivered, 0 duplicates." in out
    # the DST preview: 24 hours is elapsed time, a calendar day keeps the local time
    assert "step 2 (   24 hours)  Sun 03-08 10:00 EDT local" in out
    assert "step 3 (      1 day)  Mon 03-09 10:00 EDT local" in out
    # the paused sequence's overdue step goes once, at resume
    resumed = out.index("resumed it")
    assert out.index("Post-purchase thank-you step 2 sent") > resumed


def test_demo_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from dripcore.adapters.memory import MemoryStore
    from dripcore.demo import run_demo

    drip = run_demo(MemoryStore())
    assert drip.stats("welcome").exited_by_reason == {"bounced": 1, "unsubscribed": 1}
    assert "completion rate" in capsys.readouterr().out


CAMPAIGNS = """
from dripcore import Sequence, SequenceStatus, Step

SEQUENCES = [
    Sequence(id="hello", name="Hello", status=SequenceStatus.ACTIVE,
             steps=(Step(position=1, subject={subject!r}, text="Welcome"),)),
    Sequence(id="later", name="Later", steps=(Step(position=1, subject="Soon", text="..."),)),
]
one = SEQUENCES[0]
words = "hello"
"""


def write_campaigns(host_app: Path, subject: str) -> None:
    """The host's sequences kept as code, in campaigns.py beside hostapp.py (imported afresh)."""
    (host_app.parent / "campaigns.py").write_text(CAMPAIGNS.format(subject=subject))
    sys.modules.pop("campaigns", None)


def test_sync_saves_the_sequences_kept_as_code_and_a_second_run_changes_nothing(
    host_app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_campaigns(host_app, "Hi there")
    assert main(["sync", "hostapp:make", "campaigns:SEQUENCES"]) == 0
    assert capsys.readouterr().out == "sequences: 1 created, 1 updated\n"
    assert main(["sync", "hostapp:make", "campaigns:SEQUENCES"]) == 0
    assert capsys.readouterr().out == "sequences: 2 unchanged\n"
    assert main(["run", "hostapp:make", "--once"]) == 0
    import hostapp

    assert [e.subject for e in hostapp.sender.sent] == ["Hi there"], "the worker sends the synced step"


def test_run_syncs_before_the_worker_starts(host_app: Path) -> None:
    write_campaigns(host_app, "Synced first")
    assert main(["run", "hostapp:make", "--once", "--sync", "campaigns:SEQUENCES"]) == 0
    import hostapp

    assert [e.subject for e in hostapp.sender.sent] == ["Synced first"]


@pytest.mark.parametrize(
    ("target", "message"),
    [("campaigns:one", "not a list"), ("campaigns:words", "not a list"), ("campaigns", "expected MODULE:ATTR")],
)
def test_sync_explains_bad_definitions(
    host_app: Path, target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_campaigns(host_app, "Hi")
    assert main(["sync", "hostapp:make", target]) == 1
    assert message in capsys.readouterr().err


def test_sync_exits_1_when_a_definition_fails_and_names_it(host_app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A draft whose trigger list can't be read stays a draft: reported, the others saved, exit status 1."""
    (host_app.parent / "broken_campaigns.py").write_text(
        "from dripcore import Sequence, SequenceStatus, Step, Trigger, TriggerType\n"
        "SEQUENCES = [Sequence(id='members', name='Members', status=SequenceStatus.ACTIVE, enroll_existing=True,\n"
        "    trigger=Trigger(type=TriggerType.LIST_ADDED, value='vip'),\n"
        "    steps=(Step(position=1, subject='Hi', text='x'),))]\n"
    )
    (host_app.parent / "hostapp_vip.py").write_text(
        HOST_APP.format(db=str(host_app)) + "\n\nclass Unreadable(MemoryContacts):\n"
        "    def members(self, trigger):\n        return ['ghost']\n"
        "    def get_many(self, ids):\n        raise RuntimeError('directory down for ghost')\n"
        "    def get(self, contact_id):\n        raise RuntimeError('directory down for ghost')\n\n\n"
        "def make_vip():\n    drip = make()\n    drip.contacts = Unreadable()\n    return drip\n"
    )
    assert main(["sync", "hostapp_vip:make_vip", "broken_campaigns:SEQUENCES"]) == 1
    assert capsys.readouterr().out.startswith("sequences: 1 failed; failed: members (")
