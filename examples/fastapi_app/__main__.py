"""``python examples/fastapi_app [--demo]``: serve the API with uvicorn, or play a scripted session.

The demo needs no server and no SMTP: it drives the application through
FastAPI's test client on a temporary SQLite database, with a fake clock and a
recording mail sender, and prints each request with its answer; at the end
a subscriber's one-click unsubscribe link, taken from his welcome email, is
POSTed as a mailbox provider does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi_app.app import create_app


def demo() -> None:
    """Create a sequence, add steps, activate it, subscribe twice, deliver, pause, cancel, unsubscribe by the link."""
    import warnings

    with warnings.catch_warnings():  # newer Starlette prefers httpx2 for its test client, and says so
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from dripcore.adapters.sqlite import SQLiteStore
    from dripcore.testing import FakeClock, RecordingSender

    clock = FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    sender = RecordingSender()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(store=SQLiteStore(Path(tmp) / "drip.db"), sender=sender, clock=clock)
        with TestClient(app) as client:

            def call(method: str, url: str, body: object = None) -> object:
                response = client.request(method, url, json=body)
                shown = "" if body is None else " " + json.dumps(body)
                print(f"{method} {url}{shown}\n  -> {response.status_code}", end="")
                payload = response.json() if response.content else None
                if isinstance(payload, dict):
                    keys = ("id", "status", "position", "email", "last_step_sent", "detail")
                    print(" " + json.dumps({k: payload[k] for k in keys if k in payload}))
                else:
                    print("")
                return payload

            call("POST", "/sequences", {"id": "onboarding", "name": "Onboarding"})
            call("POST", "/sequences/onboarding/steps", {"position": 1, "subject": "Welcome!", "text": "Hello."})
            call(
                "POST",
                "/sequences/onboarding/steps",
                {"position": 2, "delay": "3 days", "subject": "Tips", "text": "."},
            )
            call("PATCH", "/sequences/onboarding", {"status": "active"})
            call("POST", "/sequences/onboarding/subscribers", {"email": "ana@example.com", "first_name": "Ana"})
            call("POST", "/sequences/onboarding/subscribers", {"email": "ana@example.com"})
            app.state.services.drip.tick()  # what the worker does
            call("GET", "/sequences/onboarding/subscribers/ana@example.com")
            call("POST", "/sequences/onboarding/subscribers/ana@example.com/pause")
            call("DELETE", "/sequences/onboarding")
            call("DELETE", "/sequences/onboarding/subscribers/ana@example.com")
            call("POST", "/sequences/onboarding/subscribers", {"email": "ana@example.com"})
            clock.advance(timedelta(days=3))
            app.state.services.drip.tick()
            print(f"emails sent: {[email.subject for email in sender.sent]}")

            # Bo's welcome email carries his signed link; the mailbox provider's one-click button POSTs to it.
            call("POST", "/sequences/onboarding/subscribers", {"email": "bo@example.com", "first_name": "Bo"})
            app.state.services.drip.tick()
            link = sender.sent[-1].headers["List-Unsubscribe"].strip("<>")
            answer = client.post(urlsplit(link).path, data={"List-Unsubscribe": "One-Click"})
            print(f"POST /unsubscribe/<Bo's token> List-Unsubscribe=One-Click\n  -> {answer.status_code}")
            call("GET", "/sequences/onboarding/subscribers/bo@example.com")


def main(argv: list[str] | None = None) -> None:
    """Serve with uvicorn, or run the demo."""
    parser = argparse.ArgumentParser(prog="python examples/fastapi_app", description=__doc__)
    parser.add_argument("--demo", action="store_true", help="play a scripted session through the test client")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.demo:
        demo()
        return
    try:
        import uvicorn
    except ImportError:
        sys.exit("uvicorn is not installed: pip install uvicorn (or run with --demo)")
    uvicorn.run(create_app(run_worker=True), port=args.port)


if __name__ == "__main__":
    main()
