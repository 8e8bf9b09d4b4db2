"""The FastAPI example lists sequences with created_at/updated_at, and subscribers by step and next due time."""

from __future__ import annotations

from datetime import timedelta

from tests.project.test_example_fastapi_app import T0, Api, api  # noqa: F401 (api is the fixture)


def test_the_sequence_list_shows_when_each_was_created_and_last_changed(api: Api) -> None:  # noqa: F811
    api.sequence(active=False)
    api.clock.advance(timedelta(hours=2))
    assert api.client.patch("/sequences/onboarding", json={"status": "active"}).status_code == 200
    [row] = api.client.get("/sequences").json()
    assert (row["created_at"], row["updated_at"]) == ("2026-03-02T09:00:00Z", "2026-03-02T11:00:00Z")


def test_subscribers_are_listed_by_step_and_by_next_due_time(api: Api) -> None:  # noqa: F811
    api.sequence()
    api.client.post("/sequences/onboarding/subscribers", json={"email": "ana@example.com"})
    api.tick()  # Ana gets step 1; step 2 is due a day later
    later = (T0 + timedelta(hours=3)).isoformat()
    api.client.post("/sequences/onboarding/subscribers", json={"email": "bo@example.com", "started_at": later})
    on_step = api.client.get("/sequences/onboarding/subscribers", params={"step": 1}).json()
    assert [s["email"] for s in on_step] == ["ana@example.com"]
    by_due = api.client.get("/sequences/onboarding/subscribers", params={"order": "next_due"}).json()
    assert [s["email"] for s in by_due] == ["bo@example.com", "ana@example.com"]
    for params in ({"step": -1}, {"order": "soonest"}):
        assert api.client.get("/sequences/onboarding/subscribers", params=params).status_code == 422
