"""The application's URLs. DRIPCORE_UNSUBSCRIBE_URL in settings is the public address of ``unsubscribe``."""

from django.urls import path

from . import views

urlpatterns = [
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
]
