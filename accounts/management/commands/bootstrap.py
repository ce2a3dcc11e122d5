"""`python manage.py bootstrap`: the default team and the admin user; run on every start."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.services import platform_bootstrap


class Command(BaseCommand):
    help = "Create the default team and the admin user if missing (prints a generated password once)."

    def handle(self, *args: Any, **options: Any) -> None:
        result = platform_bootstrap(admin_password=settings.ADMIN_PASSWORD)
        if result.generated_password:
            self.stdout.write(
                f"Created the admin user {result.admin.username!r} with the password: {result.generated_password}\n"
                "It is shown only now; set CHATPLATFORM_ADMIN_PASSWORD to choose your own on a fresh var/."
            )
