"""A model server that accepts the request and then goes silent: the answer fails after
MODEL_STREAM_IDLE_TIMEOUT_S with a clear error event and a failed message, instead of hanging."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from accounts.models import Role
from chat.models import Message, MessageStatus
from chat.services import assistant_create, conversation_create, turn_prepare
from chat.streaming import answer_events
from models_registry.services import provider_create, registration_create
from tests.conftest import member_of

pytestmark = pytest.mark.django_db(transaction=True)


class SilentStreamHandler(BaseHTTPRequestHandler):
    """Answers like an OpenAI-compatible stream (headers and one keep-alive comment), then sends
    nothing: a model stuck behind other requests."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b": queued\n\n")
        self.wfile.flush()
        time.sleep(30)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def silent_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SilentStreamHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_silent_model_fails_the_stream_after_the_idle_timeout(team, silent_server, settings) -> None:
    settings.MODEL_STREAM_IDLE_TIMEOUT_S = 2.0
    user = member_of(team, Role.MEMBER)
    provider = provider_create(team=team, name="silent", kind="openai_compatible", endpoint=silent_server)
    llm = registration_create(provider=provider, kind="llm", name="Silent", provider_model_uid="silent")
    conversation = conversation_create(team=team, owner=user, assistant=assistant_create(team=team, name="A", llm=llm))
    turn = turn_prepare(conversation=conversation, author=user, content="Hello?")

    async def collect() -> list[bytes]:
        events = [event async for event in answer_events(turn)]
        await sync_to_async(connections.close_all)()  # the worker thread's connection, not left behind
        return events

    started = time.monotonic()
    events = asyncio.run(collect())
    elapsed = time.monotonic() - started
    errors = [event for event in events if event.startswith(b"event: error")]
    assert len(errors) == 1
    assert b"StreamChunkTimeoutError" in errors[0]
    assert elapsed < 20  # the 2 s idle limit applied, not the 120 s request timeout
    message = Message.objects.get(pk=turn.assistant_message_id)
    assert message.status == MessageStatus.FAILED
    assert "Silent" in message.error
