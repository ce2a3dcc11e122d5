"""`python manage.py bootstrap`: migrate, then the default team and the admin user; run on every start.

One process for both saves a Django start-up (about 1.5 s) on every `make run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from accounts.services import platform_bootstrap
from models_registry.services import embedded_models_bootstrap


class Command(BaseCommand):
    help = "Migrate, then create the default team and the admin user if missing (prints a generated password once)."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=min(options["verbosity"], 1), stdout=self.stdout)
        result = platform_bootstrap(admin_password=settings.ADMIN_PASSWORD)
        if settings.XINFERENCE_EMBEDDED_VENV:
            # The supervisor runs the local Xinference: its two offline models become the default
            # team's defaults, kept running (launched by the reconcile task once Xinference is up).
            embedded_models_bootstrap(
                team=result.team,
                endpoint=settings.XINFERENCE_ENDPOINT,
                venv_dir=Path(settings.XINFERENCE_EMBEDDED_VENV),
            )
        if result.generated_password:
            self.stdout.write(
                f"Created the admin user {result.admin.username!r} with the password: {result.generated_password}\n"
                "It is shown only now; set CHATPLATFORM_ADMIN_PASSWORD to choose your own on a fresh var/."
            )
