"""The Profile table: a time zone and a suppression reason per user (a user may have none)."""

# ruff: noqa: RUF012 - Django reads these class attributes; this is the shape makemigrations writes

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="Profile",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "timezone",
                    models.CharField(
                        blank=True, help_text="IANA time zone for local send times, e.g. Europe/Lisbon.", max_length=64
                    ),
                ),
                (
                    "email_suppressed",
                    models.CharField(
                        blank=True,
                        choices=[
                            ("unsubscribed", "Unsubscribed"),
                            ("bounced", "Bounced"),
                            ("complained", "Complained (marked as spam)"),
                            ("invalid_address", "Invalid address"),
                            ("suppressed", "Suppressed"),
                        ],
                        help_text="Why no drip email may go to this user.",
                        max_length=32,
                    ),
                ),
                (
                    "user",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="drip_profile",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        ),
    ]
