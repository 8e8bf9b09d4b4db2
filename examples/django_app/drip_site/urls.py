"""The project's URLs: the drip application's views (its unsubscribe page)."""

from django.urls import include, path

urlpatterns = [
    path("", include("drip_app.urls")),
]
