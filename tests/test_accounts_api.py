"""Authentication by API key and session, and team scoping, through the real API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey, Role, Scope
from accounts.services import api_key_create, api_key_revoke, membership_set
from tests.conftest import bearer_client, member_of

pytestmark = pytest.mark.django_db


def team_slugs(response) -> list[str]:
    return sorted(team["slug"] for team in response.json()["results"])


def test_anonymous_request_is_refused_with_401_and_the_error_shape() -> None:
    response = APIClient().get("/api/v1/teams/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_bearer_key_sees_only_its_own_team_even_when_the_user_has_several(team, other_team) -> None:
    user = member_of(team)
    membership_set(team=other_team, user=user, role=Role.MEMBER)
    response = bearer_client(user, team).get("/api/v1/teams/")
    assert response.status_code == 200
    assert team_slugs(response) == [team.slug]


def test_session_user_sees_every_team_they_belong_to_and_no_other(team, other_team, outsider) -> None:
    user = member_of(team)
    client = APIClient()
    client.force_login(user)
    assert team_slugs(client.get("/api/v1/teams/")) == [team.slug]
    membership_set(team=other_team, user=user, role=Role.VIEWER)
    assert team_slugs(client.get("/api/v1/teams/")) == sorted([team.slug, other_team.slug])


def test_another_teams_object_is_not_found(team, other_team, outsider) -> None:
    client = bearer_client(outsider, other_team)
    assert client.get(f"/api/v1/teams/{other_team.pk}/").status_code == 200
    response = client.get(f"/api/v1/teams/{team.pk}/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_revoked_key_is_refused(team, member) -> None:
    key, secret = api_key_create(user=member, team=team, name="ci")
    api_key_revoke(key=key)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = client.get("/api/v1/teams/")
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


def test_expired_key_is_refused(team, member) -> None:
    key, secret = api_key_create(user=member, team=team, name="ci", expires_at=timezone.now() + timedelta(hours=1))
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/teams/").status_code == 401


def test_key_of_a_user_removed_from_the_team_sees_nothing(team, member) -> None:
    client = bearer_client(member, team)
    member.memberships.all().delete()
    assert client.get("/api/v1/teams/").json()["results"] == []


def test_key_of_a_deactivated_user_is_refused(team, member) -> None:
    client = bearer_client(member, team)
    member.is_active = False
    member.save()
    assert client.get("/api/v1/teams/").status_code == 401


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer a b", "Bearer cp_not-a-real-key", "Bearer \u00e9t\u00e9"],
)
def test_malformed_or_unknown_bearer_header_is_a_401_with_a_message(header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/teams/")
    assert response.status_code == 401
    assert response.json()["error"]["message"]


def test_only_the_hash_and_a_prefix_are_stored(team, member) -> None:
    key, secret = api_key_create(user=member, team=team, name="ci")
    stored = ApiKey.objects.values_list("prefix", "key_hash").get(pk=key.pk)
    assert secret.startswith(stored[0])
    assert secret not in stored[1]
    assert len(secret) > len(stored[0]) + 30


def test_use_records_last_used(team, member) -> None:
    key, secret = api_key_create(user=member, team=team, name="ci")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.get("/api/v1/teams/")
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_key_without_read_scope_cannot_read(team, member) -> None:
    client = bearer_client(member, team, scopes=[Scope.CHAT])
    response = client.get("/api/v1/teams/")
    assert response.status_code == 403
    assert "scope" in response.json()["error"]["message"]


def test_key_for_a_team_the_user_is_not_in_cannot_be_created(team, outsider) -> None:
    from accounts.services import AccountsError

    with pytest.raises(AccountsError, match="not a member"):
        api_key_create(user=outsider, team=team, name="sneaky")


def test_unknown_scope_is_refused(team, member) -> None:
    from accounts.services import AccountsError

    with pytest.raises(AccountsError, match="unknown scopes"):
        api_key_create(user=member, team=team, name="ci", scopes=["everything"])
