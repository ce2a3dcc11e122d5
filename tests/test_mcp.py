"""The MCP server at /mcp/, driven by the `mcp` package's own streamable-HTTP client over real
HTTP (uvicorn) against the real SmolLM2 and MiniLM on Xinference."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp.client import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from accounts.models import ApiKeyUse, Role, Scope, Usage
from accounts.services import api_key_create, api_key_revoke
from chat.services import assistant_create
from kb.models import Chunk
from kb.services import kb_create
from models_registry.services import registration_create
from realservices.offline_models import offline_embedding_on
from tests.conftest import member_of
from tests.test_chat import chat_setup  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)

TOOLS = {"list_knowledge_bases", "search_knowledge_base", "ask_assistant"}


@pytest.fixture
def mcp_url(live_asgi_url: str) -> str:
    return f"{live_asgi_url}/mcp/"


@contextlib.asynccontextmanager
async def mcp_session(url: str, secret: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {secret}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def with_session(url: str, secret: str, calls: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """Run `calls` in an MCP session from this (synchronous) test; the ORM stays out of the loop."""

    async def run() -> Any:
        async with mcp_session(url, secret) as session:
            return await calls(session)

    return anyio.run(run)


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result
    return " ".join(getattr(block, "text", "") for block in result.content)


def test_a_client_lists_searches_and_asks_as_the_rest_and_openai_apis_do(chat_setup, mcp_url) -> None:  # noqa: F811
    team, user, kb = chat_setup["team"], chat_setup["user"], chat_setup["kb"]
    key, secret = api_key_create(user=user, team=team, name="mcp")
    question = "How many cats does the lighthouse keeper of Vardø feed?"

    async def calls(session: ClientSession) -> dict[str, Any]:
        return {
            "tools": await session.list_tools(),
            "list": await session.call_tool("list_knowledge_bases", {}),
            "search": await session.call_tool(
                "search_knowledge_base", {"knowledge_base_id": kb.pk, "query": "lighthouse keeper cats", "top_k": 3}
            ),
            "too_many": await session.call_tool(
                "search_knowledge_base", {"knowledge_base_id": kb.pk, "query": "cats", "top_k": 500}
            ),
            "ask": await session.call_tool(
                "ask_assistant", {"assistant": "Handbook bot", "question": question, "max_tokens": 16}
            ),
        }

    got = with_session(mcp_url, secret, calls)

    assert {tool.name for tool in got["tools"].tools} == TOOLS
    assert got["list"].structured_content == {
        "knowledge_bases": [{"id": kb.pk, "name": "Handbook", "description": kb.description, "document_count": 1}]
    }

    search = got["search"]
    assert not search.is_error, search
    results = search.structured_content["results"]
    assert results
    assert results[0]["document_name"] == "notes.txt"
    assert "lighthouse keeper" in results[0]["text"]
    rest = chat_setup["client"].post(
        f"/api/v1/knowledge-bases/{kb.pk}/search/", {"query": "lighthouse keeper cats", "top_k": 3}, format="json"
    )
    assert rest.status_code == 200, rest.json()
    assert results == rest.json()["results"]  # the same service, the same shape
    assert json.loads(search.content[0].text) == search.structured_content  # for clients that read text only
    assert "less than or equal to 100" in error_text(got["too_many"])

    ask = got["ask"]
    assert not ask.is_error, ask
    answer = ask.structured_content
    assert answer["assistant"] == "Handbook bot"
    assert answer["answer"].strip()
    assert answer["finish_reason"] in ("stop", "length")
    chunk_ids = set(Chunk.objects.filter(document__knowledge_base=kb).values_list("pk", flat=True))
    assert answer["sources"]
    assert {source["chunk_id"] for source in answer["sources"]} <= chunk_ids
    assert all("cited" in source for source in answer["sources"])
    assert answer["usage"]["completion_tokens"] > 0
    usage = Usage.objects.get(team=team, user=user)  # metered as /v1 meters it
    assert (usage.requests, usage.tokens_out) == (1, answer["usage"]["completion_tokens"])
    # Every request the key made is in the audit log, as for the REST API.
    uses = ApiKeyUse.objects.filter(key=key)
    assert uses.count() >= 6
    assert set(uses.values_list("path", flat=True)) == {"/mcp/"}


def test_no_key_a_bad_key_other_teams_objects_and_missing_scopes_are_refused(
    chat_setup,  # noqa: F811
    mcp_url,
    other_team,
    xinference,
) -> None:
    team, user, kb = chat_setup["team"], chat_setup["user"], chat_setup["kb"]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    revoked_key, revoked = api_key_create(user=user, team=team, name="gone")
    api_key_revoke(key=revoked_key)
    for authorization in (None, "Bearer cp_not-a-key", f"Bearer {revoked}", "Basic dXNlcjpwYXNz"):
        headers = {"Accept": "application/json, text/event-stream"}
        if authorization:
            headers["Authorization"] = authorization
        response = httpx.post(mcp_url, json=initialize, headers=headers, timeout=30)
        assert response.status_code == 401, (authorization, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["message"], response.json()

    # Team B: a knowledge base and an assistant of its own.
    stranger = member_of(other_team, Role.OWNER)
    embedding = offline_embedding_on(other_team, xinference.endpoint)
    their_kb = kb_create(team=other_team, name="Their notes", embedding_model=embedding)
    their_llm = registration_create(provider=embedding.provider, kind="llm", name="Their LLM", provider_model_uid="x")
    their_assistant = assistant_create(team=other_team, name="Their bot", llm=their_llm)
    _key, theirs = api_key_create(user=stranger, team=other_team, name="mcp")
    _key, ours = api_key_create(user=user, team=team, name="mcp")
    _key, read_only = api_key_create(user=user, team=team, name="ro", scopes=[Scope.READ])
    missing_kb = their_kb.pk + 1000

    async def as_them(session: ClientSession) -> dict[str, Any]:
        return {
            "list": await session.call_tool("list_knowledge_bases", {}),
            "search": await session.call_tool("search_knowledge_base", {"knowledge_base_id": kb.pk, "query": "cats"}),
            "ask": await session.call_tool("ask_assistant", {"assistant": "Handbook bot", "question": "hi"}),
        }

    async def as_us(session: ClientSession) -> dict[str, Any]:
        return {
            "their_kb": await session.call_tool(
                "search_knowledge_base", {"knowledge_base_id": their_kb.pk, "query": "cats"}
            ),
            "missing_kb": await session.call_tool(
                "search_knowledge_base", {"knowledge_base_id": missing_kb, "query": "cats"}
            ),
            "their_bot": await session.call_tool("ask_assistant", {"assistant": "Their bot", "question": "hi"}),
            "no_bot": await session.call_tool("ask_assistant", {"assistant": "No bot", "question": "hi"}),
            "their_bot_id": await session.call_tool(
                "ask_assistant", {"assistant": str(their_assistant.pk), "question": "hi"}
            ),
        }

    async def read_only_asks(session: ClientSession) -> CallToolResult:
        return await session.call_tool("ask_assistant", {"assistant": "Plain", "question": "hi"})

    them = with_session(mcp_url, theirs, as_them)
    us = with_session(mcp_url, ours, as_us)
    unscoped = with_session(mcp_url, read_only, read_only_asks)

    assert them["list"].structured_content == {
        "knowledge_bases": [{"id": their_kb.pk, "name": "Their notes", "description": "", "document_count": 0}]
    }
    assert "no knowledge base" in error_text(them["search"])
    assert "no assistant 'Handbook bot'" in error_text(them["ask"])
    # Another team's knowledge base and assistant answer exactly as ones that do not exist.
    assert "no knowledge base" in error_text(us["their_kb"])
    assert error_text(us["their_kb"]).replace(str(their_kb.pk), "N") == error_text(us["missing_kb"]).replace(
        str(missing_kb), "N"
    )
    assert error_text(us["their_bot"]).replace("Their bot", "N") == error_text(us["no_bot"]).replace("No bot", "N")
    assert "no assistant" in error_text(us["their_bot"])
    assert f"no assistant '{their_assistant.pk}'" in error_text(us["their_bot_id"])
    assert "`chat` scope" in error_text(unscoped)
    assert not Usage.objects.filter(team=team).exists()
