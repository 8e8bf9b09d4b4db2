"""The FastAPI example follows the usual REST conventions (201/200/204/404/409/422)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from dripcore import EnrollmentStatus, ExitReason, InvalidArgument, UnsubscribeLinks
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.testing import FakeClock, MemoryContacts, RecordingSender

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from fastapi_app.app import create_app

with warnings.catch_warnings():  # newer Starlette prefers httpx2 for its test client, and says so
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
LINKS = UnsubscribeLinks("https://testserver/unsubscribe/{token}", secret="the test site's unsubscribe secret")


class Api:
    """A test client on a fresh app, with the fakes it runs on."""

    def __init__(self, client: TestClient, clock: FakeClock, sender: RecordingSender, app: Any) -> None:
        self.client, self.clock, self.sender, self.app = client, clock, sender, app

    def tick(self) -> None:
        self.app.state.services.drip.tick()

    def sequence(self, id: str = "onboarding", *, steps: int = 2, active: bool = True) -> None:
        assert self.client.post("/sequences", json={"id": id, "name": "Onboarding"}).status_code == 201
        for position in range(1, steps + 1):
            body = {"position": position, "delay": f"{position - 1} days", "subject": f"Step {position}", "text": "."}
            assert self.client.post(f"/sequences/{id}/steps", json=body).status_code == 201
        if active:
            assert self.client.patch(f"/sequences/{id}", json={"status": "active"}).status_code == 200


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    clock, sender = FakeClock(T0), RecordingSender()
    app = create_app(
        store=SQLiteStore(tmp_path / "drip.db"), sender=sender, clock=clock, contacts=MemoryContacts(),
        unsubscribe_links=LINKS,
    )  # fmt: skip
    with TestClient(app) as client:
        yield Api(client, clock, sender, app)


# --------------------------------------------------------------------------- sequences and steps


def test_creating_a_sequence_answers_201_with_a_draft(api: Api) -> None:
    response = api.client.post("/sequences", json={"name": "Spring Launch!"})
    assert response.status_code == 201
    assert response.json()["id"] == "spring-launch"
    assert response.json()["status"] == "draft"
    assert api.client.get("/sequences/spring-launch").json()["name"] == "Spring Launch!"


def test_creating_an_existing_sequence_is_a_conflict(api: Api) -> None:
    api.sequence(active=False)
    assert api.client.post("/sequences", json={"id": "onboarding", "name": "Again"}).status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x", "unknown": 1},
        {"name": "x", "id": "Not An Id"},
        {"name": "x", "trigger": {"type": "no_such_trigger"}},
        {"name": "x", "timezone": "Mars/Olympus_Mons"},
    ],
)
def test_an_invalid_sequence_body_is_422(api: Api, body: dict[str, Any]) -> None:
    assert api.client.post("/sequences", json=body).status_code == 422


def test_unknown_ids_are_404(api: Api) -> None:
    client = api.client
    assert client.get("/sequences/nope").status_code == 404
    assert client.patch("/sequences/nope", json={"name": "x"}).status_code == 404
    assert client.delete("/sequences/nope").status_code == 404
    assert client.post("/sequences/nope/steps", json={"position": 1, "text": "x"}).status_code == 404
    assert client.post("/sequences/nope/subscribers", json={"email": "a@example.com"}).status_code == 404
    api.sequence()
    assert client.get("/sequences/onboarding/subscribers/who@example.com").status_code == 404
    assert client.post("/sequences/onboarding/subscribers/who@example.com/pause").status_code == 404
    assert client.delete("/sequences/onboarding/steps/9").status_code == 404


def test_steps_are_added_listed_and_deleted(api: Api) -> None:
    api.sequence(steps=2, active=False)
    steps = api.client.get("/sequences/onboarding/steps").json()
    assert [(s["position"], s["delay"]) for s in steps] == [
        (1, {"amount": 0, "unit": "days"}),
        (2, {"amount": 1, "unit": "days"}),
    ]
    added = api.client.post(
        "/sequences/onboarding/steps", json={"position": 3, "offset_seconds": 259200, "subject": "S", "text": "x"}
    )
    assert added.status_code == 201
    assert added.json()["delay"] == {"amount": 259200, "unit": "seconds"}
    assert api.client.delete("/sequences/onboarding/steps/2").status_code == 204
    assert [s["position"] for s in api.client.get("/sequences/onboarding/steps").json()] == [1, 3]


@pytest.mark.parametrize(
    "body",
    [
        {"position": 0, "text": "x"},
        {"position": 2},  # no content at all
        {"position": 2, "text": "x", "delay": "soon"},
        {"position": 2, "text": "x", "delay": "1 day", "offset_seconds": 60},
        {"position": 2, "text": "x", "offset_seconds": -1},
    ],
)
def test_an_invalid_step_is_422(api: Api, body: dict[str, Any]) -> None:
    api.sequence(steps=1, active=False)
    assert api.client.post("/sequences/onboarding/steps", json=body).status_code == 422


def test_a_second_step_at_a_taken_position_is_a_conflict(api: Api) -> None:
    api.sequence(steps=1, active=False)
    assert api.client.post("/sequences/onboarding/steps", json={"position": 1, "text": "x"}).status_code == 409


def test_status_changes_follow_the_sequence_lifecycle(api: Api) -> None:
    api.sequence(steps=1)
    client = api.client
    assert client.patch("/sequences/onboarding", json={"status": "paused"}).json()["status"] == "paused"
    assert client.patch("/sequences/onboarding", json={"status": "active"}).json()["status"] == "active"
    assert client.patch("/sequences/onboarding", json={"status": "draft"}).status_code == 409
    assert client.patch("/sequences/onboarding", json={"status": "archived"}).json()["status"] == "archived"
    assert client.patch("/sequences/onboarding", json={"name": "Renamed"}).status_code == 409
    assert client.patch("/sequences/onboarding", json={"status": "bogus"}).status_code == 422


def test_activating_a_sequence_without_steps_is_a_conflict(api: Api) -> None:
    api.sequence(steps=0, active=False)
    assert api.client.patch("/sequences/onboarding", json={"status": "active"}).status_code == 409


def test_deleting_a_sequence_with_active_subscribers_is_a_conflict(api: Api) -> None:
    api.sequence()
    api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"})
    assert api.client.delete("/sequences/onboarding").status_code == 409
    api.client.delete("/sequences/onboarding/subscribers/ana@example.com")
    assert api.client.delete("/sequences/onboarding").status_code == 204
    assert api.client.get("/sequences/onboarding").status_code == 404


# --------------------------------------------------------------------------- subscribers


def test_subscribing_answers_201_then_200_for_the_same_subscription(api: Api) -> None:
    api.sequence()
    first = api.client.post("/sequences/onboarding/subscribers", json={"email": "Ana@Example.com", "first_name": "Ana"})
    assert first.status_code == 201
    again = api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert len(api.client.get("/sequences/onboarding/subscribers").json()) == 1


def test_subscribing_again_after_the_subscription_ended_is_a_conflict(api: Api) -> None:
    api.sequence()
    api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"})
    assert api.client.delete("/sequences/onboarding/subscribers/ana@example.com").json()["status"] == "exited"
    assert api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"}).status_code == 409


def test_a_completed_subscription_is_a_conflict_too(api: Api) -> None:
    api.sequence(steps=1)
    api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"})
    api.tick()
    assert api.client.get("/sequences/onboarding/subscribers/ana@example.com").json()["status"] == "completed"
    assert api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"}).status_code == 409


def test_subscribing_to_a_draft_is_a_conflict(api: Api) -> None:
    api.sequence(active=False)
    assert api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"}).status_code == 409


@pytest.mark.parametrize(
    "body",
    [{}, {"email": "not-an-address"}, {"email": "a@example.com", "timezone": "Nowhere/Land"}, {"email": 3}],
)
def test_an_invalid_subscriber_body_is_422(api: Api, body: dict[str, Any]) -> None:
    api.sequence()
    assert api.client.post("/sequences/onboarding/subscribers", json=body).status_code == 422


def test_pause_resume_and_cancel_a_subscriber(api: Api) -> None:
    api.sequence(steps=2)
    client, base = api.client, "/sequences/onboarding/subscribers/ana@example.com"
    client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com", "first_name": "Ana"})
    api.tick()
    assert client.post(f"{base}/pause").json()["status"] == "paused"
    assert client.post(f"{base}/pause").status_code == 409  # already paused
    api.clock.advance(timedelta(days=3))
    api.tick()
    assert [e.subject for e in api.sender.sent] == ["Step 1"]  # nothing while paused
    assert client.post(f"{base}/resume").json()["status"] == "active"
    api.tick()
    assert [e.subject for e in api.sender.sent] == ["Step 1", "Step 2"]  # the overdue step, once
    assert client.get(base).json()["status"] == "completed"
    assert client.post(f"{base}/resume").status_code == 409
    assert client.delete(base).status_code == 409  # a completed subscription can't be cancelled


def test_subscribers_are_listed_with_a_status_filter_and_pages(api: Api) -> None:
    api.sequence()
    for name in ("ana", "bo", "chloe"):
        api.client.post("/sequences/onboarding/subscribers", json={"email": f"{name}@example.com"})
    api.client.delete("/sequences/onboarding/subscribers/bo@example.com")
    listed = api.client.get("/sequences/onboarding/subscribers", params={"status": "active"}).json()
    assert sorted(s["email"] for s in listed) == ["ana@example.com", "chloe@example.com"]
    assert len(api.client.get("/sequences/onboarding/subscribers", params={"limit": 1, "offset": 2}).json()) == 1
    assert api.client.get("/sequences/onboarding/subscribers", params={"status": "nope"}).status_code == 422
    stats = api.client.get("/sequences/onboarding/stats").json()
    assert (stats["recipients"], stats["active"], stats["exited"]) == (3, 2, 1)


# --------------------------------------------------------------------------- one-click unsubscribe


def _subscriber_status(api: Api, email: str) -> tuple[str, str | None]:
    body = api.client.get(f"/sequences/onboarding/subscribers/{email}").json()
    return body["status"], body["exit_reason"]


def test_the_link_in_a_delivered_email_unsubscribes_that_contact_and_no_other(api: Api) -> None:
    api.sequence()
    for email in ("ana@example.com", "bo@example.com"):
        assert api.client.post("/sequences/onboarding/subscribers", json={"email": email}).status_code == 201
    api.tick()
    [to_ana] = [e for e in api.sender.sent if e.to == "ana@example.com"]
    assert to_ana.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = to_ana.headers["List-Unsubscribe"]
    assert link.startswith("<https://testserver/unsubscribe/")
    path = urlsplit(link.strip("<>")).path

    page = api.client.get(path)
    assert page.status_code == 200
    assert '<form method="post">' in page.text
    assert _subscriber_status(api, "ana@example.com") == ("active", None)  # a GET unsubscribes nobody

    answer = api.client.post(path, data={"List-Unsubscribe": "One-Click"})  # as the mailbox provider does
    assert answer.status_code == 200
    assert "You are unsubscribed" in answer.text
    assert _subscriber_status(api, "ana@example.com") == (EnrollmentStatus.EXITED.value, ExitReason.UNSUBSCRIBED.value)
    assert api.app.state.services.contacts.get("ana@example.com").suppressed is ExitReason.UNSUBSCRIBED
    assert _subscriber_status(api, "bo@example.com") == ("active", None)
    assert api.app.state.services.contacts.get("bo@example.com").suppressed is None
    assert api.client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200  # again: still fine


def test_a_tampered_unsubscribe_token_is_a_400_and_unsubscribes_nobody(api: Api) -> None:
    api.sequence()
    api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"})
    api.client.post("/sequences/onboarding/subscribers", json={"email": "bo@example.com"})
    api.tick()
    [to_ana] = [e for e in api.sender.sent if e.to == "ana@example.com"]
    version, payload, tag = urlsplit(to_ana.headers["List-Unsubscribe"].strip("<>")).path.rsplit("/", 1)[1].split(".")
    bo_payload = LINKS.token("bo@example.com", "enr-1").split(".")[1]
    foreign = UnsubscribeLinks("https://testserver/unsubscribe/{token}", secret="another site's secret, not ours")
    for bad in (
        f"{version}.{bo_payload}.{tag}",  # Ana's signature on Bo's ids
        f"{version}.{payload}.{tag[:-1]}{'B' if tag.endswith('A') else 'A'}",
        foreign.token("ana@example.com", "enr-1"),
        "not-a-token",
    ):
        assert api.client.post(f"/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"}).status_code == 400
        assert api.client.get(f"/unsubscribe/{bad}").status_code == 400
    assert _subscriber_status(api, "ana@example.com") == ("active", None)
    assert _subscriber_status(api, "bo@example.com") == ("active", None)


def test_an_app_that_sends_real_mail_needs_an_unsubscribe_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DRIPCORE_UNSUBSCRIBE_SECRET", raising=False)
    with pytest.raises(InvalidArgument, match="DRIPCORE_UNSUBSCRIBE_SECRET"):
        create_app(store=SQLiteStore(tmp_path / "drip.db"))  # SMTPSender: real mail
    monkeypatch.setenv("DRIPCORE_UNSUBSCRIBE_SECRET", "the production unsubscribe secret")
    monkeypatch.setenv("DRIPCORE_UNSUBSCRIBE_URL", "https://news.example.com/unsubscribe/{token}")
    app = create_app(store=SQLiteStore(tmp_path / "drip.db"))
    links = app.state.services.unsubscribe_links
    assert links.url("ana", "enr-1").startswith("https://news.example.com/unsubscribe/1.")
    app.state.services.drip.store.close()
