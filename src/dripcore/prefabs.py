"""One-click sequences: ready-made Birthday email, Welcome series and Post-purchase thank-you.

Each function returns a :class:`~dripcore.model.Sequence` (a DRAFT unless told
otherwise) that you can save as is or adjust with :func:`attrs.evolve`:

>>> seq = welcome_series(tag="new-customer")
>>> [str(step.delay) for step in seq.steps]
['immediately', '24 hours', '6 days']
"""

from __future__ import annotations

from .model import Delay, SenderIdentity, Sequence, SequenceStatus, Step, Trigger, TriggerType

__all__ = ["PREFABS", "birthday_email", "post_purchase", "welcome_series"]


def birthday_email(
    *,
    id: str = "birthday",
    name: str = "Birthday email",
    subject: str = "Happy birthday {{FirstName}}!",
    html: str = "<p>Happy birthday, {{FirstName}}! Have a wonderful day.</p>",
    text: str = "Happy birthday, {{FirstName}}! Have a wonderful day.",
    status: SequenceStatus = SequenceStatus.DRAFT,
    sender: SenderIdentity | None = None,
) -> Sequence:
    """An anniversary sequence on the contact's birthday: one step, sent on the day."""
    return Sequence(
        id=id,
        name=name,
        description="Sent on each contact's birthday by the daily anniversary sweep.",
        status=status,
        trigger=Trigger(type=TriggerType.ANNIVERSARY, value="birthday"),
        steps=(Step(position=1, name="Birthday", subject=subject, html=html, text=text),),
        sender=sender,
    )


def welcome_series(
    *,
    id: str = "welcome",
    name: str = "Welcome series",
    tag: str | None = None,
    status: SequenceStatus = SequenceStatus.DRAFT,
    sender: SenderIdentity | None = None,
) -> Sequence:
    """Three steps when a tag is added (any tag, or ``tag``): at once, 24 hours later, 6 days after that."""
    return Sequence(
        id=id,
        name=name,
        description="Greets new contacts over their first week.",
        status=status,
        trigger=Trigger(type=TriggerType.TAG_ADDED, value=tag),
        steps=(
            Step(
                position=1,
                name="Welcome",
                subject="Welcome aboard, {{FirstName}}",
                html="<p>Hi {{FirstName}}, we are glad you are here.</p>",
                text="Hi {{FirstName}}, we are glad you are here.",
            ),
            Step(
                position=2,
                name="Getting started",
                delay=Delay.hours(24),
                subject="Getting started: three tips",
                html="<p>{{FirstName}}, here are three tips to get going.</p>",
                text="{{FirstName}}, here are three tips to get going.",
            ),
            Step(
                position=3,
                name="Check-in",
                delay=Delay.days(6),
                subject="How is it going, {{FirstName}}?",
                html="<p>A week in: how is it going? Just reply to this email.</p>",
                text="A week in: how is it going? Just reply to this email.",
            ),
        ),
        sender=sender,
    )


def post_purchase(
    *,
    id: str = "post-purchase",
    name: str = "Post-purchase thank-you",
    product_id: str | None = None,
    status: SequenceStatus = SequenceStatus.DRAFT,
    sender: SenderIdentity | None = None,
) -> Sequence:
    """Two steps after a purchase (any, or of ``product_id``): a thank-you now, a follow-up 3 days later.

    Purchases enroll once per order id (the trigger event's key); the thank-you shows it
    (``{{order_id}}``, set by :meth:`TriggerEvent.purchase`) and reads well without one.
    """
    return Sequence(
        id=id,
        name=name,
        description="Thanks a customer for a purchase and follows up.",
        status=status,
        trigger=Trigger(type=TriggerType.AFTER_PURCHASE, value=product_id),
        steps=(
            Step(
                position=1,
                name="Thank you",
                subject="Thank you for your order, {{FirstName}}",
                html="<p>Thank you for your order{% if order_id %} {{order_id}}{% endif %}!</p>",
                text="Thank you for your order{% if order_id %} {{order_id}}{% endif %}!",
            ),
            Step(
                position=2,
                name="Follow-up",
                delay=Delay.days(3),
                subject="How are you finding it?",
                html="<p>We would love to hear what you think of your purchase.</p>",
                text="We would love to hear what you think of your purchase.",
            ),
        ),
        sender=sender,
    )


PREFABS = {"birthday": birthday_email, "welcome": welcome_series, "post-purchase": post_purchase}
"""The prefab factories by short name: ``PREFABS["welcome"]()`` is :func:`welcome_series`."""
