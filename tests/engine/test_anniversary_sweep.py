"""The worker sweeps anniversaries itself: once a day at its time, catching up, once per contact per year."""

from __future__ import annotations

import logging
import sys
import threading
import time as real_time
from collections.abc import Iterable, Iterator
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import attrs
import pytest

from dripcore import Contact, Drip, EnrollmentStatus, InvalidArgument, ReentryPolicy, Sequence, SequenceStatus
from dripcore.__main__ import main
from dripcore.adapters.memory import MemoryStore
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Store
from dripcore.prefabs import birthday_email
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender

from ..builders import welcome

UTC = timezone.utc
EVENING_BEFORE = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)  # Cy's birthday is March 3
CY = Contact(id="cy", email="cy@example.com", first_name="Cy", birthday=date(1990, 3, 3))
ANA = Contact(id="ana", email="ana@example.com", first_name="Ana")


def contacts() -> MemoryContacts:
    return MemoryContacts([CY, ANA])


def birthdays(reentry: ReentryPolicy = ReentryPolicy.NEVER) -> Sequence:
    """The Birthday email prefab, active, with ``reentry``."""
    return attrs.evolve(birthday_email(status=SequenceStatus.ACTIVE), reentry=reentry)


def worker(store: Store, clock: FakeClock, sender: RecordingSender | None = None, **kw: object) -> Drip:
    return Drip(store=store, sender=sender or RecordingSender(), clock=clock, contacts=contacts(), **kw)  # type: ignore[arg-type]


def run_until(drip: Drip, clock: FakeClock, until: datetime, idle: float = 3600.0) -> list[datetime]:
    """Run ``drip`` on its fake clock until ``until``; returns the times its ticks sent something."""
    sent_at: list[datetime] = []

    def on_tick(report: object) -> None:
        if getattr(report, "sent", 0):
            sent_at.append(clock.now())
        if clock.now() >= until:
            drip.stop()

    drip.run(idle=idle, on_tick=on_tick)
    return sent_at


def anniversary_enrollments(store: Store, contact_id: str = "cy") -> list[object]:
    return store.find_enrollments(sequence_id="birthday", contact_id=contact_id, limit=100)


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Path]:
    return tmp_path / "drip.db"


class TestTheWorkerSweeps:
    def test_the_birthday_email_goes_at_utc_midnight_without_the_host_sweeping(self) -> None:
        """A worker running across midnight enrolls and emails the contact whose birthday begins."""
        clock, store, sender = FakeClock(EVENING_BEFORE), MemoryStore(), RecordingSender()
        drip = worker(store, clock, sender)
        drip.save_sequence(birthdays())
        sent_at = run_until(drip, clock, datetime(2026, 3, 3, 6, 0, tzinfo=UTC))
        assert [e.to for e in sender.sent] == ["cy@example.com"]
        assert sent_at == [datetime(2026, 3, 3, 0, 0, tzinfo=UTC)]  # woken for the sweep, not by idle
        (enrollment,) = anniversary_enrollments(store)
        assert enrollment.key == "2026"  # type: ignore[attr-defined]

    def test_the_sweep_time_is_configurable(self) -> None:
        """With anniversary_sweep_at=06:00 the birthday is swept at 06:00 UTC, not before."""
        clock, store, sender = FakeClock(EVENING_BEFORE), MemoryStore(), RecordingSender()
        drip = worker(store, clock, sender, anniversary_sweep_at=time(6, 0))
        drip.save_sequence(birthdays())
        sent_at = run_until(drip, clock, datetime(2026, 3, 3, 12, 0, tzinfo=UTC))
        assert sent_at == [datetime(2026, 3, 3, 6, 0, tzinfo=UTC)]

    def test_none_turns_the_sweep_off(self) -> None:
        """anniversary_sweep_at=None: the worker sweeps nothing and does not wake for it."""
        clock, store, sender = FakeClock(EVENING_BEFORE), MemoryStore(), RecordingSender()
        drip = worker(store, clock, sender, anniversary_sweep_at=None)
        drip.save_sequence(birthdays())
        assert drip.next_wake_at() is None
        run_until(drip, clock, datetime(2026, 3, 3, 12, 0, tzinfo=UTC))
        assert sender.sent == []
        assert anniversary_enrollments(store) == []

    def test_next_wake_at_names_the_next_sweep_only_while_an_anniversary_sequence_is_active(self) -> None:
        """Without an active anniversary sequence there is nothing to wake for (a drain loop ends)."""
        clock, store = FakeClock(EVENING_BEFORE), MemoryStore()
        drip = worker(store, clock)
        assert drip.next_wake_at() is None
        drip.save_sequence(birthdays())
        assert drip.next_wake_at() == datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
        drip.pause("birthday")
        assert drip.next_wake_at() is None

    def test_a_failing_sweep_is_logged_and_retried_while_ticks_go_on(self, caplog: pytest.LogCaptureFixture) -> None:
        """The contact directory fails the first sweeps; welcome emails still go, the birthday one follows."""

        class FlakyContacts(MemoryContacts):
            failures = 3

            def anniversaries(self, field: str, month: int, day: int) -> Iterable[Contact]:
                if FlakyContacts.failures:
                    FlakyContacts.failures -= 1
                    raise ConnectionError("directory down")
                return iter(list(super().anniversaries(field, month, day)))

        clock, store, sender = FakeClock(EVENING_BEFORE), MemoryStore(), RecordingSender()
        drip = Drip(store=store, sender=sender, clock=clock, contacts=FlakyContacts([CY, ANA]))
        drip.save_sequence(birthdays())
        drip.save_sequence(welcome(id="welcome"))
        drip.enroll("welcome", "ana")
        with caplog.at_level(logging.WARNING, logger="dripcore"):
            run_until(drip, clock, datetime(2026, 3, 3, 6, 0, tzinfo=UTC))
        assert "anniversary sweep of" in caplog.text
        assert "directory down" in caplog.text
        assert sender.to("ana@example.com")
        assert len(sender.to("cy@example.com")) == 1
        assert len(anniversary_enrollments(store)) == 1


class TestOncePerContactPerYear:
    def test_sweeping_a_day_again_does_not_reenroll_a_finished_after_exit_enrollment(self) -> None:
        """Under AFTER_EXIT the year's enrollment completes; sweeping the day again enrolls nobody."""
        clock, store, sender = FakeClock(datetime(2026, 3, 3, 0, 0, tzinfo=UTC)), MemoryStore(), RecordingSender()
        drip = worker(store, clock, sender)
        drip.save_sequence(birthdays(ReentryPolicy.AFTER_EXIT))
        assert len(drip.sweep_anniversaries(date(2026, 3, 3))) == 1
        drip.tick()
        assert [e.status for e in anniversary_enrollments(store)] == [EnrollmentStatus.COMPLETED]  # type: ignore[attr-defined]
        assert drip.sweep_anniversaries(date(2026, 3, 3)) == []
        assert len(anniversary_enrollments(store)) == 1
        assert len(sender.sent) == 1

    def test_next_year_enrolls_again(self) -> None:
        """The key is the year: the contact's next birthday enrolls them once more."""
        clock, store = FakeClock(datetime(2026, 3, 3, 0, 0, tzinfo=UTC)), MemoryStore()
        drip = worker(store, clock)
        drip.save_sequence(birthdays())
        drip.sweep_anniversaries(date(2026, 3, 3))
        drip.tick()
        assert len(drip.sweep_anniversaries(date(2027, 3, 3))) == 1
        assert sorted(e.key for e in anniversary_enrollments(store)) == ["2026", "2027"]  # type: ignore[attr-defined]

    @pytest.mark.parametrize("reentry", list(ReentryPolicy))
    def test_a_restart_on_the_same_sqlite_file_sends_no_second_birthday_email(
        self, sqlite_file: Path, reentry: ReentryPolicy
    ) -> None:
        """A worker sends the email after midnight and stops; a new Drip on the file catches up, sends none."""
        clock, sender = FakeClock(EVENING_BEFORE), RecordingSender()
        with SQLiteStore(str(sqlite_file)) as store:
            drip = worker(store, clock, sender)
            drip.save_sequence(birthdays(reentry))
            run_until(drip, clock, datetime(2026, 3, 3, 2, 0, tzinfo=UTC))
        assert len(sender.sent) == 1
        clock.advance(timedelta(hours=5))
        with SQLiteStore(str(sqlite_file)) as store:
            restarted = worker(store, clock, sender)
            run_until(restarted, clock, datetime(2026, 3, 4, 12, 0, tzinfo=UTC))
            assert len(anniversary_enrollments(store)) == 1
        assert len(sender.sent) == 1

    def test_a_day_missed_while_no_worker_ran_is_caught_up_at_start(self, sqlite_file: Path) -> None:
        """No worker on March 3; one starting on March 4 sweeps March 3 too, and the email goes late."""
        clock, sender = FakeClock(datetime(2026, 3, 4, 8, 0, tzinfo=UTC)), RecordingSender()
        with SQLiteStore(str(sqlite_file)) as store:
            drip = worker(store, clock, sender)
            drip.save_sequence(birthdays())
            sent_at = run_until(drip, clock, datetime(2026, 3, 4, 12, 0, tzinfo=UTC))
            (enrollment,) = anniversary_enrollments(store)
        assert sent_at == [datetime(2026, 3, 4, 8, 0, tzinfo=UTC)]
        assert enrollment.key == "2026"  # type: ignore[attr-defined]

    def test_catch_up_is_bounded(self) -> None:
        """With anniversary_catch_up_days=0 a worker starting the next day does not send yesterday's email."""
        clock, store, sender = FakeClock(datetime(2026, 3, 4, 8, 0, tzinfo=UTC)), MemoryStore(), RecordingSender()
        drip = worker(store, clock, sender, anniversary_catch_up_days=0)
        drip.save_sequence(birthdays())
        run_until(drip, clock, datetime(2026, 3, 4, 12, 0, tzinfo=UTC))
        assert sender.sent == []

    def test_two_workers_on_one_sqlite_file_enroll_each_contact_once(self, sqlite_file: Path) -> None:
        """Two workers (each its own Drip and store object) sweep the same days at once: one enrollment each."""
        people = [Contact(id=f"c{i:03d}", email=f"c{i:03d}@example.com", birthday=date(1980 + i % 30, 3, 3))
                  for i in range(60)]  # fmt: skip
        with SQLiteStore(str(sqlite_file)) as setup:
            Drip(store=setup, sender=RecordingSender(), contacts=MemoryContacts(people)).save_sequence(
                birthdays(ReentryPolicy.AFTER_EXIT)
            )
        # One sender for both: each worker's fake clock runs on its own, so one may see the other's
        # send lease expire and send again; the sender drops a repeat by its idempotency key (what
        # this test is about is enrollments: a second enrollment would be a second key, a second email).
        sender = RecordingSender()
        stores = [SQLiteStore(str(sqlite_file)), SQLiteStore(str(sqlite_file))]
        start = threading.Barrier(len(stores))
        failures: list[BaseException] = []

        def work(store: SQLiteStore) -> None:
            clock = FakeClock(EVENING_BEFORE)
            drip = Drip(store=store, sender=sender, clock=clock, contacts=MemoryContacts(people))
            try:
                start.wait()
                run_until(drip, clock, datetime(2026, 3, 3, 3, 0, tzinfo=UTC))
                drip.sweep_anniversaries(date(2026, 3, 3))  # and once more, by hand, after the emails went
            except BaseException as exc:  # reported below, in the test's thread
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for store in stores:
            store.close()
        assert not failures
        with SQLiteStore(str(sqlite_file)) as store:
            for person in people:
                assert len(anniversary_enrollments(store, person.id)) == 1, person.id
        assert sorted(e.to for e in sender.sent) == sorted(p.email for p in people)

    def test_two_workers_on_one_memory_store_enroll_each_contact_once(self) -> None:
        """Two Drips sharing a MemoryStore, ticking in turn across midnight: one enrollment per contact."""
        store, sender = MemoryStore(), RecordingSender()
        clocks = [FakeClock(EVENING_BEFORE), FakeClock(EVENING_BEFORE)]
        drips = [worker(store, clock, sender) for clock in clocks]
        drips[0].save_sequence(birthdays(ReentryPolicy.AFTER_EXIT))
        for _ in range(12):
            for drip, clock in zip(drips, clocks, strict=True):
                drip.run(max_ticks=1)
                clock.advance(timedelta(minutes=30))
        assert len(anniversary_enrollments(store)) == 1
        assert len(sender.sent) == 1


class TestBadSettings:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("anniversary_sweep_at", "00:00"),
            ("anniversary_sweep_at", datetime(2026, 1, 1)),
            ("anniversary_sweep_at", time(0, tzinfo=timezone(timedelta(hours=2)))),
            ("anniversary_catch_up_days", -1),
            ("anniversary_catch_up_days", 32),
            ("anniversary_catch_up_days", True),
            ("anniversary_catch_up_days", 1.5),
        ],
    )
    def test_a_bad_sweep_setting_is_refused_naming_it(self, field: str, value: object) -> None:
        with pytest.raises(InvalidArgument) as raised:
            worker(MemoryStore(), FakeClock(), **{field: value})
        assert raised.value.field == field
        assert raised.value.value == value
        drip = worker(MemoryStore(), FakeClock())
        with pytest.raises(InvalidArgument) as raised:
            setattr(drip, field, value)
        assert raised.value.field == field

    def test_a_utc_time_is_kept_as_a_plain_time_of_day(self) -> None:
        drip = worker(MemoryStore(), FakeClock(), anniversary_sweep_at=time(1, 30, tzinfo=UTC))
        assert drip.anniversary_sweep_at == time(1, 30)
        assert drip.anniversary_catch_up_days == 1


HOST_APP = """
from datetime import date, datetime, timezone

from dripcore import Contact, Drip, SequenceStatus
from dripcore.adapters.memory import MemoryStore
from dripcore.prefabs import birthday_email
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender

sender = RecordingSender()
drip = Drip(
    store=MemoryStore(), sender=sender, clock=FakeClock(datetime(2026, 3, 2, 21, 0, tzinfo=timezone.utc)),
    contacts=MemoryContacts([Contact(id="cy", email="cy@example.com", birthday=date(1990, 3, 3))]),
)
drip.save_sequence(birthday_email(status=SequenceStatus.ACTIVE))
"""


@pytest.fixture
def host_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    (tmp_path / "birthdayapp.py").write_text(HOST_APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("birthdayapp", None)
    import birthdayapp  # type: ignore[import-not-found]

    yield birthdayapp
    sys.modules.pop("birthdayapp", None)


def stop_when(app: object, done: object, limit: float = 20.0) -> threading.Thread:
    """A thread that stops the app's worker once ``done()`` holds (or after ``limit`` real seconds)."""

    def watch() -> None:
        deadline = real_time.monotonic() + limit
        while not done() and real_time.monotonic() < deadline:  # type: ignore[operator]
            real_time.sleep(0.01)
        app.drip.stop()  # type: ignore[attr-defined]

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


class TestTheCommandLineWorker:
    def test_the_cli_worker_sweeps(self, host_app: object) -> None:
        """``python -m dripcore run`` sends the birthday email at midnight on its own."""
        watcher = stop_when(host_app, lambda: host_app.sender.sent)  # type: ignore[attr-defined]
        assert main(["run", "birthdayapp:drip", "--idle", "3600"]) == 0
        watcher.join()
        assert [e.to for e in host_app.sender.sent] == ["cy@example.com"]  # type: ignore[attr-defined]

    def test_the_cli_flag_sets_or_turns_off_the_sweep(self, host_app: object) -> None:
        drip = host_app.drip  # type: ignore[attr-defined]
        after_midnight = lambda: drip.clock.now() > datetime(2026, 3, 3, 12, 0, tzinfo=UTC)  # noqa: E731
        watcher = stop_when(host_app, after_midnight)
        assert main(["run", "birthdayapp:drip", "--idle", "3600", "--anniversary-sweep-at", "off"]) == 0
        watcher.join()
        assert drip.anniversary_sweep_at is None
        assert host_app.sender.sent == []
        drip.clock.set(EVENING_BEFORE)
        watcher = stop_when(host_app, lambda: host_app.sender.sent)  # type: ignore[attr-defined]
        assert main(["run", "birthdayapp:drip", "--idle", "3600", "--anniversary-sweep-at", "07:15"]) == 0
        watcher.join()
        assert drip.anniversary_sweep_at == time(7, 15)

    def test_a_bad_flag_value_is_a_usage_error(self, host_app: object) -> None:
        with pytest.raises(SystemExit) as exited:
            main(["run", "birthdayapp:drip", "--anniversary-sweep-at", "25:00"])
        assert exited.value.code == 2
