"""Sign-in throttling (django-axes on /login/ and /admin/login/), the production check that
refuses placeholder secrets, and secure cookies with HSTS behind TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.utils import timezone

from runtime.supervisor import StartupError, read_config
from tests.factories import UserFactory

BASE_DIR = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


def sign_in(path: str, username: str, password: str, address: str = "203.0.113.7"):
    client = Client(REMOTE_ADDR=address)
    response = client.post(path, {"username": username, "password": password})
    return response, client.session.get("_auth_user_id")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_failed_sign_ins_lock_that_username_from_that_address(path: str) -> None:
    user = UserFactory.create(is_staff=True)
    for _ in range(4):
        response, signed_in = sign_in(path, user.username, "wrong")
        assert response.status_code == 200
        assert signed_in is None
    # The fifth failure (LOGIN_FAILURE_LIMIT) locks, and says so.
    locked, _ = sign_in(path, user.username, "wrong")
    assert locked.status_code == 429
    page = locked.content.decode()
    assert f"Too many failed sign-ins for “{user.username}” from your address (5 in a row)" in page
    assert "Try again in 15 minutes, or ask an administrator to unlock it now." in page
    assert locked["Retry-After"] == str(15 * 60)

    response, signed_in = sign_in(path, user.username, PASSWORD)
    assert response.status_code == 429
    assert signed_in is None
    assert "Too many failed sign-ins" in response.content.decode()

    # Another address, or another user from the same address, is not locked.
    response, signed_in = sign_in(path, user.username, PASSWORD, address="198.51.100.9")
    assert response.status_code == 302
    assert signed_in == str(user.pk)
    other = UserFactory.create(is_staff=True)
    response, signed_in = sign_in(path, other.username, PASSWORD)
    assert response.status_code == 302
    assert signed_in == str(other.pk)


@pytest.mark.django_db
def test_the_lock_lifts_after_the_cool_off_and_a_success_resets_the_count() -> None:
    user = UserFactory.create()
    for _ in range(5):
        sign_in("/login/", user.username, "wrong")
    assert sign_in("/login/", user.username, PASSWORD)[0].status_code == 429

    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    response, signed_in = sign_in("/login/", user.username, PASSWORD)
    assert response.status_code == 302
    assert signed_in == str(user.pk)

    # The count started again from zero: four more failures do not lock.
    for _ in range(4):
        sign_in("/login/", user.username, "wrong")
    assert sign_in("/login/", user.username, PASSWORD)[0].status_code == 302


@pytest.mark.django_db(transaction=True)
def test_the_lockout_holds_through_the_real_server(live_asgi_url: str) -> None:
    """The same through uvicorn and Django's async middleware chain, CSRF and all."""
    user = UserFactory.create()
    with httpx.Client(base_url=live_asgi_url, timeout=60) as browser:

        def attempt(password: str) -> httpx.Response:
            browser.get("/login/")
            token = browser.cookies["csrftoken"]
            return browser.post(
                "/login/", data={"username": user.username, "password": password, "csrfmiddlewaretoken": token}
            )

        assert [attempt("wrong").status_code for _ in range(4)] == [200] * 4
        locked = attempt("wrong")
        assert locked.status_code == 429
        assert f"Too many failed sign-ins for “{user.username}”" in locked.text
        refused = attempt(PASSWORD)
        assert refused.status_code == 429
        assert "sessionid" not in browser.cookies


# --- the production check ------------------------------------------------------------------


def manage(args: list[str], **environment: str) -> subprocess.CompletedProcess[str]:
    """manage.py in a fresh process with only these settings (no embedded servers started: the
    URLs point at nothing, and neither check nor shell connects)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO", "DATABASE", "REDIS"))}
    env.update(
        {
            "DATABASE_URL": "postgres://chatplatform:change-me@127.0.0.1:1/chatplatform",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "SECRET_KEY": "change-me",
            "CHATPLATFORM_ADMIN_PASSWORD": "change-me",
            "DEBUG": "false",
            "CSRF_TRUSTED_ORIGINS": "",
            "LOG_LEVEL": "WARNING",
        }
    )
    env.update(environment)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )


STRONG = {
    "SECRET_KEY": "k" * 60,
    "CHATPLATFORM_ADMIN_PASSWORD": "",
    "DATABASE_URL": "postgres://cp:s3cr3t-Pa55@db:5432/cp",
}
# What `check --deploy` finds and the security settings, from one process (each start takes seconds).
PROBE = (
    "import json; from django.conf import settings as s; from django.core.checks import run_checks; "
    "issues = run_checks(include_deployment_checks=True); print(json.dumps({"
    "'errors': [f'{i.id} {i.msg}' for i in issues if i.is_serious()], 'warnings': [i.id for i in issues], "
    "'secure': [s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.LANGUAGE_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, "
    "s.SECURE_PROXY_SSL_HEADER]}))"
)


def probe(**environment: str) -> dict:
    result = manage(["shell", "-c", PROBE], **environment)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_production_refuses_the_example_placeholders() -> None:
    result = manage(["check", "--deploy"])  # what docker/entrypoint.sh runs before every role
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("?: (chatplatform.E002) SECRET_KEY is the placeholder 'change-me'") for line in lines)
    assert any(
        line.startswith("?: (chatplatform.E003) CHATPLATFORM_ADMIN_PASSWORD is the placeholder") for line in lines
    )
    assert any(
        line.startswith("?: (chatplatform.E004) the database password") and "'change-me'" in line for line in lines
    )

    empty = probe(SECRET_KEY="", CHATPLATFORM_ADMIN_PASSWORD="", DATABASE_URL="postgres://cp@db:5432/cp")["errors"]
    assert [error.split(" ")[0] for error in empty] == ["chatplatform.E001", "chatplatform.E004"]
    assert empty[0].startswith("chatplatform.E001 SECRET_KEY is empty: set it to a long random value")
    assert "the database password (DATABASE_URL, or POSTGRES_PASSWORD in docker/.env) is empty" in empty[1]


def test_make_run_refuses_placeholders_too() -> None:
    for name in ("SECRET_KEY", "CHATPLATFORM_ADMIN_PASSWORD"):
        with pytest.raises(StartupError, match=f"{name} is the placeholder 'change-me' from docker/.env.example"):
            read_config({name: "change-me"})
    with pytest.raises(StartupError, match="DATABASE_URL's password is the placeholder"):
        read_config({"DATABASE_URL": "postgres://cp:change-me@db:5432/cp"})
    read_config({"SECRET_KEY": "k" * 60, "DATABASE_URL": "postgres://cp:s3cr3t@db:5432/cp"})


def test_behind_tls_cookies_are_secure_and_hsts_is_on() -> None:
    behind_tls = probe(**STRONG, CSRF_TRUSTED_ORIGINS="https://chat.example.com")
    assert behind_tls["errors"] == []  # real secrets pass the production check
    assert behind_tls["secure"] == [True, True, True, 31536000, None]
    assert not {"security.W004", "security.W012", "security.W016"} & set(behind_tls["warnings"])

    # DEBUG on (a developer's machine) is not checked, and plain HTTP keeps cookies usable.
    developer = probe(DEBUG="true")
    assert developer["errors"] == []
    assert developer["secure"] == [False, False, False, 0, None]
