"""A FastAPI host application: dripcore behind a REST API for sequences, steps and subscribers.

Run it (with ``pip install uvicorn``)::

    export DRIPCORE_UNSUBSCRIBE_SECRET=...            # 16+ bytes: it signs every email's unsubscribe link
    uvicorn --factory fastapi_app.app:create_app      # from the examples/ directory

or see it answer a scripted session without a server::

    python examples/fastapi_app --demo

Conventions: 201 when something is created, 200 when a subscription already
existed, 204 after a delete, 404 for an unknown id, 409 when the state forbids
the operation (a subscription that already ended, deleting a sequence that
still has subscribers, pausing a cancelled subscriber), 422 for an invalid body.

The application owns its contacts (here a :class:`MemoryContacts`, in your
app the users table) and hands dripcore a store, a clock and a mail sender.

Every email carries a signed one-click unsubscribe link (RFC 8058) to this
application's ``/unsubscribe/{token}``: a GET shows a confirmation page whose
form POSTs to the same URL, a POST unsubscribes the contact the token was
signed for (200), and a token that does not verify answers 400.
"""

import html
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import attrs
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dripcore import (
    ConcurrencyConflict,
    Contact,
    ContactSuppressed,
    Delay,
    Drip,
    Enrollment,
    EnrollmentConflict,
    EnrollmentOrder,
    EnrollmentStatus,
    InvalidArgument,
    InvalidTransition,
    InvalidUnsubscribeToken,
    NotFound,
    Sequence,
    SequenceStateError,
    SequenceStatus,
    Step,
    Trigger,
    UnsubscribeLinks,
    ValidationError,
    make_converter,
    parse_wait,
)
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.errors import EnrollmentNotFound
from dripcore.ports import Clock, MailSender, Store
from dripcore.render import LiquidRenderer
from dripcore.senders import SMTPSender
from dripcore.testing import MemoryContacts

JSON = dict[str, Any]
_converter = make_converter()


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TriggerIn(_Body):
    type: str = Field(examples=["tag_added"])
    value: str | None = None


class SequenceIn(_Body):
    id: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str = Field(min_length=1, max_length=255)
    description: str = ""
    trigger: TriggerIn | None = None
    timezone: str | None = Field(default=None, examples=["Europe/Paris"])


class SequencePatch(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=255)
    description: str | None = None
    status: Literal["draft", "active", "paused", "archived"] | None = None


class StepIn(_Body):
    position: int = Field(ge=1)
    delay: str | None = Field(default=None, examples=["2 days", "24 hours", "next tuesday 09:00"])
    offset_seconds: int | None = Field(default=None, ge=0)
    name: str = ""
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    template_id: str | None = None
    active: bool = True

    @model_validator(mode="after")
    def _one_delay(self) -> "StepIn":
        if self.delay is not None and self.offset_seconds is not None:
            raise ValueError("give delay or offset_seconds, not both")
        return self


class SubscriberIn(_Body):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    first_name: str = ""
    timezone: str | None = None
    started_at: datetime | None = None
    variables: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- responses


def sequence_json(sequence: Sequence) -> JSON:
    """A sequence as JSON: every field, through dripcore's own converter."""
    body: JSON = _converter.unstructure(sequence)
    return body


def subscriber_json(enrollment: Enrollment, email: str) -> JSON:
    """An enrollment as the API shows it: a subscriber of a sequence."""
    body: JSON = _converter.unstructure(enrollment)
    return {"email": email, **body}


# --------------------------------------------------------------------------- routes


@attrs.define
class Services:
    """What the routes need: the engine, the application's contacts, and the unsubscribe links."""

    drip: Drip
    contacts: MemoryContacts
    unsubscribe_links: UnsubscribeLinks


def get_services(request: Request) -> Services:
    """The dependency every route takes: the engine and contacts of this application."""
    services: Services = request.app.state.services
    return services


Svc = Annotated[Services, Depends(get_services)]
router = APIRouter()


def subscriber(svc: Services, sequence_id: str, email: str) -> Enrollment:
    """The contact's enrollment in the sequence: the live one, else the latest."""
    svc.drip.get_sequence(sequence_id)
    found = svc.drip.store.find_enrollments(sequence_id=sequence_id, contact_id=email.lower(), limit=1000)
    if not found:
        raise EnrollmentNotFound(f"{sequence_id}/{email}")
    live = [e for e in found if not e.is_terminal]
    return live[-1] if live else found[-1]


# -- sequences


@router.get("/sequences")
def list_sequences(svc: Svc) -> list[JSON]:
    return [_converter.unstructure(summary) for summary in svc.drip.overview()]


@router.post("/sequences", status_code=status.HTTP_201_CREATED)
def create_sequence(body: SequenceIn, svc: Svc) -> JSON:
    sequence_id = body.id or _slug(body.name)
    if svc.drip.store.get_sequence(sequence_id) is not None:
        raise SequenceStateError(sequence_id=sequence_id, status="existing", action="create")
    trigger = Trigger(type=body.trigger.type, value=body.trigger.value) if body.trigger else Trigger(type="manual")
    sequence = Sequence(
        id=sequence_id, name=body.name, description=body.description, trigger=trigger, timezone=body.timezone
    )
    return sequence_json(svc.drip.save_sequence(sequence))


@router.get("/sequences/{sequence_id}")
def get_sequence(sequence_id: str, svc: Svc) -> JSON:
    return sequence_json(svc.drip.get_sequence(sequence_id))


@router.patch("/sequences/{sequence_id}")
def update_sequence(sequence_id: str, body: SequencePatch, svc: Svc) -> JSON:
    drip = svc.drip
    sequence = drip.get_sequence(sequence_id)
    edits = {k: v for k, v in (("name", body.name), ("description", body.description)) if v is not None}
    if edits:
        sequence = drip.save_sequence(attrs.evolve(sequence, **edits))
    target = SequenceStatus(body.status) if body.status else sequence.status
    if target is not sequence.status:
        change: dict[SequenceStatus, Callable[[str], Sequence]] = {
            SequenceStatus.ACTIVE: drip.activate,  # from draft; from paused it resumes
            SequenceStatus.PAUSED: drip.pause,
            SequenceStatus.ARCHIVED: drip.archive,
        }
        if target not in change:
            raise SequenceStateError(sequence_id=sequence_id, status=sequence.status.value, action="set to draft")
        sequence = change[target](sequence_id)
    return sequence_json(sequence)


@router.delete("/sequences/{sequence_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_sequence(sequence_id: str, svc: Svc) -> Response:
    svc.drip.delete_sequence(sequence_id)  # SequenceStateError (409) while it has subscribers
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/sequences/{sequence_id}/stats")
def sequence_stats(sequence_id: str, svc: Svc) -> JSON:
    stats = svc.drip.stats(sequence_id)
    body: JSON = _converter.unstructure(stats)
    return {**body, "completion_rate": stats.completion_rate, "open_rate": stats.open_rate}


# -- steps


@router.get("/sequences/{sequence_id}/steps")
def list_steps(sequence_id: str, svc: Svc) -> list[JSON]:
    return [_converter.unstructure(step) for step in svc.drip.get_sequence(sequence_id).steps]


@router.post("/sequences/{sequence_id}/steps", status_code=status.HTTP_201_CREATED)
def add_step(sequence_id: str, body: StepIn, svc: Svc) -> JSON:
    sequence = svc.drip.get_sequence(sequence_id)
    if sequence.step(body.position) is not None:
        raise SequenceStateError(
            sequence_id=sequence_id, status=sequence.status.value, action=f"add a second step {body.position} to"
        )
    if body.offset_seconds is not None:
        delay: Any = Delay.seconds(body.offset_seconds)
    else:
        delay = parse_wait(body.delay) if body.delay else Delay.immediately()
    fields = body.model_dump(exclude={"delay", "offset_seconds"})
    step = Step(delay=delay, **fields)  # InvalidStep (422): no content, a bad template id...
    saved = svc.drip.save_sequence(attrs.evolve(sequence, steps=(*sequence.steps, step)))
    stored = saved.step(body.position)
    return _converter.unstructure(stored)  # type: ignore[no-any-return]


@router.delete("/sequences/{sequence_id}/steps/{position}", status_code=status.HTTP_204_NO_CONTENT)
def delete_step(sequence_id: str, position: int, svc: Svc) -> Response:
    sequence = svc.drip.get_sequence(sequence_id)
    if sequence.step(position) is None:
        raise NotFound(f"{sequence_id}/steps/{position}")
    svc.drip.save_sequence(attrs.evolve(sequence, steps=[s for s in sequence.steps if s.position != position]))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- subscribers


@router.get("/sequences/{sequence_id}/subscribers")
def list_subscribers(
    sequence_id: str,
    svc: Svc,
    status_filter: Annotated[EnrollmentStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    step: Annotated[int | None, Query(ge=0)] = None,
    order: EnrollmentOrder = EnrollmentOrder.ID,
) -> list[JSON]:
    page = svc.drip.enrollments(
        sequence_id, status=status_filter, limit=limit, offset=offset, last_step_sent=step, order=order
    )
    emails = svc.contacts.get_many({e.contact_id for e in page})
    return [subscriber_json(e, emails[e.contact_id].email if e.contact_id in emails else "") for e in page]


@router.post("/sequences/{sequence_id}/subscribers", status_code=status.HTTP_201_CREATED)
def subscribe(sequence_id: str, body: SubscriberIn, response: Response, svc: Svc) -> JSON:
    svc.drip.get_sequence(sequence_id)  # 404 before touching the contact
    contact_id = body.email.lower()
    existing = svc.contacts.get(contact_id)
    contact = Contact(
        id=contact_id,
        email=body.email,
        first_name=body.first_name or (existing.first_name if existing else ""),
        timezone=body.timezone or (existing.timezone if existing else None),
        suppressed=existing.suppressed if existing else None,  # never un-suppress by subscribing
    )
    svc.contacts.add(contact)
    enrollment, created = svc.drip.enroll(
        sequence_id, contact_id, started_at=body.started_at, variables=body.variables
    )  # EnrollmentConflict (409) if it already ended
    if not created:
        response.status_code = status.HTTP_200_OK
    return subscriber_json(enrollment, contact.email)


@router.get("/sequences/{sequence_id}/subscribers/{email}")
def get_subscriber(sequence_id: str, email: str, svc: Svc) -> JSON:
    return subscriber_json(subscriber(svc, sequence_id, email), email)


@router.delete("/sequences/{sequence_id}/subscribers/{email}")
def cancel_subscriber(sequence_id: str, email: str, svc: Svc) -> JSON:
    enrollment = svc.drip.cancel_enrollment(subscriber(svc, sequence_id, email).id)
    return subscriber_json(enrollment, email)


@router.post("/sequences/{sequence_id}/subscribers/{email}/pause")
def pause_subscriber(sequence_id: str, email: str, svc: Svc) -> JSON:
    enrollment = svc.drip.pause_enrollment(subscriber(svc, sequence_id, email).id)
    return subscriber_json(enrollment, email)


@router.post("/sequences/{sequence_id}/subscribers/{email}/resume")
def resume_subscriber(sequence_id: str, email: str, svc: Svc) -> JSON:
    enrollment = svc.drip.resume_enrollment(subscriber(svc, sequence_id, email).id)
    return subscriber_json(enrollment, email)


# -- unsubscribe (RFC 8058 one-click)

_PAGES = {
    "confirm": (
        "Unsubscribe?",
        "<p>You will get no more emails from us.</p>"
        # no action: the form posts to this same URL, as a mailbox provider's one-click button does
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    ),
    "done": ("You are unsubscribed", "<p>You will get no more emails from us.</p>"),
    "invalid": ("This link does not work", "<p>It may have been cut short or changed. Use the link in the email.</p>"),
}


def _page(state: str, status_code: int = 200) -> HTMLResponse:
    title, body = _PAGES[state]
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status_code,
    )


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, svc: Svc) -> HTMLResponse:
    """The link a reader follows: a confirmation page (a GET, a link scanner's too, unsubscribes nobody)."""
    try:
        svc.unsubscribe_links.verify(token)
    except InvalidUnsubscribeToken:
        return _page("invalid", 400)
    return _page("confirm")


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(token: str, svc: Svc) -> HTMLResponse:
    """The one-click POST (from the page, or the mailbox provider's button): 200, never a redirect."""
    try:
        who = svc.unsubscribe_links.verify(token)
    except InvalidUnsubscribeToken:
        return _page("invalid", 400)
    svc.drip.contact_unsubscribed(who.contact_id)  # idempotent: a second POST changes nothing
    return _page("done")


# --------------------------------------------------------------------------- the application


def unsubscribe_links_from_env(*, real_mail: bool) -> UnsubscribeLinks:
    """Signed links to this application's ``/unsubscribe/{token}``, from the environment.

    ``DRIPCORE_UNSUBSCRIBE_URL`` is its public address (default
    ``http://localhost:8000/unsubscribe/{token}``), ``DRIPCORE_UNSUBSCRIBE_SECRET``
    the secret that signs (16 bytes at least), ``DRIPCORE_UNSUBSCRIBE_OLD_SECRETS``
    earlier secrets, comma-separated, whose links still work. Without a secret,
    an application that sends real mail refuses to start; one that doesn't (a test,
    the demo) signs with a random secret, good for this process only.
    """
    secret = os.environ.get("DRIPCORE_UNSUBSCRIBE_SECRET")
    if not secret:
        if real_mail:
            raise InvalidArgument(
                "DRIPCORE_UNSUBSCRIBE_SECRET", None, "set it: it signs the unsubscribe link in every email"
            )
        secret = secrets.token_urlsafe(32)
    return UnsubscribeLinks(
        os.environ.get("DRIPCORE_UNSUBSCRIBE_URL", "http://localhost:8000/unsubscribe/{token}"),
        secret=secret,
        old_secrets=[s for s in os.environ.get("DRIPCORE_UNSUBSCRIBE_OLD_SECRETS", "").split(",") if s],
    )


def create_app(
    *,
    store: Store | None = None,
    sender: MailSender | None = None,
    clock: Clock | None = None,
    contacts: MemoryContacts | None = None,
    unsubscribe_links: UnsubscribeLinks | None = None,
    run_worker: bool = False,
) -> FastAPI:
    """Build the application. Defaults come from the environment:

    ``DRIPCORE_DB`` (SQLite file, default ``drip.db``), ``SMTP_HOST``, ``SMTP_PORT``
    and ``MAIL_FROM``, and the unsubscribe links' address and secret (see
    :func:`unsubscribe_links_from_env`). With ``run_worker`` a background thread
    delivers due steps while the application runs (fine for one process; see
    the workers how-to for more).
    """
    contacts = contacts if contacts is not None else MemoryContacts()
    if unsubscribe_links is None:
        unsubscribe_links = unsubscribe_links_from_env(real_mail=sender is None or sender.sends_real_mail)
    drip = Drip(
        store=store if store is not None else SQLiteStore(os.environ.get("DRIPCORE_DB", "drip.db")),
        sender=sender
        if sender is not None
        else SMTPSender(
            host=os.environ.get("SMTP_HOST", "localhost"),
            port=int(os.environ.get("SMTP_PORT", "25")),
            default_sender=os.environ.get("MAIL_FROM", "hello@example.com"),
        ),
        clock=clock,
        contacts=contacts,
        renderer=LiquidRenderer(unsubscribe_url=unsubscribe_links),  # every email gets its signed link
    )
    services = Services(drip=drip, contacts=contacts, unsubscribe_links=unsubscribe_links)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker = threading.Thread(target=drip.run, name="dripcore-worker", daemon=True) if run_worker else None
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                drip.stop()
                worker.join(timeout=10)
            drip.store.close()

    app = FastAPI(title="Drip campaigns", lifespan=lifespan)
    app.state.services = services
    _install_error_handlers(app)
    app.include_router(router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Map dripcore's errors onto HTTP statuses, in one place."""

    def handler(code: int) -> Callable[[Request, Exception], Any]:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=code)

        return handle

    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(ValidationError, handler(422))
    for conflict in (SequenceStateError, EnrollmentConflict, InvalidTransition, ContactSuppressed, ConcurrencyConflict):
        app.add_exception_handler(conflict, handler(409))


def _slug(name: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in name.lower()).split()
    return "-".join(words)[:64] or "sequence"
