"""The production check: `manage.py check --deploy` fails on a secret left at its placeholder.

Production means DEBUG off and a database of its own (DATABASE_URL set): the embedded default
on a developer's machine generates its secrets and is never checked. The Docker entrypoint runs
`check --deploy` before each role starts, so a stack started with docker/.env.example's
`change-me` values stops with one line per value to fix, before it serves anything.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

# Values that must never reach production: docker/.env.example's, and the one the Docker image
# uses for collectstatic. `make run` refuses them too (runtime.supervisor).
PLACEHOLDER_SECRETS = frozenset({"change-me", "collectstatic-build-only-not-secret"})
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(50))"'


def is_placeholder(value: str) -> bool:
    return value.strip().lower() in PLACEHOLDER_SECRETS


@register(Tags.security, deploy=True)
def production_secrets(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if settings.DEBUG or settings.DATABASE_EMBEDDED:
        return []
    errors = []
    if settings.SECRET_KEY_GENERATED:
        errors.append(
            Error(
                f"SECRET_KEY is empty: set it to a long random value in the environment (docker/.env), e.g. {GENERATE}",
                id="chatplatform.E001",
            )
        )
    elif is_placeholder(settings.SECRET_KEY):
        errors.append(
            Error(
                f"SECRET_KEY is the placeholder {settings.SECRET_KEY!r}: set it to a long random value, "
                f"e.g. {GENERATE}",
                id="chatplatform.E002",
            )
        )
    # Empty is fine here: bootstrap then generates a random password and prints it once.
    if is_placeholder(settings.ADMIN_PASSWORD):
        errors.append(
            Error(
                f"CHATPLATFORM_ADMIN_PASSWORD is the placeholder {settings.ADMIN_PASSWORD!r}: set a strong password, "
                "or leave it empty to have a random one generated and printed once",
                id="chatplatform.E003",
            )
        )
    database = settings.DATABASES["default"]
    password = str(database.get("PASSWORD") or "")
    # A Unix-socket database may rightly have none (peer authentication); over TCP it must.
    over_tcp = not str(database.get("HOST") or "").startswith("/")
    if is_placeholder(password) or (over_tcp and not password):
        shown = repr(password) if password else "empty"
        errors.append(
            Error(
                f"the database password (DATABASE_URL, or POSTGRES_PASSWORD in docker/.env) is {shown}: set a strong "
                'one, URL-safe, e.g. python -c "import secrets; print(secrets.token_hex(24))"',
                id="chatplatform.E004",
            )
        )
    return errors
