"""One dripcore engine per process, built from Django's settings on first use."""

from __future__ import annotations

import ssl
from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from dripcore import Drip, UnsubscribeLinks
from dripcore.adapters.sqlite import SQLiteStore
from dripcore.ports import Store
from dripcore.render import LiquidRenderer
from dripcore.senders import SMTPSender

from .contacts import UserContacts


@cache
def get_drip() -> Drip:
    """The engine: its own store, Django's mail settings, your users, signed unsubscribe links."""
    return Drip(
        store=build_store(),
        sender=build_sender(),
        contacts=UserContacts(),
        renderer=LiquidRenderer(unsubscribe_url=unsubscribe_links()),
    )


@cache
def unsubscribe_links() -> UnsubscribeLinks:
    """Signs the links in every email, and checks them in the unsubscribe view."""
    if settings.DRIPCORE_UNSUBSCRIBE_SECRET:
        secret, old_secrets = settings.DRIPCORE_UNSUBSCRIBE_SECRET, settings.DRIPCORE_UNSUBSCRIBE_OLD_SECRETS
    else:  # dripcore derives a key of its own from it: a token is valid nowhere else in Django
        secret, old_secrets = settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS
    return UnsubscribeLinks(settings.DRIPCORE_UNSUBSCRIBE_URL, secret=secret, old_secrets=old_secrets)


def build_store() -> Store:
    """dripcore's store, apart from Django's database (its own SQLite file, or PostgreSQL)."""
    target = str(settings.DRIPCORE_STORE)
    if target.startswith(("postgresql://", "postgres://")):
        from dripcore.adapters.postgres import PostgresStore

        return PostgresStore(target)
    return SQLiteStore(target)


def build_sender() -> SMTPSender:
    """An SMTP sender from Django's EMAIL_* settings, as Django's own SMTP backend reads them."""
    if settings.EMAIL_USE_SSL and settings.EMAIL_USE_TLS:
        raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are mutually exclusive: set one of them")
    security = "tls" if settings.EMAIL_USE_SSL else "starttls" if settings.EMAIL_USE_TLS else "none"
    context = None
    certfile = getattr(settings, "EMAIL_SSL_CERTFILE", None)
    if certfile:  # a client certificate, as Django's backend presents it
        context = ssl.create_default_context()
        context.load_cert_chain(certfile, getattr(settings, "EMAIL_SSL_KEYFILE", None))
    return SMTPSender(
        host=settings.EMAIL_HOST,
        port=settings.EMAIL_PORT,
        security=security,
        username=settings.EMAIL_HOST_USER or None,
        password=settings.EMAIL_HOST_PASSWORD or None,
        timeout=settings.EMAIL_TIMEOUT or 30.0,  # Django's default is None: wait forever
        ssl_context=context,
        default_sender=settings.DEFAULT_FROM_EMAIL,
    )
