"""``python manage.py sync_sequences``: store the sequences defined in drip_app/campaigns.py.

Run it on every deploy, next to ``migrate`` and before the new web processes take
traffic, so a sign-up never finds its sequence missing. It is idempotent: an
unchanged definition writes nothing, and a sync that failed part-way is finished
by running it again. The worker runs it too when it starts.
"""

from typing import Any

from django.core.management.base import BaseCommand

from drip_app.campaigns import SEQUENCES
from drip_app.engine import get_drip


class Command(BaseCommand):
    help = "Create or update the drip sequences defined in code (idempotent; run on every deploy)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(str(get_drip().sync_sequences(SEQUENCES)))
