"""dripcore's contacts are this site's users: a ContactDirectory over Django's user model.

Suppression (unsubscribed, bounced, complained) is kept here, on the user's
Profile, so that it survives anything dripcore's store goes through: dripcore
asks for it before every send and every enrollment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from dripcore import Contact, DripcoreError, ExitReason
from dripcore.ports import ContactDirectory

from .models import Profile

log = logging.getLogger(__name__)


def profile_of(user: Any) -> Profile | None:
    """The user's Profile, or None for a user who has none."""
    try:
        return user.drip_profile  # type: ignore[no-any-return]
    except Profile.DoesNotExist:
        return None


def to_contact(user: Any) -> Contact | None:
    """The user as a dripcore Contact; None for one who can't be mailed (no valid address)."""
    profile = profile_of(user)
    email = getattr(user, user.get_email_field_name(), "")
    if not email:
        return None
    try:
        return Contact(
            id=str(user.pk),
            email=email,
            first_name=getattr(user, "first_name", ""),
            last_name=getattr(user, "last_name", ""),
            created_at=getattr(user, "date_joined", None),
            timezone=(profile.timezone or None) if profile else None,
            suppressed=(profile.email_suppressed or None) if profile else None,
        )
    except DripcoreError as error:  # an address or time zone dripcore refuses: no mail, and say why
        log.warning("user %s can't receive drip email: %s", user.pk, error)
        return None


class UserContacts(ContactDirectory):
    """Contacts by user primary key (as text), read with their profile in one query."""

    def __init__(self) -> None:
        self.users = get_user_model()

    def _pks(self, contact_ids: Iterable[str]) -> list[Any]:
        pks = []
        for contact_id in contact_ids:
            try:
                pks.append(self.users._meta.pk.to_python(contact_id))
            except ValidationError:  # not an id of this user model: nobody
                continue
        return pks

    def get(self, contact_id: str) -> Contact | None:
        return self.get_many([contact_id]).get(contact_id)

    def get_many(self, contact_ids: Iterable[str]) -> Mapping[str, Contact]:
        users = self.users.objects.filter(pk__in=self._pks(contact_ids)).select_related("drip_profile")
        contacts = (to_contact(user) for user in users)
        return {contact.id: contact for contact in contacts if contact is not None}

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        user = self.users.objects.filter(pk__in=self._pks([contact_id])).first()
        if user is None:  # a deleted user: nothing to mail, nothing to keep
            return
        Profile.objects.update_or_create(user=user, defaults={"email_suppressed": reason.value})
