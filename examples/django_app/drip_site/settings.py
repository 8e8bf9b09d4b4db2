"""Settings of the example project. Everything a deployment changes comes from the environment.

The dripcore part is at the end: where its store lives, the unsubscribe link and its secret.
The mail sender is built from Django's own ``EMAIL_*`` settings (see ``drip_app/engine.py``).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
#: Where the databases go (the project directory unless DRIP_SITE_DATA_DIR says otherwise).
DATA_DIR = Path(os.environ.get("DRIP_SITE_DATA_DIR", str(BASE_DIR)))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only-set-DJANGO_SECRET_KEY")
#: Earlier SECRET_KEYs: Django still accepts what they signed, and so do unsubscribe links.
SECRET_KEY_FALLBACKS = [key for key in os.environ.get("DJANGO_SECRET_KEY_FALLBACKS", "").split(",") if key]
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "drip_app.apps.DripAppConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "drip_site.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# --------------------------------------------------------------------------- mail (Django's own settings)
# dripcore's SMTPSender is built from these: EMAIL_USE_SSL is implicit TLS (port 465),
# EMAIL_USE_TLS is STARTTLS (port 587); a user name and password log in.

EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = os.environ.get("EMAIL_USE_TLS", "") == "1"
EMAIL_USE_SSL = os.environ.get("EMAIL_USE_SSL", "") == "1"
EMAIL_TIMEOUT = 30
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "hello@example.com")

# --------------------------------------------------------------------------- dripcore

#: dripcore's store, apart from Django's database: a SQLite file next to it, or a
#: PostgreSQL URL (postgresql://user:password@host/dbname, with pip install 'dripcore[postgres]').
DRIPCORE_STORE = os.environ.get("DRIPCORE_STORE", str(DATA_DIR / "drip.sqlite3"))
#: The public address of the unsubscribe view (drip_app/urls.py), with {token} where the signed token goes.
DRIPCORE_UNSUBSCRIBE_URL = os.environ.get("DRIPCORE_UNSUBSCRIBE_URL", "https://example.com/unsubscribe/{token}/")
#: The secret that signs unsubscribe links. Empty: SECRET_KEY signs them (and SECRET_KEY_FALLBACKS
#: still verify), so rotating SECRET_KEY without keeping the old one in the fallbacks breaks the links
#: in every email already sent. A secret of their own lets SECRET_KEY rotate on its own schedule.
DRIPCORE_UNSUBSCRIBE_SECRET = os.environ.get("DRIPCORE_UNSUBSCRIBE_SECRET", "")
#: Earlier unsubscribe secrets: links they signed still work (rotation).
DRIPCORE_UNSUBSCRIBE_OLD_SECRETS = [s for s in os.environ.get("DRIPCORE_UNSUBSCRIBE_OLD_SECRETS", "").split(",") if s]

# dripcore's warnings and errors (a failing tick, a contact set aside) go to the console; its INFO lines
# repeat what the management commands print.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"dripcore": {"handlers": ["console"], "level": "WARNING"}, "drip_app": {"handlers": ["console"]}},
}
