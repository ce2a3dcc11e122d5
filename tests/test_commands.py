"""create_api_key and bootstrap, run as management commands against the real database."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import ApiKey, Membership, Role, Team, User
from tests.conftest import member_of

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_api_key_prints_a_working_key_once(team) -> None:
    user = member_of(team)
    secret = run("create_api_key", user.username, "--name", "laptop").strip()
    key = ApiKey.objects.get(user=user)
    assert key.name == "laptop"
    assert key.team == team
    assert secret.startswith(key.prefix)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/teams/").json()["results"][0]["slug"] == team.slug


def test_create_api_key_needs_team_when_user_has_several(team, other_team) -> None:
    user = member_of(team)
    Membership.objects.create(user=user, team=other_team, role=Role.VIEWER)
    with pytest.raises(CommandError, match="--team"):
        run("create_api_key", user.username)
    assert run("create_api_key", user.username, "--team", other_team.slug).strip()
    assert ApiKey.objects.get(user=user).team == other_team


def test_create_api_key_for_unknown_user_or_foreign_team_fails_clearly(team, other_team) -> None:
    user = member_of(team)
    with pytest.raises(CommandError, match="no user named"):
        run("create_api_key", "nobody")
    with pytest.raises(CommandError, match="not a member"):
        run("create_api_key", user.username, "--team", other_team.slug)
    with pytest.raises(CommandError, match="no team"):
        run("create_api_key", user.username, "--team", "missing")
    assert not ApiKey.objects.exists()


def test_create_api_key_with_scopes_and_expiry(team) -> None:
    user = member_of(team)
    run("create_api_key", user.username, "--scopes", "read", "--expires-days", "7")
    key = ApiKey.objects.get(user=user)
    assert key.scopes == ["read"]
    assert key.expires_at is not None


def test_bootstrap_creates_default_team_and_admin_once_printing_the_password_once() -> None:
    first = run("bootstrap")
    admin = User.objects.get(username="admin")
    assert admin.is_superuser
    password = first.split("password: ")[1].split()[0]
    assert admin.check_password(password)
    assert Membership.objects.get(user=admin).team.slug == "default"
    assert "Created the admin" not in run("bootstrap")
    assert Team.objects.filter(slug="default").count() == 1


@override_settings(ADMIN_PASSWORD="chosen-by-operator")
def test_bootstrap_uses_configured_admin_password_and_prints_nothing() -> None:
    assert "Created the admin" not in run("bootstrap")
    assert User.objects.get(username="admin").check_password("chosen-by-operator")
