"""Every operation in the OpenAPI schema, tried as: anonymous, a revoked key, a viewer of the
owning team, and the owner of another team. Objects of team A are the targets; the test fails on
any operation it has no target or body for, so a new endpoint cannot slip past it."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.base import ContentFile
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.models import ApiKey, Role, Scope
from accounts.services import api_key_create, api_key_revoke
from chat.models import Conversation, Message
from chat.services import assistant_create, conversation_create
from integrations.models import Webhook
from kb.models import Document, KnowledgeBase
from kb.services import kb_create
from models_registry.models import ModelRegistration, Provider
from models_registry.services import provider_create, registration_create
from tests.conftest import member_of
from tests.factories import TeamFactory, UserFactory
from tests.xinference_server import free_port

pytestmark = pytest.mark.django_db

ALL_SCOPES = [Scope.READ, Scope.WRITE, Scope.CHAT, Scope.ADMIN]
UNSAFE = {"post", "put", "patch", "delete"}
# Unsafe operations a viewer may perform: searching is a read, and anyone manages their own keys.
VIEWER_MAY = {("post", "/api/v1/knowledge-bases/{id}/search/"), ("post", "/api/v1/api-keys/")}


@dataclass
class World:
    team_id: int
    ids: dict[str, int]
    member_id: int
    newcomer_username: str
    assistant_name: str
    embedding_name: str
    llm_id: int
    embedding_id: int
    provider_id: int


def build_world() -> World:
    team = TeamFactory.create()
    member_of(team, Role.OWNER)
    member = member_of(team, Role.MEMBER)
    # Nothing listens on this port: an operation that wrongly gets through fails fast, not slowly.
    provider = provider_create(
        team=team, name="dead", kind="openai_compatible", endpoint=f"http://127.0.0.1:{free_port()}"
    )
    llm = registration_create(provider=provider, kind="llm", name="LLM", provider_model_uid="llm")
    embedding = registration_create(
        provider=provider, kind="embedding", name="Emb", provider_model_uid="emb", dimensions=384
    )
    kb = kb_create(team=team, name="KB", embedding_model=embedding)
    document = Document.objects.create(
        knowledge_base=kb, team=team, original_name="a.txt", file=ContentFile(b"hello", name="a.txt"),
        sha256="0" * 64, size_bytes=5, content_type="text/plain", status="ready",
    )  # fmt: skip
    assistant = assistant_create(team=team, name="Helper", llm=llm)
    room = conversation_create(team=team, owner=member, assistant=assistant, is_room=True)
    message = Message.objects.create(conversation=room, role=Message.Role.USER, author=member, content="hi")
    key, _secret = api_key_create(user=member, team=team, name="member's")
    webhook = Webhook.objects.create(team=team, url="https://hooks.example.com/x", secret="s", events=["ping"])
    return World(
        team_id=team.pk,
        ids={
            "api-keys": key.pk,
            "assistants": assistant.pk,
            "conversations": room.pk,
            "documents": document.pk,
            "knowledge-bases": kb.pk,
            "messages": message.pk,
            "models": llm.pk,
            "providers": provider.pk,
            "teams": team.pk,
            "webhooks": webhook.pk,
        },
        member_id=member.pk,
        newcomer_username=UserFactory.create().username,
        assistant_name=assistant.name,
        embedding_name=embedding.name,
        llm_id=llm.pk,
        embedding_id=embedding.pk,
        provider_id=provider.pk,
    )


def operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [(method, path) for path, item in schema["paths"].items() for method in item if method != "parameters"]


def concrete_path(path: str, world: World) -> str:
    if path.startswith("/v1/"):
        return path.replace("{model}", world.assistant_name)
    resource = path.split("/")[3]
    filled = path.replace("{user_id}", str(world.member_id))
    return filled.replace("{id}", str(world.ids[resource])) if "{id}" in filled else filled


def body_for(method: str, path: str, world: World) -> tuple[Any, str]:
    """A request body that would pass validation, so that refusals are about who asks."""
    if path.endswith("/files/") or path.endswith("/documents/"):
        upload = io.BytesIO(b"some text to index")
        upload.name = "notes.txt"
        return {"file": [upload]}, "multipart"
    team = world.team_id
    bodies: dict[str, Any] = {
        "/api/v1/api-keys/": {"name": "k", "team": team},
        "/api/v1/assistants/": {"name": "New", "llm": world.llm_id, "team": team},
        "/api/v1/assistants/{id}/": {"name": "Renamed", "llm": world.llm_id},
        "/api/v1/conversations/": {"assistant": world.ids["assistants"], "team": team},
        "/api/v1/conversations/{id}/": {"title": "Renamed", "assistant": world.ids["assistants"]},
        "/api/v1/conversations/{id}/messages/": {"content": "hello"},
        "/api/v1/knowledge-bases/": {"name": "KB2", "embedding_model": world.embedding_id, "team": team},
        "/api/v1/knowledge-bases/{id}/": {"name": "Renamed", "embedding_model": world.embedding_id},
        "/api/v1/knowledge-bases/{id}/search/": {"query": "hello", "mode": "fulltext"},
        "/api/v1/messages/{id}/feedback/": {"value": 1},
        "/api/v1/models/": {"provider": world.provider_id, "kind": "llm", "name": "M2", "provider_model_uid": "m2"},
        "/api/v1/models/{id}/": {"provider": world.provider_id, "kind": "llm", "name": "M3",
                                 "provider_model_uid": "m3"},
        "/api/v1/providers/": {"name": "P2", "kind": "openai_compatible", "endpoint": "http://127.0.0.1:9",
                               "team": team},
        "/api/v1/providers/{id}/": {"name": "P3", "kind": "openai_compatible", "endpoint": "http://127.0.0.1:9"},
        "/api/v1/teams/": {"name": "Another"},
        "/api/v1/teams/{id}/": {"name": "Renamed"},
        "/api/v1/teams/{id}/members/": {"username": world.newcomer_username},
        "/api/v1/teams/{id}/members/{user_id}/": {"role": "viewer"},
        "/api/v1/webhooks/": {"url": "https://hooks.example.com/y", "events": ["document.ready"], "team": team},
        "/api/v1/webhooks/{id}/": {"url": "https://hooks.example.com/z", "events": ["document.ready"]},
        "/v1/chat/completions": {"model": world.assistant_name, "messages": [{"role": "user", "content": "hi"}]},
        "/v1/embeddings": {"model": world.embedding_name, "input": "hi"},
    }  # fmt: skip
    if method in ("get", "delete") or (
        path not in bodies and re.search(r"/(launch|terminate|test|stop|rebuild|reindex|regenerate)/$", path)
    ):
        return None, "json"
    return bodies[path], "json"


def call(client: APIClient, method: str, path: str, world: World) -> Any:
    body, fmt = body_for(method, path, world)
    url = concrete_path(path, world)
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format=fmt)


def keyed(user: Any, team: Any) -> APIClient:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(user=user, team=team, name='m', scopes=ALL_SCOPES)[1]}"
    )
    return client


def counts(team_id: int) -> dict[str, int]:
    return {
        model.__name__: model.objects.filter(team_id=team_id).count()
        for model in (ApiKey, Provider, ModelRegistration, KnowledgeBase, Document, Conversation, Webhook)
    }


def test_the_schema_lists_every_api_route() -> None:
    paths = {path for _method, path in operations()}
    for expected in ("/api/v1/usage/", "/api/v1/api-keys/", "/api/v1/webhooks/", "/v1/chat/completions",
                     "/v1/embeddings", "/v1/models", "/api/v1/conversations/{id}/messages/"):  # fmt: skip
        assert expected in paths


def test_anonymous_and_revoked_keys_get_401_everywhere() -> None:
    world = build_world()
    member = UserFactory.create()
    from accounts.models import Team

    team = Team.objects.get(pk=world.team_id)
    member_of_team = member_of(team, Role.MEMBER)
    key, secret = api_key_create(user=member_of_team, team=team, name="gone", scopes=ALL_SCOPES)
    api_key_revoke(key=key)
    revoked = APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    anonymous = APIClient()
    del member
    failures = []
    for method, path in operations():
        for who, client in (("anonymous", anonymous), ("revoked", revoked)):
            response = call(client, method, path, world)
            if response.status_code != 401:
                failures.append((who, method, path, response.status_code))
    assert failures == []


def test_a_viewer_reads_but_cannot_change_anything() -> None:
    world = build_world()
    from accounts.models import Team

    team = Team.objects.get(pk=world.team_id)
    viewer = member_of(team, Role.VIEWER)
    client = keyed(viewer, team)
    failures = []
    for method, path in operations():
        if method not in UNSAFE or (method, path) in VIEWER_MAY:
            continue
        before = counts(world.team_id)
        response = call(client, method, path, world)
        # 404 where the viewer cannot see the target at all (another member's API key).
        allowed = {403, 404} if path.startswith("/api/v1/api-keys/{id}") else {403}
        if response.status_code not in allowed or counts(world.team_id) != before:
            failures.append((method, path, response.status_code, response.content[:200]))
    assert failures == []


def test_another_teams_owner_finds_nothing_of_this_team() -> None:
    world = build_world()
    stranger_team = TeamFactory.create()
    stranger = member_of(stranger_team, Role.OWNER)
    client = keyed(stranger, stranger_team)
    failures = []
    for method, path in operations():
        before = counts(world.team_id)
        response = call(client, method, path, world)
        if "{" in path:
            ok = response.status_code == 404
        elif method == "get":
            # Lists answer, without a single row of the other team.
            text = json.dumps(response.json())
            ok = response.status_code == 200 and f'"team": {world.team_id},' not in text
            ok = ok and world.assistant_name not in text
        else:
            ok = response.status_code in (400, 403, 404)
        if not ok or counts(world.team_id) != before:
            failures.append((method, path, response.status_code, response.content[:200]))
    assert failures == []
