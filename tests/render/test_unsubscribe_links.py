"""Signed unsubscribe links: made for one contact and enrollment, verified back, refused when touched."""

from __future__ import annotations

import re
from email import message_from_bytes
from email import policy as email_policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dripcore import (
    Contact,
    Drip,
    InvalidArgument,
    InvalidUnsubscribeToken,
    LiquidRenderer,
    Sequence,
    SequenceStatus,
    Step,
    UnsubscribeLinks,
    UnsubscribeRequest,
)
from dripcore.adapters.memory import MemoryStore
from dripcore.senders import SMTPSender
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender
from tests.builders import T0

SECRET = "correct horse battery staple"
ids = st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s)
TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_.-]+")


def links(**kw: object) -> UnsubscribeLinks:
    return UnsubscribeLinks("https://example.com/unsubscribe/{token}", secret=SECRET, **kw)  # type: ignore[arg-type]


@given(contact_id=ids, enrollment_id=ids)
def test_a_token_verifies_back_to_the_ids_it_was_made_for(contact_id: str, enrollment_id: str) -> None:
    token = links().token(contact_id, enrollment_id)
    assert TOKEN_ALPHABET.fullmatch(token), "URL-safe as it is"
    assert links().verify(token) == UnsubscribeRequest(contact_id=contact_id, enrollment_id=enrollment_id)


@given(contact_id=ids, enrollment_id=ids, data=st.data())
def test_a_token_with_any_character_changed_is_refused(
    contact_id: str, enrollment_id: str, data: st.DataObject
) -> None:
    token = links().token(contact_id, enrollment_id)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from("ABCxyz019-_.=é").filter(lambda c: c != token[index]))
    tampered = token[:index] + replacement + token[index + 1 :]
    # The tag covers the payload's text, not the bytes it decodes to: no change slips through.
    with pytest.raises(InvalidUnsubscribeToken):
        links().verify(tampered)


def test_someone_elses_link_cannot_be_made_by_editing_an_id() -> None:
    version, _, tag = links().token("ana", "enr-1").split(".")
    bo_payload = links().token("bo", "enr-1").split(".")[1]
    with pytest.raises(InvalidUnsubscribeToken, match="signature does not match"):
        links().verify(f"{version}.{bo_payload}.{tag}")


def test_a_token_signed_with_another_secret_is_refused() -> None:
    other = UnsubscribeLinks("https://example.com/unsubscribe/{token}", secret="another secret, also long")
    with pytest.raises(InvalidUnsubscribeToken, match="another secret"):
        links().verify(other.token("ana", "enr-1"))


def test_after_a_rotation_old_links_still_work_and_new_ones_are_signed_with_the_new_secret() -> None:
    old = links().token("ana", "enr-1")
    rotated = UnsubscribeLinks(
        "https://example.com/unsubscribe/{token}", secret=b"the new secret, 16+ bytes", old_secrets=[SECRET]
    )
    assert rotated.verify(old) == UnsubscribeRequest(contact_id="ana", enrollment_id="enr-1")
    new = rotated.token("ana", "enr-1")
    assert new != old
    with pytest.raises(InvalidUnsubscribeToken):
        links().verify(new)  # a server not yet given the new secret


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "non-empty"),
        (None, "non-empty"),
        (42, "non-empty"),
        ("hello", "not a dripcore unsubscribe token"),
        ("1.a.b.c", "not a dripcore unsubscribe token"),
        ("1.é.x", "not a dripcore unsubscribe token"),
        ("2.abc.def", "unknown version"),
        ("1.abc.def", "signature does not match"),
        ("1." + "a" * 5000 + ".x", "longer than"),
    ],
)
def test_a_malformed_token_is_refused_with_its_reason(token: object, reason: str) -> None:
    with pytest.raises(InvalidUnsubscribeToken, match=reason) as raised:
        links().verify(token)  # type: ignore[arg-type]
    assert raised.value.token == token


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "https://example.com/unsubscribe", "secret": SECRET}, "url"),
        ({"url": "https://example.com/{token}/{token}", "secret": SECRET}, "url"),
        ({"url": "javascript:alert(1)//{token}", "secret": SECRET}, "url"),
        ({"url": b"https://example.com/{token}", "secret": SECRET}, "url"),
        ({"url": "https://example.com/{token}", "secret": "short"}, "secret"),
        ({"url": "https://example.com/{token}", "secret": 12345678901234567}, "secret"),
        ({"url": "https://example.com/{token}", "secret": SECRET, "old_secrets": SECRET}, "old_secrets"),
        ({"url": "https://example.com/{token}", "secret": SECRET, "old_secrets": ["short"]}, "old_secrets[0]"),
        ({"url": "https://example.com/{token}", "secret": SECRET, "old_secrets": None}, "old_secrets"),
        ({"url": "https://example.com/{token}", "secret": "a lone surrogate \ud800 in 16+"}, "secret"),
        ({"url": "https://{token}.example.com/u", "secret": SECRET}, "url"),
        ({"url": "https://example.com/u#{token}", "secret": SECRET}, "url"),
        ({"url": "mailto:unsubscribe@example.com?subject={token}", "secret": SECRET}, "url"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(kwargs: dict[str, object], field: str) -> None:
    url = kwargs.pop("url")
    with pytest.raises(InvalidArgument) as raised:
        UnsubscribeLinks(url, **kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert SECRET not in str(raised.value), "a secret is never written into an error"


@pytest.mark.parametrize(("contact_id", "enrollment_id"), [("", "e1"), ("c1", ""), (None, "e1")])
def test_a_token_needs_both_ids(contact_id: object, enrollment_id: object) -> None:
    with pytest.raises(InvalidArgument):
        links().token(contact_id, enrollment_id)  # type: ignore[arg-type]


def test_long_non_ascii_ids_make_a_token_that_verifies() -> None:
    contact_id, enrollment_id = "ü" * 255, "中" * 255
    token = links().token(contact_id, enrollment_id)
    assert links().verify(token) == UnsubscribeRequest(contact_id=contact_id, enrollment_id=enrollment_id)


def test_ids_too_long_for_a_token_are_refused_when_it_is_made() -> None:
    with pytest.raises(InvalidArgument, match="token over 4096"):
        links().token("x" * 4000, "e1")


def test_a_refused_token_is_not_written_whole_into_the_error() -> None:
    good = links().token("ana", "enr-1")
    token = good[:-1] + ("B" if good[-1] != "B" else "C")
    with pytest.raises(InvalidUnsubscribeToken) as raised:
        links().verify(token)
    assert token not in str(raised.value)
    assert raised.value.token == token


def test_the_secret_is_not_in_the_repr() -> None:
    shown = repr(links(old_secrets=["an older secret of 16+"]))
    assert SECRET not in shown
    assert shown == "UnsubscribeLinks('https://example.com/unsubscribe/{token}', 2 secrets)"


def test_a_token_can_go_in_a_query_value() -> None:
    query = UnsubscribeLinks("https://example.com/u?list=news&t={token}", secret=SECRET)
    url = query.url("ana", "enr-1")
    assert url.startswith("https://example.com/u?list=news&t=1.")
    assert query.verify(url.rsplit("t=", 1)[1]).contact_id == "ana"


def test_a_delivered_email_carries_its_contacts_signed_one_click_link() -> None:
    """Through a real Drip: each email's List-Unsubscribe verifies to its own contact and enrollment."""
    people = [Contact(id=n, email=f"{n}@example.com", first_name=n.title()) for n in ("ana", "bo")]
    sender = RecordingSender()
    drip = Drip(
        store=MemoryStore(), sender=sender, contacts=MemoryContacts(people), clock=FakeClock(T0),
        renderer=LiquidRenderer(unsubscribe_url=links()),
    )  # fmt: skip
    drip.save_sequence(
        Sequence(id="hello", name="Hello", status=SequenceStatus.ACTIVE,
                 steps=(Step(position=1, subject="Hi", text="Bye: {{ unsubscribe_url }}"),))
    )  # fmt: skip
    enrollments = {c.id: drip.enroll("hello", c.id)[0].id for c in people}
    drip.tick()
    for email in sender.sent:
        headers = dict(email.headers)
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = headers["List-Unsubscribe"].strip("<>")
        assert url in email.text
        who = links().verify(url.rsplit("/", 1)[1])
        assert who == UnsubscribeRequest(contact_id=email.contact_id, enrollment_id=enrollments[email.contact_id])


def test_the_link_survives_smtp_message_writing() -> None:
    """The header as written on the wire (possibly folded) gives back the same token."""
    renderer = LiquidRenderer(unsubscribe_url=links())
    sequence = Sequence(id="hello", name="Hello", steps=(Step(position=1, subject="Hi", text="x"),))
    contact = Contact(id="a-very-long-contact-id-" + "x" * 80, email="ana@example.com")
    from dripcore import Email, Enrollment

    enrollment = Enrollment(
        id="enr-" + "y" * 80, sequence_id="hello", contact_id=contact.id, status="active",
        enrolled_at=T0, next_step_due_at=T0,
    )  # fmt: skip
    rendered = renderer.render(sequence.steps[0], sequence=sequence, contact=contact, enrollment=enrollment)
    email = Email(
        idempotency_key=f"{enrollment.id}:1", enrollment_id=enrollment.id, sequence_id="hello", contact_id=contact.id,
        position=1, to=contact.email, subject=rendered.subject, text=rendered.text, html=rendered.html,
        headers=rendered.headers,
    )  # fmt: skip
    with SMTPSender(host="localhost", default_sender="news@example.com") as smtp:
        written = smtp.message_bytes(email)
    header = message_from_bytes(written, policy=email_policy.default)["List-Unsubscribe"]
    token = str(header).strip().strip("<>").rsplit("/", 1)[1]
    assert links().verify(token) == UnsubscribeRequest(contact_id=contact.id, enrollment_id=enrollment.id)
