"""The one-click prefabs match the reference documents."""

from __future__ import annotations

from datetime import timedelta

from dripcore import Delay, SequenceStatus, TriggerType
from dripcore.prefabs import PREFABS, birthday_email, post_purchase, welcome_series


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
