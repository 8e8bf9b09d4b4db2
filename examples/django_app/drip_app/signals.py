"""A new user is enrolled once their sign-up has committed (connected in apps.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from dripcore import TriggerEvent

from .campaigns import SIGNED_UP
from .engine import get_drip


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="drip_app.enroll_new_user")
def enroll_new_user(sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any) -> None:
    """Tell dripcore a user signed up, after the transaction commits: a rolled-back sign-up enrolls nobody."""
    if not created or raw or not getattr(instance, instance.get_email_field_name(), ""):
        return  # an edit, a fixture being loaded, or nobody to write to
    contact_id = str(instance.pk)

    def notify() -> None:
        get_drip().notify(TriggerEvent.tag_added(contact_id, SIGNED_UP))

    # robust: should dripcore's store be down, the sign-up still succeeds (the error is logged)
    transaction.on_commit(notify, using=kwargs.get("using"), robust=True)
