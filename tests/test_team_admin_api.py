"""Teams and members, API keys and usage through the REST API, and the per-key and per-team rate
limits (counted in the real Redis)."""

from __future__ import annotations

import json
from datetime import date

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey, Membership, Role, Scope, Usage
from accounts.services import api_key_create
from tests.conftest import bearer_client, member_of
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_a_signed_in_user_creates_a_team_and_owns_it() -> None:
    user = UserFactory.create()
    response = session_client(user).post("/api/v1/teams/", {"name": "Research 研究"}, format="json")
    assert response.status_code == 201, response.json()
    assert Membership.objects.get(team_id=response.json()["id"], user=user).role == Role.OWNER


def test_an_api_key_cannot_create_a_team(team) -> None:
    owner = member_of(team, Role.OWNER)
    response = bearer_client(owner, team, scopes=[Scope.ADMIN]).post("/api/v1/teams/", {"name": "x"}, format="json")
    assert response.status_code == 403
    assert "signed in" in response.json()["error"]["message"]


def test_admins_add_members_and_change_roles_members_cannot(team) -> None:
    admin = member_of(team, Role.ADMIN)
    member = member_of(team, Role.MEMBER)
    newcomer = UserFactory.create()
    refused = session_client(member).post(f"/api/v1/teams/{team.pk}/members/", {"username": newcomer.username})
    assert refused.status_code == 403
    added = session_client(admin).post(
        f"/api/v1/teams/{team.pk}/members/", {"username": newcomer.username, "role": "viewer"}, format="json"
    )
    assert added.status_code == 201, added.json()
    assert Membership.objects.get(team=team, user=newcomer).role == Role.VIEWER
    listed = session_client(member).get(f"/api/v1/teams/{team.pk}/members/").json()
    assert {row["username"] for row in listed} == {admin.username, member.username, newcomer.username}
    changed = session_client(admin).patch(
        f"/api/v1/teams/{team.pk}/members/{newcomer.pk}/", {"role": "member"}, format="json"
    )
    assert changed.status_code == 200
    assert changed.json()["role"] == "member"
    # Making an owner takes an owner.
    promoted = session_client(admin).patch(
        f"/api/v1/teams/{team.pk}/members/{newcomer.pk}/", {"role": "owner"}, format="json"
    )
    assert promoted.status_code == 403


def test_adding_an_unknown_user_says_so(team) -> None:
    admin = member_of(team, Role.ADMIN)
    response = session_client(admin).post(f"/api/v1/teams/{team.pk}/members/", {"username": "nobody-here"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("username:")


def test_the_last_owner_cannot_leave_or_be_demoted(team) -> None:
    owner = member_of(team, Role.OWNER)
    client = session_client(owner)
    left = client.delete(f"/api/v1/teams/{team.pk}/members/{owner.pk}/")
    assert left.status_code == 400
    assert "last owner" in left.json()["error"]["message"]
    demoted = client.patch(f"/api/v1/teams/{team.pk}/members/{owner.pk}/", {"role": "admin"}, format="json")
    assert demoted.status_code == 400
    assert Membership.objects.get(team=team, user=owner).role == Role.OWNER


def test_removing_a_member_revokes_their_keys_for_that_team(team) -> None:
    admin = member_of(team, Role.ADMIN)
    member = member_of(team, Role.MEMBER)
    key, secret = api_key_create(user=member, team=team, name="bot")
    assert session_client(admin).delete(f"/api/v1/teams/{team.pk}/members/{member.pk}/").status_code == 204
    key.refresh_from_db()
    assert key.revoked_at is not None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/teams/").status_code == 401


def test_members_of_another_team_get_404_on_its_members(team, outsider) -> None:
    client = session_client(outsider)
    assert client.get(f"/api/v1/teams/{team.pk}/members/").status_code == 404
    assert client.post(f"/api/v1/teams/{team.pk}/members/", {"username": outsider.username}).status_code == 404


def test_api_key_is_shown_once_listed_by_prefix_and_revoked_by_delete(team) -> None:
    member = member_of(team, Role.MEMBER)
    client = session_client(member)
    created = client.post("/api/v1/api-keys/", {"name": "ci", "scopes": ["read", "chat"]}, format="json")
    assert created.status_code == 201, created.json()
    secret = created.json()["key"]
    assert secret.startswith(created.json()["prefix"])
    listed = client.get("/api/v1/api-keys/").json()["results"]
    assert [row["prefix"] for row in listed] == [created.json()["prefix"]]
    assert "key" not in listed[0]
    assert secret not in str(listed)
    assert client.delete(f"/api/v1/api-keys/{created.json()['id']}/").status_code == 204
    assert ApiKey.objects.get(pk=created.json()["id"]).revoked_at is not None
    revoked = APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert revoked.get("/api/v1/teams/").status_code == 401


def test_members_see_their_own_keys_admins_see_the_teams(team) -> None:
    admin = member_of(team, Role.ADMIN)
    member = member_of(team, Role.MEMBER)
    mine, _ = api_key_create(user=member, team=team, name="mine")
    theirs, _ = api_key_create(user=admin, team=team, name="theirs")
    member_ids = {row["id"] for row in session_client(member).get("/api/v1/api-keys/").json()["results"]}
    admin_ids = {row["id"] for row in session_client(admin).get("/api/v1/api-keys/").json()["results"]}
    assert member_ids == {mine.pk}
    assert admin_ids == {mine.pk, theirs.pk}
    assert session_client(member).delete(f"/api/v1/api-keys/{theirs.pk}/").status_code == 404


def test_a_key_manages_keys_only_with_the_admin_scope_and_never_widens_its_scopes(team) -> None:
    member = member_of(team, Role.MEMBER)
    plain = bearer_client(member, team)  # read, write, chat
    refused = plain.post("/api/v1/api-keys/", {"name": "x"}, format="json")
    assert refused.status_code == 403
    admin_key = bearer_client(member, team, scopes=[Scope.ADMIN])
    assert admin_key.post("/api/v1/api-keys/", {"name": "y", "scopes": ["read"]}, format="json").status_code == 201


def test_key_expiry_in_the_past_and_limits_above_the_platforms_are_refused(team) -> None:
    member = member_of(team, Role.MEMBER)
    client = session_client(member)
    past = client.post("/api/v1/api-keys/", {"name": "old", "expires_at": "2001-01-01T00:00:00Z"}, format="json")
    assert past.status_code == 400
    too_high = client.post("/api/v1/api-keys/", {"name": "fast", "rate_limit_per_minute": 10**6}, format="json")
    assert too_high.status_code == 400
    assert too_high.json()["error"]["message"].startswith("rate_limit_per_minute:")


def test_usage_members_see_their_rows_admins_the_teams_and_filters_apply(team, other_team) -> None:
    admin = member_of(team, Role.ADMIN)
    member = member_of(team, Role.MEMBER)
    outsider = member_of(other_team, Role.OWNER)
    Usage.objects.create(team=team, user=member, model_name="SmolLM2", day=date(2026, 11, 1), tokens_in=10)
    Usage.objects.create(team=team, user=admin, model_name="SmolLM2", day=date(2026, 11, 2), tokens_in=20)
    Usage.objects.create(team=other_team, user=outsider, model_name="SmolLM2", day=date(2026, 11, 2), tokens_in=30)
    member_rows = session_client(member).get("/api/v1/usage/").json()["results"]
    assert [row["tokens_in"] for row in member_rows] == [10]
    admin_rows = session_client(admin).get("/api/v1/usage/", {"since": "2026-11-02"}).json()["results"]
    assert [row["tokens_in"] for row in admin_rows] == [20]
    assert session_client(admin).get("/api/v1/usage/", {"since": "not-a-date"}).status_code == 400


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(team) -> None:
    member = member_of(team, Role.MEMBER)
    _key, secret = api_key_create(user=member, team=team, name="slow", rate_limit_per_minute=3)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    statuses = [client.get("/api/v1/teams/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = client.get("/api/v1/teams/")
    assert refused.json()["error"]["code"] == "throttled"
    assert "3 requests per minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Another key of the same team is not affected by this key's limit.
    assert bearer_client(member, team).get("/api/v1/teams/").status_code == 200


class SteppedClock:
    """A clock the test moves by hand, standing in for time.time in accounts.rate_limits."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_the_limit_slides_across_a_minute_boundary(team, monkeypatch) -> None:
    import time

    member = member_of(team, Role.MEMBER)
    _key, secret = api_key_create(user=member, team=team, name="bursty", rate_limit_per_minute=3)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    minute_start = (time.time() // 60) * 60
    clock = SteppedClock(minute_start + 58)
    monkeypatch.setattr("accounts.rate_limits.time", clock)
    assert [client.get("/api/v1/teams/").status_code for _ in range(3)] == [200, 200, 200]
    # Three seconds later a new minute has begun; a fixed window would have forgotten the burst.
    clock.now = minute_start + 61
    assert client.get("/api/v1/teams/").status_code == 429
    # Near the end of that minute, the burst has almost slid out of the window.
    clock.now = minute_start + 119
    assert client.get("/api/v1/teams/").status_code == 200


def test_the_teams_keys_share_the_team_limit(team) -> None:
    team.rate_limit_per_minute = 4
    team.save()
    member = member_of(team, Role.MEMBER)
    first, second = bearer_client(member, team), bearer_client(member, team)
    statuses = [client.get("/api/v1/teams/").status_code for client in (first, second, first, second, first)]
    assert statuses == [200, 200, 200, 200, 429]
    assert "team" in first.get("/api/v1/teams/").json()["error"]["message"]


def test_api_keys_still_work_while_redis_is_down_and_are_limited_again_after(team, settings, caplog) -> None:
    from realservices.xinference import free_port

    member = member_of(team, Role.MEMBER)
    _key, secret = api_key_create(user=member, team=team, name="steady", rate_limit_per_minute=2)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    redis_up = settings.CACHES
    # A real Redis client against a port where nothing listens: the counter is unreachable.
    settings.CACHES = {"default": {**redis_up["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}
    statuses = [client.get("/api/v1/teams/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 200]
    assert "Redis is unavailable" in caplog.text
    settings.CACHES = redis_up
    assert [client.get("/api/v1/teams/").status_code for _ in range(3)] == [200, 200, 429]


def test_rate_limit_checks_from_many_threads_share_one_redis_connection_pool(team) -> None:
    """Django makes a cache backend per thread (and per request context under ASGI): with Django's
    own RedisCache each made its pool, and every API request opened a Redis connection."""
    import threading

    from django.core.cache import caches

    from accounts.rate_limits import rate_limit_check
    from runtime.redis_cache import SharedPoolRedisCache

    def shared_pool_cache() -> SharedPoolRedisCache:
        cache = caches["default"]
        assert isinstance(cache, SharedPoolRedisCache)
        return cache

    key, _secret = api_key_create(user=member_of(team, Role.MEMBER), team=team, name="threads")
    pools = []

    def check_in_a_new_thread() -> None:
        rate_limit_check(key)
        pools.append(shared_pool_cache().redis_client().connection_pool)

    def connected_clients() -> int:
        return int(shared_pool_cache().redis_client().info("clients")["connected_clients"])

    check_in_a_new_thread()
    before = connected_clients()
    for _ in range(20):
        thread = threading.Thread(target=check_in_a_new_thread)
        thread.start()
        thread.join()
    assert len({id(pool) for pool in pools}) == 1
    assert connected_clients() <= before + 1


def test_v1_models_offers_a_new_teams_default_assistant(team) -> None:
    from models_registry.services import provider_create, registration_create, team_defaults_set

    member = member_of(team, Role.MEMBER)
    client = bearer_client(member, team)
    assert client.get("/v1/models").json()["data"] == []  # no default LLM yet: nothing to offer
    provider = provider_create(team=team, name="p", kind="openai_compatible", endpoint="http://127.0.0.1:9")
    team_defaults_set(
        team=team, llm=registration_create(provider=provider, kind="llm", name="L", provider_model_uid="l")
    )
    assert [model["id"] for model in client.get("/v1/models").json()["data"]] == ["Assistant"]


def test_malformed_requests_get_4xx_in_the_error_shape(team) -> None:
    admin = member_of(team, Role.ADMIN)
    client = bearer_client(admin, team)
    cases = [
        (client.post("/api/v1/assistants/", "[1,2", content_type="application/json"), 400, "parse_error"),
        (
            client.post("/api/v1/assistants/", json.dumps({"name": "x", "top-k": 3}), content_type="application/json"),
            400,
            "invalid",
        ),
        (
            session_client(admin).post("/api/v1/api-keys/", {"name": "x", "scopes": "read"}, format="json"),
            400,
            "invalid",
        ),
        (client.get("/api/v1/assistants/", {"cursor": "garbage"}), 400, "invalid"),
        (
            client.post(
                "/api/v1/assistants/", json.dumps({"name": "x" * (11 * 1024 * 1024)}), content_type="application/json"
            ),
            413,
            "too_large",
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.content[:300]
        assert response.json()["error"]["code"] == code
    unknown = cases[1][0].json()["error"]
    assert unknown["message"].startswith("top-k: Unknown field")
