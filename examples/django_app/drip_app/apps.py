"""The application's configuration: connects the sign-up signal when Django starts."""

from django.apps import AppConfig


class DripAppConfig(AppConfig):
    name = "drip_app"
    verbose_name = "Drip campaigns"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing the module connects its receivers. Without this line nothing fails:
        # new users are simply never enrolled.
        from . import signals  # noqa: F401
