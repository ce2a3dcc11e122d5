"""Answers streamed over Server-Sent Events from an async view, end to end async: each token is
written as the model emits it. Events: `sources`, `token`, `usage`, `error`, `done`. A client that
disconnects cancels the view, which closes the upstream stream (the model stops generating) and
saves the partial answer as `stopped`; so does POST .../stop/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.http import StreamingHttpResponse

from chat.models import MessageStatus
from chat.services import PreparedTurn, turn_finish
from models_registry.langchain_models import chat_model_for

STOP_KEY = "chat:stop:{message_id}"
STOP_CHECK_EVERY_S = 0.25


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def request_stop(message_id: int) -> None:
    cache.set(STOP_KEY.format(message_id=message_id), "1", timeout=600)


async def _stop_requested(message_id: int) -> bool:
    return bool(await cache.aget(STOP_KEY.format(message_id=message_id)))


Event = tuple[str, dict[str, Any]]


async def answer_events(turn: PreparedTurn) -> AsyncIterator[bytes]:
    """The answer as Server-Sent Events. Closing this generator closes the inner one at once, so a
    dropped client still stops the model."""
    async with contextlib.aclosing(answer_event_items(turn)) as items:
        async for event, data in items:
            yield sse(event, data)


async def answer_event_items(turn: PreparedTurn) -> AsyncGenerator[Event, None]:
    """The answer as (event, data) pairs, for SSE and for the team rooms' WebSockets."""
    started = time.perf_counter()
    yield "sources", {"message_id": turn.assistant_message_id, "sources": turn.sources}
    if turn.canned_answer is not None:
        yield "token", {"text": turn.canned_answer}
        message = await sync_to_async(turn_finish)(
            turn=turn, content=turn.canned_answer, status=MessageStatus.COMPLETE, total_ms=0
        )
        yield "done", {"message_id": message.pk, "status": message.status}
        return
    parts: list[str] = []
    first_token_ms: int | None = None
    usage: dict[str, int] = {}
    status = MessageStatus.COMPLETE
    error = ""
    last_stop_check = 0.0
    model = chat_model_for(turn.llm)
    try:
        upstream = cast(AsyncGenerator[Any, None], model.astream(turn.prompt, max_tokens=turn.max_tokens))
        async with contextlib.aclosing(upstream) as stream:
            async for chunk in stream:
                text = str(chunk.content)
                if getattr(chunk, "usage_metadata", None):
                    usage = dict(chunk.usage_metadata)
                if not text:
                    continue
                if first_token_ms is None:
                    first_token_ms = int((time.perf_counter() - started) * 1000)
                parts.append(text)
                yield "token", {"text": text}
                if time.perf_counter() - last_stop_check > STOP_CHECK_EVERY_S:
                    last_stop_check = time.perf_counter()
                    if await _stop_requested(turn.assistant_message_id):
                        status = MessageStatus.STOPPED
                        break
    except (asyncio.CancelledError, GeneratorExit):
        # The client went away (the server cancels the view, or closes this generator): the
        # aclosing block above has closed the upstream stream, so the model stops generating.
        await asyncio.shield(_finish(turn, parts, MessageStatus.STOPPED, "", first_token_ms, started, usage))
        raise
    except Exception as exc:  # the model server failed mid-answer: tell the client, keep what came
        status = MessageStatus.FAILED
        error = f"the model {turn.llm.name} failed: {type(exc).__name__}: {exc}"
        yield "error", {"message": error, "code": "model_unavailable"}
    message = await _finish(turn, parts, status, error, first_token_ms, started, usage)
    usage_event = {
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "time_to_first_token_ms": message.time_to_first_token_ms,
        "total_ms": message.total_ms,
    }
    yield "usage", usage_event
    yield "done", {"message_id": message.pk, "status": message.status, "citations": message.citations}


async def _finish(
    turn: PreparedTurn,
    parts: list[str],
    status: str,
    error: str,
    first_token_ms: int | None,
    started: float,
    usage: dict[str, int],
) -> Any:
    return await sync_to_async(turn_finish)(
        turn=turn,
        content="".join(parts),
        status=status,
        error=error,
        time_to_first_token_ms=first_token_ms,
        total_ms=int((time.perf_counter() - started) * 1000),
        completion_tokens=usage.get("output_tokens"),
        prompt_tokens=usage.get("input_tokens"),
    )


def event_stream_response(turn: PreparedTurn) -> StreamingHttpResponse:
    response = StreamingHttpResponse(answer_events(turn), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
