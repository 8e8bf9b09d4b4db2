"""A provider outage loses nothing: the circuit breaker holds sending back instead of burning each
message's attempts, retries last days, and a message that does run out holds its enrollment
(never moved on silently) until an operator releases it."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from dripcore import (
    Contact,
    Delay,
    Drip,
    EnrollmentStatus,
    OutboxStatus,
    SenderUnavailable,
    Sequence,
    SequenceStatus,
    Step,
    TransientSendError,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.ports import Email, MailSender
from dripcore.testing import FakeClock, MemoryContacts, RecordingEvents, RecordingSender
from tests.builders import T0

PEOPLE = 40


class Provider(MailSender):
    """A provider that is down until ``back_at`` on the fake clock, then takes everything."""

    sends_real_mail = False  # a test double: the placeholder unsubscribe link is fine

    def __init__(self, clock: FakeClock, back_at: datetime, *, whole: bool = False) -> None:
        self.clock = clock
        self.back_at = back_at
        self.whole = whole
        self.inner = RecordingSender()
        self.calls_while_down = 0

    def send(self, email: Email) -> str | None:
        if self.clock.now() < self.back_at:
            self.calls_while_down += 1
            if self.whole:
                raise SenderUnavailable("401 Unauthorized: the API key was revoked")
            raise TransientSendError("connection refused")
        return self.inner.send(email)


def world(sender: MailSender, clock: FakeClock, **settings: object) -> Drip:
    contacts = MemoryContacts(Contact(id=f"c{i:02d}", email=f"c{i:02d}@example.com") for i in range(PEOPLE))
    drip = Drip(store=MemoryStore(), sender=sender, contacts=contacts, clock=clock, events=RecordingEvents(),
                **settings)  # type: ignore[arg-type]  # fmt: skip
    drip.save_sequence(
        Sequence(id="welcome", name="Welcome", status=SequenceStatus.ACTIVE, steps=(
            Step(position=1, subject="One", text="1"),
            Step(position=2, delay=Delay.hours(1), subject="Two", text="2"),
            Step(position=3, delay=Delay.days(1), subject="Three", text="3"),
        ))
    )  # fmt: skip
    for i in range(PEOPLE):
        drip.enroll("welcome", f"c{i:02d}")
    return drip


def run_for(drip: Drip, clock: FakeClock, duration: timedelta) -> None:
    """What Drip.run does, on the fake clock: tick, then sleep until the next wake (at most a minute)."""
    end = clock.now() + duration
    while clock.now() < end:
        report = drip.tick()
        if report.busy:
            continue
        wake = drip.next_wake_at()
        step = timedelta(minutes=1) if wake is None else min(max(wake - clock.now(), timedelta(seconds=1)),
                                                                 timedelta(minutes=1))  # fmt: skip
        clock.advance(step)


def test_a_three_hour_outage_loses_no_step_and_burns_no_attempts() -> None:
    """The sender refuses every connection for three simulated hours, then comes back: every contact
    receives every step, in order, once; and while it was down only a handful of sends were tried."""
    clock = FakeClock(T0)
    provider = Provider(clock, T0 + timedelta(hours=3))
    drip = world(provider, clock)
    run_for(drip, clock, timedelta(days=2))
    for i in range(PEOPLE):
        assert [e.subject for e in provider.inner.to(f"c{i:02d}@example.com")] == ["One", "Two", "Three"]
    assert provider.inner.duplicate_attempts == 0
    assert drip.stats("welcome").completed == PEOPLE
    # The breaker held sending back: a probe per cooldown, not forty messages retried every minute.
    assert provider.calls_while_down < 60, provider.calls_while_down


def test_a_revoked_key_pauses_sending_at_once_and_charges_no_message() -> None:
    """SenderUnavailable (credentials refused) opens the breaker on the first message; no message is
    charged an attempt or failed, and once the key is fixed everyone is delivered."""
    clock = FakeClock(T0)
    provider = Provider(clock, T0 + timedelta(hours=1), whole=True)
    drip = world(provider, clock)
    report = drip.tick()
    assert report.circuit_open
    assert provider.calls_while_down == 1
    assert report.failed == report.retried == 0
    assert drip.tick().circuit_open, "nothing is claimed or sent while the breaker is open"
    assert provider.calls_while_down == 1
    run_for(drip, clock, timedelta(hours=2))
    firsts = [m for m in drip.store.find_messages(status=OutboxStatus.DELIVERED, limit=2 * PEOPLE) if m.position == 1]
    assert len(firsts) == PEOPLE
    assert all(m.attempts == 1 for m in firsts), "the refused sends were not charged as attempts"


def test_a_message_out_of_retries_holds_its_enrollment_until_released() -> None:
    """A provider down for longer than retry_for: the message is FAILED (a step.failed event), its
    enrollment held, not moved on; release() lets it go on to its next step."""
    clock = FakeClock(T0)
    provider = Provider(clock, T0 + timedelta(days=30))
    drip = world(provider, clock, retry_for=timedelta(hours=6))
    # While the breaker is open each probe tries one message: after six hours each message is given
    # up on at its next try, one probe (at most ten minutes) apart.
    run_for(drip, clock, timedelta(hours=16))
    held = drip.enrollments("welcome", status=EnrollmentStatus.PAUSED, limit=PEOPLE)
    assert len(held) == PEOPLE, "everyone held, nobody moved on to step 2"
    assert all(e.last_step_sent == 1 for e in held)
    failed = drip.store.find_messages(status=OutboxStatus.FAILED, limit=PEOPLE)
    assert len(failed) == PEOPLE
    assert drip.stats("welcome").steps[0].failed == PEOPLE
    assert drip.events.names().count("sequence.step.failed") == PEOPLE  # type: ignore[union-attr]
    provider.back_at = clock.now()
    drip.release(held[0].id)
    run_for(drip, clock, timedelta(hours=2))
    assert [e.subject for e in provider.inner.to(f"{held[0].contact_id}@example.com")] == ["Two"]


def test_resend_puts_a_failed_step_back_and_the_enrollment_goes_on_after_it() -> None:
    """After a template fix, resend() renders the failed step afresh, sends it with the same key, and the
    enrollment goes on to its next step once that email is delivered; resending again is refused."""
    from dripcore import InvalidTransition
    from dripcore.render import LiquidRenderer, MemoryTemplateStore, Template

    clock = FakeClock(T0)
    sender = RecordingSender()
    templates = MemoryTemplateStore()
    drip = Drip(store=MemoryStore(), sender=sender, clock=clock,
                contacts=MemoryContacts([Contact(id="ana", email="ana@example.com")]),
                renderer=LiquidRenderer(templates=templates))  # fmt: skip
    drip.save_sequence(
        Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=(
            Step(position=1, subject="Welcome", template_id="welcome"),
            Step(position=2, delay=Delay.hours(1), subject="Two", text="2"),
        ))
    )  # fmt: skip
    enrollment, _ = drip.enroll("s", "ana")
    assert drip.tick().held == 1  # the template is missing: FAILED, held
    templates.put("welcome", Template(text="Hello!"))
    drip.resend(enrollment.id)
    drip.tick()
    assert [e.subject for e in sender.sent] == ["Welcome"]
    assert sender.sent[0].idempotency_key == f"{enrollment.id}:1"
    clock.advance(timedelta(hours=1))
    drip.tick()
    assert [e.subject for e in sender.sent] == ["Welcome", "Two"]
    assert drip.get_enrollment(enrollment.id).status is EnrollmentStatus.COMPLETED
    with pytest.raises(InvalidTransition):
        drip.resend(enrollment.id)  # delivered: nothing to resend
