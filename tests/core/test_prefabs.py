"""The one-click prefabs match the reference documents."""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

from dripcore import Delay, SequenceStatus, TriggerEvent, TriggerType, UnknownVariables
from dripcore.prefabs import PREFABS, birthday_email, post_purchase, welcome_series
from tests.builders import World


def test_welcome_series_steps_at_0h_24h_and_6_days() -> None:
    seq = welcome_series()
    assert seq.trigger.type is TriggerType.TAG_ADDED
    assert seq.trigger.value is None
    assert [s.delay for s in seq.steps] == [Delay.immediately(), Delay.hours(24), Delay.days(6)]
    assert welcome_series(tag="vip").trigger.value == "vip"


def test_birthday_email_is_one_step_on_the_birthday() -> None:
    seq = birthday_email()
    assert (seq.trigger.type, seq.trigger.value) == (TriggerType.ANNIVERSARY, "birthday")
    assert len(seq.steps) == 1
    assert seq.steps[0].subject == "Happy birthday {{FirstName}}!"


def test_post_purchase_steps_at_0h_and_3_days() -> None:
    seq = post_purchase(product_id="p9")
    assert (seq.trigger.type, seq.trigger.value) == (TriggerType.AFTER_PURCHASE, "p9")
    assert [s.delay.nominal for s in seq.steps] == [timedelta(0), timedelta(days=3)]


def test_prefabs_start_as_drafts_unless_told() -> None:
    for factory in PREFABS.values():
        assert factory().status is SequenceStatus.DRAFT
        assert factory(status=SequenceStatus.ACTIVE).status is SequenceStatus.ACTIVE


@pytest.mark.parametrize("unknown", [UnknownVariables.EMPTY, UnknownVariables.ERROR])
def test_post_purchase_thank_you_shows_the_order_id(unknown: UnknownVariables) -> None:
    """The order id given to TriggerEvent.purchase reaches the thank-you, under either unknown-variables policy."""
    world = World()
    world.drip.save_sequence(attrs.evolve(post_purchase(status=SequenceStatus.ACTIVE), unknown_variables=unknown))
    world.drip.notify(TriggerEvent.purchase("ana", order_id="o-1001"))
    world.drip.tick()
    [email] = world.recorder.to("ana@example.com")
    assert email.text is not None
    assert email.text.startswith("Thank you for your order o-1001!")
    assert email.html is not None
    assert "Thank you for your order o-1001!" in email.html


def test_post_purchase_thank_you_reads_well_without_an_order_id() -> None:
    """A purchase without an order id still sends, even when unknown variables are errors."""
    world = World()
    world.drip.save_sequence(
        attrs.evolve(post_purchase(status=SequenceStatus.ACTIVE), unknown_variables=UnknownVariables.ERROR)
    )
    world.drip.notify(TriggerEvent.purchase("ana"))
    world.drip.tick()
    [email] = world.recorder.to("ana@example.com")
    assert email.text is not None
    assert email.text.startswith("Thank you for your order!")


def test_a_purchase_event_carries_its_order_id_as_a_variable() -> None:
    """order_id becomes a template variable, unless the caller's variables give their own."""
    assert TriggerEvent.purchase("c1", order_id="o-1").variables == {"order_id": "o-1"}
    assert TriggerEvent.purchase("c1", order_id="o-1", variables={"order_id": "#1"}).variables == {"order_id": "#1"}
    assert TriggerEvent.purchase("c1").variables == {}
