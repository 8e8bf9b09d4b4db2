"""What dripcore needs to keep about a user that Django's user model has no field for.

A user may have no Profile at all (created before this app was installed, by
``createsuperuser``, by a bulk import): every reader treats a missing profile as
"no time zone, not suppressed", and ``UserContacts.suppress`` creates it when needed.
"""

from django.conf import settings
from django.db import models

#: The suppression reasons dripcore records (ExitReason values), as choices.
SUPPRESSION_CHOICES = [
    ("unsubscribed", "Unsubscribed"),
    ("bounced", "Bounced"),
    ("complained", "Complained (marked as spam)"),
    ("invalid_address", "Invalid address"),
    ("suppressed", "Suppressed"),
]


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="drip_profile")
    timezone = models.CharField(
        max_length=64, blank=True, help_text="IANA time zone for local send times, e.g. Europe/Lisbon."
    )
    email_suppressed = models.CharField(
        max_length=32, blank=True, choices=SUPPRESSION_CHOICES, help_text="Why no drip email may go to this user."
    )

    def __str__(self) -> str:
        return f"drip profile of {self.user}"
