"""Schemathesis over the whole OpenAPI schema (a bounded number of examples per operation), as a
team owner with a full-scope key against the live ASGI app: no request it makes may end in a
server error. Wrong types, unknown fields, huge numbers and odd strings must all be 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase, given, settings, strategies
from schemathesis import APIOperation
from schemathesis.core.result import Err
from schemathesis.generation.modes import GenerationMode

from accounts.models import ApiKey, Role, Scope, Team, User
from accounts.services import api_key_create
from chat.services import assistant_create
from kb.services import kb_create
from models_registry.services import provider_create, registration_create
from realservices.xinference import free_port
from tests.conftest import member_of
from tests.factories import TeamFactory

schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))


@dataclass
class FuzzWorld:
    owner: User
    team: Team
    key: ApiKey
    secret: str


@pytest.fixture(scope="module")
def fuzz_world(django_db_setup: None, django_db_blocker: Any) -> Iterator[FuzzWorld]:
    """A team with one object of each kind, made once for the whole file and emptied after it (a
    team and a flush per operation were a third of this file's time). The models point at a port
    nothing listens on, so a generated request that reaches a model fails fast (503), never
    slowly. The database stays open to the tests and the live server's threads while it lasts."""
    with django_db_blocker.unblock():
        team = TeamFactory.create(rate_limit_per_minute=1_000_000)
        owner = member_of(team, Role.OWNER)
        provider = provider_create(
            team=team, name="dead", kind="openai_compatible", endpoint=f"http://127.0.0.1:{free_port()}"
        )
        llm = registration_create(provider=provider, kind="llm", name="LLM", provider_model_uid="llm")
        embedding = registration_create(
            provider=provider, kind="embedding", name="Emb", provider_model_uid="emb", dimensions=384
        )
        kb_create(team=team, name="KB", embedding_model=embedding)
        assistant_create(team=team, name="Helper", llm=llm)
        key, secret = full_scope_key(owner, team)
        try:
            yield FuzzWorld(owner, team, key, secret)
        finally:
            call_command("flush", interactive=False, verbosity=0)


def full_scope_key(owner: User, team: Team) -> tuple[ApiKey, str]:
    scopes = [Scope.READ, Scope.WRITE, Scope.CHAT, Scope.ADMIN]
    return api_key_create(user=owner, team=team, name="fuzz", scopes=scopes, rate_limit_per_minute=1_000_000)


@pytest.fixture
def owner_key(fuzz_world: FuzzWorld) -> str:
    """The world's key, or a new one when an earlier operation's examples revoked it (DELETE
    /api/v1/api-keys/{id}/ with its id): every operation is tried authenticated."""
    fuzz_world.key.refresh_from_db()
    if not fuzz_world.key.is_active:
        fuzz_world.key, fuzz_world.secret = full_scope_key(fuzz_world.owner, fuzz_world.team)
    return fuzz_world.secret


# One test per operation, named by it ("GET /api/v1/api-keys/"). schemathesis' own parametrize
# gives all of them one node id, which pytest-xdist's file scheduling keys its work by: it ran one.
def operations_of_schema() -> list[APIOperation]:
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # our schema failing to load is a failure, not fewer tests
            raise result.err()
        operations.append(result.ok())
    return operations


OPERATIONS = operations_of_schema()


# What a request that reaches the world's models answers (their server is down): the 503 that
# says so, the one server error a user's request may meet.
MODEL_SERVER_DOWN = {"provider_unreachable", "model_unavailable"}


def is_the_dead_model_server(response: Any) -> bool:
    if response.status_code != 503:
        return False
    try:
        return response.json()["error"]["code"] in MODEL_SERVER_DOWN
    except (ValueError, KeyError, TypeError):
        return False


@pytest.mark.parametrize("operation", OPERATIONS, ids=[operation.label for operation in OPERATIONS])
def test_no_request_ends_in_a_server_error(operation, owner_key, live_asgi_url) -> None:
    # Valid and invalid requests alike, as schemathesis' default generation modes.
    @given(case=strategies.one_of([operation.as_strategy(mode) for mode in GenerationMode]))
    @settings(
        max_examples=5,
        deadline=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def answers_below_500(case) -> None:
        response = case.call(base_url=live_asgi_url, headers={"Authorization": f"Bearer {owner_key}"}, timeout=60)
        assert response.status_code < 500 or is_the_dead_model_server(response), (
            case.method,
            case.formatted_path,
            case.body,
            response.text[:500],
        )

    answers_below_500()
