"""A Drip that sends real mail refuses to start with the placeholder unsubscribe link."""

from __future__ import annotations

import pytest

from dripcore import Contact, Drip, Email, Enrollment, InvalidArgument, LiquidRenderer, Sequence, SequenceStatus, Step
from dripcore.adapters.memory import MemoryStore
from dripcore.ports import MailSender, Rendered, Renderer
from dripcore.senders import SMTPSender
from dripcore.testing import FakeClock, FlakySender, MemoryContacts, NullSender, RecordingSender
from tests.builders import T0


class ProviderApi(MailSender):
    """A host's own sender for a mail provider's API: real mail, by default."""

    def send(self, email: Email) -> str | None:
        return "provider-id"


def drip(sender: MailSender, **kw: object) -> Drip:
    contacts = MemoryContacts([Contact(id="ana", email="ana@example.com")])
    return Drip(store=MemoryStore(), sender=sender, contacts=contacts, clock=FakeClock(T0), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sender",
    [SMTPSender(host="smtp.example.com", default_sender="news@example.com"), ProviderApi(), FlakySender(ProviderApi())],
    ids=["smtp", "a-providers-api", "a-fake-over-a-real-sender"],
)
def test_a_real_sender_with_the_placeholder_link_refuses_to_start(sender: MailSender) -> None:
    for renderer in (None, LiquidRenderer()):
        with pytest.raises(InvalidArgument) as raised:
            drip(sender, renderer=renderer)
        assert raised.value.field == "unsubscribe_url"
        assert "LiquidRenderer(unsubscribe_url=" in str(raised.value)
        assert "allow_placeholder_unsubscribe=True" in str(raised.value)


def test_a_real_sender_with_a_real_link_starts_and_sends_it() -> None:
    sent: list[Email] = []

    class Provider(ProviderApi):
        def send(self, email: Email) -> str | None:
            sent.append(email)
            return None

    engine = drip(Provider(), renderer=LiquidRenderer(unsubscribe_url="https://example.com/u/{enrollment_id}"))
    engine.save_sequence(
        Sequence(id="s", name="S", status=SequenceStatus.ACTIVE, steps=(Step(position=1, subject="Hi", text="x"),))
    )
    engine.enroll("s", "ana")
    engine.tick()
    assert [dict(e.headers)["List-Unsubscribe"] for e in sent] == [f"<https://example.com/u/{sent[0].enrollment_id}>"]


def test_a_staging_server_may_opt_out_explicitly() -> None:
    assert drip(ProviderApi(), allow_placeholder_unsubscribe=True).renderer is not None


@pytest.mark.parametrize("sender", [RecordingSender(), NullSender(), FlakySender()], ids=lambda s: type(s).__name__)
def test_the_test_fakes_need_no_link(sender: MailSender) -> None:
    assert not sender.sends_real_mail
    drip(sender)


def test_a_hosts_own_renderer_is_its_own_business() -> None:
    class Plain(Renderer):
        def render(self, step: Step, *, sequence: Sequence, contact: Contact, enrollment: Enrollment) -> Rendered:
            return Rendered(subject=step.subject, html=None, text=step.text or "", headers={})

    drip(ProviderApi(), renderer=Plain())


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_opt_out_is_a_bool(value: object) -> None:
    with pytest.raises(InvalidArgument) as raised:
        drip(RecordingSender(), allow_placeholder_unsubscribe=value)
    assert raised.value.field == "allow_placeholder_unsubscribe"
