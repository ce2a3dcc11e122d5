"""The OpenAI-compatible /v1 API, driven by the official `openai` client and LangChain's
ChatOpenAI over real HTTP (uvicorn) against the real SmolLM2 and MiniLM on Xinference."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from accounts.models import Role, Scope, Usage
from accounts.services import api_key_create, api_key_revoke
from chat.services import assistant_create
from kb.models import Chunk
from models_registry.langchain_models import embeddings_for
from models_registry.services import provider_create, registration_create
from realservices.xinference import free_port
from tests.conftest import member_of
from tests.test_chat import chat_setup  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def v1(chat_setup, live_asgi_url):  # noqa: F811
    _key, secret = api_key_create(user=chat_setup["user"], team=chat_setup["team"], name="openai")
    return {**chat_setup, "secret": secret, "base_url": f"{live_asgi_url}/v1"}


def client_for(v1: dict, secret: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=v1["base_url"], api_key=secret or v1["secret"], max_retries=0, timeout=120)


def test_models_are_the_teams_assistants(v1) -> None:
    client = client_for(v1)
    assert sorted(model.id for model in client.models.list()) == ["Handbook bot", "Plain"]
    assert client.models.retrieve("Plain").owned_by == v1["team"].slug
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"


def test_chat_completion_plain_answers_and_meters_usage(v1) -> None:
    completion = client_for(v1).chat.completions.create(
        model="Plain", messages=[{"role": "user", "content": "Say hello in one short sentence."}], max_tokens=24
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    usage = Usage.objects.get(team=v1["team"], user=v1["user"])
    assert usage.requests == 1
    assert usage.tokens_out == completion.usage.completion_tokens


def test_chat_completion_streams_with_sources_from_the_knowledge_base(v1) -> None:
    stream = client_for(v1).chat.completions.create(
        model="Handbook bot",
        messages=[{"role": "user", "content": "What is the project's codename?"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=48,
    )
    chunks = list(stream)
    sources = (chunks[0].model_extra or {})["sources"]
    assert sources, "the knowledge-base assistant retrieved nothing"
    chunk_ids = set(Chunk.objects.filter(document__knowledge_base=v1["kb"]).values_list("pk", flat=True))
    assert {source["chunk_id"] for source in sources} <= chunk_ids
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.strip()
    content_chunks = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(content_chunks) > 1, "the answer came in one piece, not streamed"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] in ("stop", "length")


def test_langchain_chat_openai_invokes_and_streams(v1) -> None:
    model = ChatOpenAI(
        base_url=v1["base_url"], api_key=v1["secret"], model="Plain", max_completion_tokens=24, max_retries=0
    )
    answer = model.invoke([("system", "Answer briefly."), ("user", "Name a colour.")])
    assert str(answer.content).strip()
    pieces = [str(chunk.content) for chunk in model.stream("Count from one to five.")]
    assert len([piece for piece in pieces if piece]) > 1
    assert "".join(pieces).strip()


def test_history_is_kept_and_the_last_message_must_be_the_users(v1) -> None:
    client = client_for(v1)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="Plain", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        )
    assert "last message" in refused.value.message
    answer = client.chat.completions.create(
        model="Plain",
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
            {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
        ],
        max_tokens=16,
    )
    assert answer.choices[0].message.content


def test_embeddings_match_the_teams_embedding_model(v1) -> None:
    client = client_for(v1)
    response = client.embeddings.create(model="MiniLM", input=["团队知识库", "team knowledge base"])
    assert [item.index for item in response.data] == [0, 1]
    vector = response.data[1].embedding
    assert len(vector) == 384
    direct = embeddings_for(v1["kb"].embedding_model).embed_query("team knowledge base")
    cosine = sum(a * b for a, b in zip(vector, direct, strict=True)) / (
        math.sqrt(sum(a * a for a in vector)) * math.sqrt(sum(b * b for b in direct))
    )
    assert cosine > 0.999
    floats = client.embeddings.create(model="MiniLM", input="hello", encoding_format="float")
    assert len(floats.data[0].embedding) == 384
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model="MiniLM", input=[[1, 2, 3]])
    assert "token arrays" in tokens.value.message


def test_bad_requests_answer_4xx_in_openais_error_shape(v1) -> None:
    url = f"{v1['base_url']}/chat/completions"
    headers = {"Authorization": f"Bearer {v1['secret']}", "Content-Type": "application/json"}
    cases = [
        (b"{not json", 400),
        (json.dumps({"model": "Plain", "messages": []}).encode(), 400),
        (json.dumps({"model": "Plain", "messages": "hi"}).encode(), 400),
        (json.dumps({"model": "Plain", "messages": [{"role": "user", "content": "x"}], "bogus": 1}).encode(), 400),
        (json.dumps({"model": "Plain", "messages": [{"role": "user", "content": "x"}], "functions": []}).encode(), 400),
        (
            json.dumps(
                {"model": "Plain", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "x"}]}
            ).encode(),
            400,
        ),
        (json.dumps({"model": "Plain", "messages": [{"role": "user", "content": "x"}], "n": 3}).encode(), 400),
        (json.dumps({"model": "Plain", "messages": [{"role": "user", "content": {"a": 1}}]}).encode(), 400),
        (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 404),
        (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}], "stream": True}).encode(), 404),
    ]
    for body, expected in cases:
        response = httpx.post(url, content=body, headers=headers, timeout=60)
        assert response.status_code == expected, (body, response.text)
        error = response.json()["error"]
        assert error["message"], error
        assert error["type"] == "invalid_request_error", error


def test_keys_anonymous_revoked_without_chat_scope_or_of_another_team_are_refused(v1, other_team) -> None:
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        client_for(v1, secret="cp_not-a-key").models.list()
    response = httpx.get(f"{v1['base_url']}/models", timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    revoked_key, revoked = api_key_create(user=v1["user"], team=v1["team"], name="gone")
    api_key_revoke(key=revoked_key)
    with pytest.raises(openai.AuthenticationError):
        client_for(v1, secret=revoked).chat.completions.create(model="Plain", messages=messages, stream=True)
    _key, read_only = api_key_create(user=v1["user"], team=v1["team"], name="ro", scopes=[Scope.READ])
    with pytest.raises(openai.PermissionDeniedError):
        client_for(v1, secret=read_only).chat.completions.create(model="Plain", messages=messages)
    stranger = member_of(other_team, Role.OWNER)
    _key, foreign = api_key_create(user=stranger, team=other_team, name="foreign")
    assert client_for(v1, secret=foreign).models.list().data == []
    with pytest.raises(openai.NotFoundError):
        client_for(v1, secret=foreign).chat.completions.create(model="Plain", messages=messages)
    with pytest.raises(openai.NotFoundError):
        client_for(v1, secret=foreign).embeddings.create(model="MiniLM", input="x")


def test_a_model_that_is_down_answers_503_streaming_or_not_and_meters_nothing(v1) -> None:
    dead = provider_create(
        team=v1["team"], name="down", kind="openai_compatible", endpoint=f"http://127.0.0.1:{free_port()}"
    )
    llm = registration_create(provider=dead, kind="llm", name="Gone", provider_model_uid="gone")
    assistant_create(team=v1["team"], name="Broken", llm=llm)
    client = client_for(v1)
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    for stream in (False, True):
        # The streamed call is refused before the stream starts: the model is checked first.
        with pytest.raises(openai.InternalServerError) as down:
            client.chat.completions.create(model="Broken", messages=messages, stream=stream)
        assert down.value.status_code == 503
        assert "did not answer" in down.value.message
    assert not Usage.objects.filter(team=v1["team"], model_name="Gone").exists()
