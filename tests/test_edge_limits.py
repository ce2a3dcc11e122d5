"""Request bodies are capped before Django reads them (chatplatform.body_limits), through the real
ASGI app under uvicorn, and each team's storage quota holds on upload (kb.storage)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.services import api_key_create
from kb.models import Document, KnowledgeBase
from kb.services import kb_create
from models_registry.models import ModelRegistration
from models_registry.services import provider_create, registration_create
from tests.conftest import bearer_client, member_of

MB = 1024 * 1024


class Body:
    """A request body sent in pieces, counting what actually left the client."""

    def __init__(self, total: int, piece: int = 64 * 1024) -> None:
        self.total = total
        self.piece = piece
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < self.total:
            self.sent += self.piece
            yield b"x" * self.piece


def assert_too_large(response: httpx.Response, limit: int, advice: str) -> None:
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "too_large"
    assert error["details"] == {"limit_bytes": limit}
    assert advice in error["message"], error["message"]


def test_a_huge_declared_body_is_refused_before_authentication_or_reading(live_asgi_url: str) -> None:
    body = Body(10 * 1024 * MB)
    response = httpx.post(
        f"{live_asgi_url}/api/v1/assistants/",
        content=body,
        headers={"Content-Length": str(body.total), "Content-Type": "application/json"},
        timeout=60,
    )
    # Anonymous, so 401 had the body been read: the Content-Length alone answered.
    assert_too_large(response, 2 * MB, "The request body is over 2 MB")
    assert "API_MAX_BODY_BYTES" in response.json()["error"]["message"]
    assert body.sent < 64 * MB  # only what the sockets' buffers took before the answer came


def test_a_chunked_body_is_cut_off_once_past_the_cap(live_asgi_url: str) -> None:
    body = Body(200 * MB)
    response = httpx.post(
        f"{live_asgi_url}/api/v1/assistants/", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.request.headers["transfer-encoding"] == "chunked"  # no Content-Length to go by
    assert_too_large(response, 2 * MB, "send less")
    assert body.sent < 64 * MB


def test_upload_endpoints_take_larger_bodies_up_to_their_own_cap(live_asgi_url: str, settings) -> None:
    settings.UPLOAD_MAX_REQUEST_BYTES = 8 * MB
    url = f"{live_asgi_url}/api/v1/knowledge-bases/1/documents/"
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    # 3 MB is over the 2 MB API cap but not the upload cap: read, then refused for want of a key.
    under = httpx.post(url, content=Body(3 * MB), headers=multipart, timeout=60)
    assert under.status_code == 401, under.text[:300]
    over = Body(20 * MB)
    refused = httpx.post(url, content=over, headers={**multipart, "Content-Length": str(over.total)}, timeout=60)
    assert_too_large(refused, 8 * MB, "upload fewer files per request")
    assert "each file may be up to 100 MB" in refused.json()["error"]["message"]
    # Elsewhere the small cap still holds, for the same 3 MB.
    elsewhere = httpx.post(
        f"{live_asgi_url}/api/v1/conversations/", content=Body(3 * MB), headers=multipart, timeout=60
    )
    assert_too_large(elsewhere, 2 * MB, "send less")


def test_bodies_under_the_cap_pass_untouched(live_asgi_url: str) -> None:
    response = httpx.post(f"{live_asgi_url}/api/v1/assistants/", json={"name": "x" * MB}, timeout=60)
    assert response.status_code == 401  # reached DRF, which wants a key
    assert httpx.get(f"{live_asgi_url}/healthz", timeout=60).status_code in (200, 503)


# --- an upload through the real server -----------------------------------------------------


def embedding_model(team) -> ModelRegistration:
    # Never called: uploads only store and queue (nothing consumes the queue here).
    provider = provider_create(team=team, name="xi", kind="xinference", endpoint="http://127.0.0.1:9")
    return registration_create(
        provider=provider, kind="embedding", name="MiniLM", provider_model_uid="m", dimensions=384
    )


def knowledge_base(team) -> KnowledgeBase:
    return kb_create(team=team, name="Handbook", embedding_model=embedding_model(team))


def text_file(size: int, seed: str) -> bytes:
    line = f"{seed}: plain text for the storage quota tests.\n".encode()
    return (line * (size // len(line) + 1))[:size]


@pytest.mark.django_db(transaction=True)
def test_a_file_over_the_api_cap_uploads_through_the_server(live_asgi_url: str, team) -> None:
    kb = knowledge_base(team)
    _key, secret = api_key_create(user=member_of(team, Role.MEMBER), team=team, name="upload")
    response = httpx.post(
        f"{live_asgi_url}/api/v1/knowledge-bases/{kb.pk}/documents/",
        files={"file": ("big.txt", text_file(5 * MB, "big"), "text/plain")},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=120,
    )
    assert response.status_code == 201, response.text[:300]
    assert Document.objects.get(knowledge_base=kb).size_bytes == 5 * MB


# --- the team storage quota ----------------------------------------------------------------


def upload(client: APIClient, kb: KnowledgeBase, files: dict[str, bytes]):
    handles = []
    for name, data in files.items():
        handle = io.BytesIO(data)
        handle.name = name
        handles.append(handle)
    return client.post(f"/api/v1/knowledge-bases/{kb.pk}/documents/", {"file": handles}, format="multipart")


@pytest.mark.django_db
def test_an_upload_past_the_team_quota_is_refused_and_other_teams_are_not(team, other_team) -> None:
    team.storage_quota_bytes = 10_000
    team.save()
    kb = knowledge_base(team)
    client = bearer_client(member_of(team, Role.MEMBER), team)
    first = text_file(6_000, "first")
    assert upload(client, kb, {"first.txt": first}).status_code == 201

    refused = upload(client, kb, {"second.txt": text_file(3_000, "second"), "third.txt": text_file(3_000, "third")})
    assert refused.status_code == 413, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "storage_quota_exceeded"
    assert error["message"] == (
        f"The team {team.name!r} stores 5.9 KB of its 9.8 KB storage quota, and this upload needs 5.9 KB more: "
        "delete documents the team no longer needs, or ask the operator to raise the team's storage quota."
    )
    assert Document.objects.filter(team=team).count() == 1  # refused whole: neither file stored

    # What fits still goes in, and a file the knowledge base holds already costs nothing.
    assert upload(client, kb, {"second.txt": text_file(3_000, "second")}).status_code == 201
    again = upload(client, kb, {"copy-of-first.txt": first})
    assert again.status_code == 201
    assert len(again.json()["duplicates"]) == 1

    # Another team, on the platform default, is not held to this team's quota or usage.
    other_kb = knowledge_base(other_team)
    other = bearer_client(member_of(other_team, Role.MEMBER), other_team)
    assert upload(other, other_kb, {"big.txt": text_file(50_000, "other")}).status_code == 201


@pytest.mark.django_db
def test_the_platform_default_applies_and_zero_means_no_limit(team, settings) -> None:
    settings.TEAM_STORAGE_QUOTA_BYTES = 4_000
    kb = knowledge_base(team)
    client = bearer_client(member_of(team, Role.MEMBER), team)
    refused = upload(client, kb, {"a.txt": text_file(5_000, "a")})
    assert refused.status_code == 413
    assert "stores 0 bytes of its 3.9 KB storage quota" in refused.json()["error"]["message"]

    team.storage_quota_bytes = 0  # the team's own setting: unlimited, whatever the default
    team.save()
    assert upload(client, kb, {"a.txt": text_file(5_000, "a")}).status_code == 201
    settings.TEAM_STORAGE_QUOTA_BYTES = 0
    team.storage_quota_bytes = None
    team.save()
    assert upload(client, kb, {"b.txt": text_file(50_000, "b")}).status_code == 201
