"""Chat against the real SmolLM2 and MiniLM on Xinference, with a real Celery worker for summaries
and titles: streaming over SSE, citations, summary memory, stop on disconnect, quotas, isolation."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db.models import Sum
from django.test import AsyncClient
from langchain_core.messages import SystemMessage

from accounts.models import Quota, Role, Usage
from accounts.services import api_key_create
from chat.models import Assistant, Conversation, Message
from chat.services import assistant_create, conversation_create, turn_prepare
from kb.models import Chunk, Document
from kb.services import kb_create
from models_registry.services import registration_launch
from realservices.offline_models import offline_models_on
from realservices.xinference import XinferenceServer, free_port
from tests.conftest import bearer_client, member_of
from tests.documents import FACT_EN, samples

pytestmark = pytest.mark.django_db(transaction=True)


def wait_until(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


@pytest.fixture
def chat_setup(team, xinference: XinferenceServer, celery_worker_process: str):
    llm, embedding = offline_models_on(team, xinference.endpoint)
    registration_launch(registration=llm)
    registration_launch(registration=embedding)
    kb = kb_create(team=team, name="Handbook", embedding_model=embedding)
    user = member_of(team, Role.MEMBER)
    client = bearer_client(user, team)
    upload = io.BytesIO(samples()["notes.txt"])
    upload.name = "notes.txt"
    client.post(f"/api/v1/knowledge-bases/{kb.pk}/documents/", {"file": [upload]}, format="multipart")
    wait_until(lambda: Document.objects.filter(knowledge_base=kb, status="ready").exists())
    kb_assistant = assistant_create(team=team, name="Handbook bot", llm=llm, knowledge_bases=[kb], max_answer_tokens=96)
    plain_assistant = assistant_create(team=team, name="Plain", llm=llm, max_answer_tokens=160)
    return {
        "team": team,
        "user": user,
        "client": client,
        "kb": kb,
        "llm": llm,
        "kb_assistant": kb_assistant,
        "plain_assistant": plain_assistant,
    }


def new_conversation(setup: dict[str, Any], assistant: Assistant) -> Conversation:
    response = setup["client"].post("/api/v1/conversations/", {"assistant": assistant.pk}, format="json")
    assert response.status_code == 201, response.json()
    return Conversation.objects.get(pk=response.json()["id"])


def key_for(user, team) -> str:
    return api_key_create(user=user, team=team, name="sse")[1]


async def _stream(secret: str, conversation_id: int, body: dict[str, Any]) -> list[tuple]:
    response = await AsyncClient().post(
        f"/api/v1/conversations/{conversation_id}/messages/",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    if response.status_code != 200:
        return [("http", response.status_code, json.loads(response.content))]
    assert response["Content-Type"] == "text/event-stream"
    events: list[tuple] = []
    buffer = ""
    async for chunk in response.streaming_content:  # type: ignore[attr-defined]
        buffer += chunk.decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((lines["event"], time.monotonic(), json.loads(lines["data"])))
    return events


def stream(secret: str, conversation_id: int, content: str) -> list[tuple]:
    """The SSE events of one streamed turn, read to the end (event, arrival time, data)."""
    return async_to_sync(_stream)(secret, conversation_id, {"content": content, "stream": True})


def test_tokens_stream_incrementally_and_the_answer_is_saved(chat_setup) -> None:
    conversation = new_conversation(chat_setup, chat_setup["plain_assistant"])
    events = stream(key_for(chat_setup["user"], chat_setup["team"]), conversation.pk, "Tell me a story about a cat.")
    assert events[0][0] != "http", events
    kinds = [event[0] for event in events]
    assert kinds[0] == "sources"
    assert kinds[-2:] == ["usage", "done"]
    tokens = [event for event in events if event[0] == "token"]
    assert len(tokens) > 5
    # Incremental: the first token was delivered before the last one was generated.
    assert tokens[0][1] < tokens[-1][1]
    message = Message.objects.get(pk=events[-1][2]["message_id"])
    assert message.status == "complete"
    assert message.content == "".join(event[2]["text"] for event in tokens)
    assert message.time_to_first_token_ms is not None
    assert (message.total_ms or 0) >= message.time_to_first_token_ms
    assert message.completion_tokens > 0
    assert Usage.objects.get(team=chat_setup["team"], user=chat_setup["user"]).tokens_out >= message.completion_tokens
    wait_until(lambda: Conversation.objects.get(pk=conversation.pk).title != "")


def test_knowledge_base_answers_cite_real_chunks_of_that_knowledge_base(chat_setup) -> None:
    conversation = new_conversation(chat_setup, chat_setup["kb_assistant"])
    events = stream(
        key_for(chat_setup["user"], chat_setup["team"]),
        conversation.pk,
        "How many cats does the lighthouse keeper of Vardø feed?",
    )
    sources = events[0][2]["sources"]
    assert sources
    chunk_ids = {source["chunk_id"] for source in sources}
    assert (
        set(Chunk.objects.filter(pk__in=chunk_ids, knowledge_base=chat_setup["kb"]).values_list("pk", flat=True))
        == chunk_ids
    )
    assert any(FACT_EN[:40] in source["snippet"] for source in sources)
    assert [source["index"] for source in sources] == list(range(1, len(sources) + 1))
    message = Message.objects.get(pk=events[-1][2]["message_id"])
    assert [citation["chunk_id"] for citation in message.citations] == [source["chunk_id"] for source in sources]
    assert message.retrieval_query


def test_when_nothing_relevant_is_found_it_says_so(chat_setup) -> None:
    assistant = chat_setup["kb_assistant"]
    assistant.score_threshold = 0.999
    assistant.save()
    conversation = new_conversation(chat_setup, assistant)
    events = stream(key_for(chat_setup["user"], chat_setup["team"]), conversation.pk, "Quantum chromodynamics?")
    assert events[0][2]["sources"] == []
    assert "found nothing relevant" in "".join(event[2]["text"] for event in events if event[0] == "token")


def test_a_dropped_client_stops_the_answer_and_keeps_what_was_written(chat_setup, live_asgi_url) -> None:
    """A real client over a real connection (uvicorn) reads three tokens and hangs up: the server
    sees the disconnect, the model's stream is closed and the answer so far is kept as stopped."""
    conversation = new_conversation(chat_setup, chat_setup["plain_assistant"])
    secret = key_for(chat_setup["user"], chat_setup["team"])
    message_id, tokens = None, 0
    with (
        httpx.Client(base_url=live_asgi_url, timeout=120) as client,
        client.stream(
            "POST",
            f"/api/v1/conversations/{conversation.pk}/messages/",
            json={"content": "Write a very long essay about the sea.", "stream": True},
            headers={"Authorization": f"Bearer {secret}"},
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                message_id = message_id or data.get("message_id")
                tokens += "text" in data
            if tokens >= 3:
                break  # leaving the blocks closes the connection
    assert message_id is not None
    wait_until(lambda: Message.objects.get(pk=message_id).status != "streaming", timeout=30)
    message = Message.objects.get(pk=message_id)
    assert message.status == "stopped"
    assert message.content
    assert message.completion_tokens < chat_setup["plain_assistant"].max_answer_tokens


def test_summary_memory_folds_old_turns_and_reaches_the_next_prompt(chat_setup) -> None:
    assistant = chat_setup["plain_assistant"]
    assistant.recent_tokens = 60
    assistant.max_answer_tokens = 40
    assistant.summary_tokens = 60  # a short summary is still a summary; the small CPU model writes it slowly
    assistant.save()
    conversation = new_conversation(chat_setup, assistant)
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    for question in ["My name is Ingrid and I keep bees in Bergen.", "I have twelve hives.", "What should I plant?"]:
        response = chat_setup["client"].post(url, {"content": question}, format="json")
        assert response.status_code == 201, response.json()
    wait_until(lambda: Conversation.objects.get(pk=conversation.pk).summarized_up_to > 0)
    conversation.refresh_from_db()
    assert conversation.summary
    detail = chat_setup["client"].get(f"/api/v1/conversations/{conversation.pk}/").json()
    assert detail["summary"] == conversation.summary
    turn = turn_prepare(conversation=conversation, author=chat_setup["user"], content="Remind me of my name.")
    system_texts = [message.content for message in turn.prompt if isinstance(message, SystemMessage)]
    assert any(conversation.summary in text for text in system_texts)
    # Folded before turn_prepare ran (the marker only grows); a folded text that another, later
    # message repeats word for word (a small model does repeat itself) proves nothing either way.
    messages = Message.objects.filter(conversation=conversation)
    later_texts = {message.content for message in messages.filter(pk__gt=conversation.summarized_up_to)}
    folded = [m for m in messages.filter(pk__lte=conversation.summarized_up_to) if m.content not in later_texts]
    assert folded
    prompt_texts = {str(message.content) for message in turn.prompt}
    assert not any(message.content in prompt_texts for message in folded)


def test_quota_blocks_with_429_naming_the_quota_and_the_reset(chat_setup) -> None:
    Quota.objects.create(team=chat_setup["team"], user=None, daily_tokens=10)
    Usage.objects.create(
        team=chat_setup["team"],
        user=chat_setup["user"],
        model_name="x",
        day=time.strftime("%Y-%m-%d", time.gmtime()),
        tokens_in=8,
        tokens_out=5,
    )
    conversation = new_conversation(chat_setup, chat_setup["plain_assistant"])
    response = chat_setup["client"].post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hi"}, format="json"
    )
    assert response.status_code == 429
    assert "team's daily quota of 10 tokens" in response.json()["error"]["message"]
    assert "resets at" in response.json()["error"]["message"]
    events = stream(key_for(chat_setup["user"], chat_setup["team"]), conversation.pk, "hi")
    assert events[0][:2] == ("http", 429)
    assert not Message.objects.filter(conversation=conversation, role="assistant").exists()


def test_the_model_down_is_a_503_or_an_error_event_and_nothing_half_saved(team) -> None:
    llm, _embedding = offline_models_on(team, f"http://127.0.0.1:{free_port()}")
    user = member_of(team, Role.MEMBER)
    conversation = conversation_create(
        team=team, owner=user, assistant=assistant_create(team=team, name="down", llm=llm)
    )
    response = bearer_client(user, team).post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hello"}, format="json"
    )
    assert response.status_code == 503
    assert "did not answer" in response.json()["error"]["message"]
    assert not Message.objects.filter(conversation=conversation, role="assistant").exists()
    events = stream(key_for(user, team), conversation.pk, "hello")
    assert "error" in [event[0] for event in events]
    assert Message.objects.get(pk=events[-1][2]["message_id"]).status == "failed"


def test_regenerate_feedback_and_an_over_long_message(chat_setup) -> None:
    client = chat_setup["client"]
    assistant = chat_setup["plain_assistant"]
    assistant.max_answer_tokens = 24  # what is tested is the long prompt and the replacement, not the answer
    assistant.save()
    conversation = new_conversation(chat_setup, assistant)
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    first = client.post(url, {"content": "Say hello. " * 2800}, format="json")
    assert first.status_code == 201, first.json()
    again = client.post(f"/api/v1/conversations/{conversation.pk}/regenerate/", format="json")
    assert again.status_code == 201
    answers = Message.objects.filter(conversation=conversation, role="assistant")
    assert list(answers.values_list("pk", flat=True)) == [again.json()["id"]]
    liked = client.post(
        f"/api/v1/messages/{again.json()['id']}/feedback/", {"value": 1, "comment": "nice"}, format="json"
    )
    assert liked.status_code == 200
    assert (liked.json()["feedback"], liked.json()["feedback_comment"]) == (1, "nice")
    assert client.post(url, {"content": ""}, format="json").status_code == 400
    assert client.post(url, {"content": "x" * 40_000}, format="json").status_code == 400


def test_file_chat_searches_files_dropped_into_the_conversation(chat_setup) -> None:
    from models_registry.services import team_defaults_set

    team_defaults_set(team=chat_setup["team"], embedding=chat_setup["kb"].embedding_model)
    conversation = new_conversation(chat_setup, chat_setup["plain_assistant"])
    upload = io.BytesIO(b"The secret launch code of the harbour crane is PELICAN-42.")
    upload.name = "crane.txt"
    response = chat_setup["client"].post(
        f"/api/v1/conversations/{conversation.pk}/files/", {"file": [upload]}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    conversation.refresh_from_db()
    files_kb = conversation.file_knowledge_base
    assert files_kb is not None
    wait_until(lambda: Document.objects.filter(knowledge_base=files_kb, status="ready").exists())
    events = stream(
        key_for(chat_setup["user"], chat_setup["team"]), conversation.pk, "What is the crane's launch code?"
    )
    assert any("PELICAN-42" in source["snippet"] for source in events[0][2]["sources"])
    assert chat_setup["client"].delete(f"/api/v1/conversations/{conversation.pk}/").status_code == 204
    assert not type(files_kb).objects.filter(pk=files_kb.pk).exists()


def test_other_teams_reach_nothing(chat_setup, other_team, outsider) -> None:
    conversation = new_conversation(chat_setup, chat_setup["kb_assistant"])
    answer = (
        chat_setup["client"]
        .post(f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hi"}, format="json")
        .json()
    )
    stranger = bearer_client(outsider, other_team)
    assert stranger.get("/api/v1/conversations/").json()["results"] == []
    assert stranger.get("/api/v1/assistants/").json()["results"] == []
    for method, path, body in [
        ("get", f"/api/v1/conversations/{conversation.pk}/", None),
        ("delete", f"/api/v1/conversations/{conversation.pk}/", None),
        ("get", f"/api/v1/conversations/{conversation.pk}/messages/", None),
        ("post", f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hi"}),
        ("post", f"/api/v1/conversations/{conversation.pk}/regenerate/", None),
        ("post", f"/api/v1/conversations/{conversation.pk}/stop/", None),
        ("post", f"/api/v1/messages/{answer['id']}/feedback/", {"value": -1}),
        ("get", f"/api/v1/assistants/{chat_setup['kb_assistant'].pk}/", None),
    ]:
        assert getattr(stranger, method)(path, body, format="json").status_code == 404, (method, path)
    events = stream(key_for(outsider, other_team), conversation.pk, "hi")
    assert events[0][:2] == ("http", 404)
    own = stranger.post(
        "/api/v1/conversations/", {"assistant": chat_setup["kb_assistant"].pk, "team": other_team.pk}, format="json"
    )
    assert own.status_code == 400
    # A teammate who is not the owner does not see a personal conversation either.
    teammate = bearer_client(member_of(chat_setup["team"], Role.MEMBER), chat_setup["team"])
    assert teammate.get(f"/api/v1/conversations/{conversation.pk}/").status_code == 404


def test_every_model_call_is_metered_to_the_team(chat_setup) -> None:
    """Answers and the title are all model calls on the team's LLM: each is a request in the
    team's usage (before, only answers were). A follow-up costs no extra call: it is searched
    with the previous question (chat.followups)."""
    conversation = new_conversation(chat_setup, chat_setup["kb_assistant"])
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    for question in ["Where is the vault key kept?", "And who may open it?"]:
        response = chat_setup["client"].post(url, {"content": question}, format="json")
        assert response.status_code == 201, response.json()
    wait_until(lambda: Conversation.objects.get(pk=conversation.pk).title != "")
    assert Message.objects.filter(conversation=conversation, role="assistant").count() == 2
    assert Message.objects.filter(conversation=conversation, role="assistant").exclude(retrieval_query="").count() == 2
    # The title's usage is recorded before the title is written.
    usage = Usage.objects.filter(team=chat_setup["team"]).aggregate(n=Sum("requests"), tokens=Sum("tokens_in"))
    assert usage["n"] >= 3  # two answers, one title
    follow_up = Message.objects.filter(conversation=conversation, role="assistant").order_by("pk").last()
    assert follow_up is not None
    assert follow_up.retrieval_query == "Where is the vault key kept? And who may open it?"
    assert usage["tokens"] > 0


def test_a_provider_address_the_guard_refuses_is_a_400_that_says_so(team, settings) -> None:
    """The model's endpoint now resolves to an address the server may not reach: that is the
    configuration's fault and stays so, so the turn answers 400 naming it (not 503 'try again'),
    on the plain and the streamed path alike, and nothing is half-saved."""
    llm, _embedding = offline_models_on(team, f"http://127.0.0.1:{free_port()}")
    settings.OUTBOUND_ALLOWED_NETWORKS = []  # loopback is refused at the call
    assistant = assistant_create(team=team, name="Guarded", llm=llm)
    user = member_of(team, Role.MEMBER)
    conversation = conversation_create(team=team, owner=user, assistant=assistant)
    response = bearer_client(user, team).post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hi"}, format="json"
    )
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "unsafe_url"
    assert not Message.objects.filter(conversation=conversation, role="assistant").exists()
    events = stream(key_for(user, team), conversation.pk, "hi again")
    errors = [event[2] for event in events if event[0] == "error"]
    assert errors
    assert errors[0]["code"] == "unsafe_url"


def test_a_key_without_the_chat_scope_cannot_stream_a_turn(team) -> None:
    """The streaming entries answer outside DRF but through the REST views' own permission
    classes: a read-only key is refused before any turn is prepared."""
    llm, _embedding = offline_models_on(team, f"http://127.0.0.1:{free_port()}")
    user = member_of(team, Role.MEMBER)
    conversation = conversation_create(team=team, owner=user, assistant=assistant_create(team=team, name="A", llm=llm))
    read_only = api_key_create(user=user, team=team, name="ro", scopes=["read"])[1]
    events = stream(read_only, conversation.pk, "hi")
    assert events[0][:2] == ("http", 403)
    assert "scope" in events[0][2]["error"]["message"]
    assert not Message.objects.filter(conversation=conversation).exists()
