"""Looking up a batch's contacts, telling one bad record from a contact directory that is down."""

from __future__ import annotations

from collections.abc import Mapping

from ..model import Contact
from .commits import DOWN_AFTER
from .context import Context, log
from .text import describe

__all__ = ["look_up_contacts"]


def look_up_contacts(ctx: Context, contact_ids: set[str]) -> tuple[dict[str, Contact], dict[str, str]]:
    """The contacts of a batch, and why each one that could not be looked up failed.

    A batch look-up that raises is retried one contact at a time, so one
    messy row in the host's table costs only its own contact. When every
    contact fails, the directory itself is down: that raises, for the
    tick to be tried again.
    """
    if not contact_ids:
        return {}, {}
    try:
        return _checked_contacts(ctx.contacts.get_many(contact_ids), contact_ids)
    except Exception as exc:
        log.warning("looking up %d contacts failed (%s); one by one now", len(contact_ids), describe(exc))
    contacts: dict[str, Contact] = {}
    failed: dict[str, str] = {}
    first: Exception | None = None
    answered = False
    for contact_id in contact_ids:
        try:
            found, bad = _checked_contacts({contact_id: ctx.contacts.get(contact_id)}, {contact_id})
        except Exception as exc:
            first = first or exc
            failed[contact_id] = describe(exc)
            if not answered and len(failed) >= DOWN_AFTER:
                raise  # the first few all failed, none answered: the directory is down, not a record
            continue
        answered = True
        contacts.update(found)
        failed.update(bad)
    # A lone contact that fails can't tell a broken row from a directory that is down: it is
    # set aside like a record (a directory that is down fails the batch look-up of the next
    # tick again, with more contacts, and is then told apart).
    return contacts, failed


def _checked_contacts(
    found: Mapping[str, Contact | None], contact_ids: set[str]
) -> tuple[dict[str, Contact], dict[str, str]]:
    """What the directory returned, checked: the real contacts, and why each other one is refused."""
    contacts: dict[str, Contact] = {}
    failed: dict[str, str] = {}
    for contact_id in contact_ids:
        contact = found.get(contact_id)
        if contact is None:
            continue
        if contact.__class__ is not Contact and not isinstance(contact, Contact):
            failed[contact_id] = f"the contact directory returned a {type(contact).__name__}, not a Contact"
        elif contact.id != contact_id:
            failed[contact_id] = f"the contact directory returned contact {contact.id!r} for {contact_id!r}"
        else:
            contacts[contact_id] = contact
    return contacts, failed
