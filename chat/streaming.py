"""A conversation's answer streamed from an async view, end to end async: the answering engine
(chat.engine) formatted as Server-Sent Events, and as (event, data) pairs for the team rooms'
WebSockets. Events: `sources`, `token`, `usage`, `error`, `done`. A client that disconnects
cancels the view, which closes the upstream stream (the model stops generating) and saves the
partial answer as `stopped`; so does POST .../stop/."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.core.cache import cache
from django.http import StreamingHttpResponse

from chat.engine import AnswerEngine, AnswerOutcome
from chat.models import Message, MessageStatus
from chat.services import PreparedTurn, turn_discard, turn_finish

STOP_KEY = "chat:stop:{message_id}"

Event = tuple[str, dict[str, Any]]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def request_stop(message_id: int) -> None:
    cache.set(STOP_KEY.format(message_id=message_id), "1", timeout=600)


def conversation_engine(turn: PreparedTurn, *, whole: bool = False) -> AnswerEngine:
    """The engine for a conversation's turn: its end saves the assistant's message. `whole`: the
    client waits for the answer whole, so a failed one is discarded (chat.services.turn_discard)."""

    async def save(outcome: AnswerOutcome) -> dict[str, Any]:
        if whole and outcome.status == MessageStatus.FAILED:
            await sync_to_async(turn_discard)(
                turn=turn,
                called_model=outcome.called_model,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
            )
            return {}
        message = await sync_to_async(turn_finish)(
            turn=turn,
            content=outcome.content,
            status=outcome.status,
            error=outcome.error,
            time_to_first_token_ms=outcome.time_to_first_token_ms,
            total_ms=outcome.total_ms,
            completion_tokens=outcome.completion_tokens,
            prompt_tokens=outcome.prompt_tokens,
            metered=outcome.called_model,
            tool_calls=outcome.tool_calls,
        )
        return {"message_id": message.pk, "status": message.status, "citations": message.citations}

    async def stop_requested() -> bool:
        return bool(await cache.aget(STOP_KEY.format(message_id=turn.assistant_message_id)))

    return AnswerEngine(
        plan=turn,
        finish=save,
        stop_requested=stop_requested,
        sources_data={"message_id": turn.assistant_message_id},
    )


def turn_answer(*, turn: PreparedTurn) -> Message:
    """The whole answer at once (the non-streaming API), from the same engine as the stream: a
    DomainError (503) when the model is down or fails, and then no answer kept."""
    async_to_sync(conversation_engine(turn, whole=True).answer)()
    return Message.objects.get(pk=turn.assistant_message_id)


async def answer_event_items(turn: PreparedTurn) -> AsyncGenerator[Event, None]:
    """The answer as (event, data) pairs, for SSE and for the team rooms' WebSockets."""
    async with contextlib.aclosing(conversation_engine(turn).events()) as events:
        async for event in events:
            yield event.kind, event.data


async def answer_events(turn: PreparedTurn) -> AsyncIterator[bytes]:
    """The answer as Server-Sent Events. Closing this generator closes the inner one at once, so a
    dropped client still stops the model."""
    async with contextlib.aclosing(answer_event_items(turn)) as items:
        async for event, data in items:
            yield sse(event, data)


def event_stream_response(turn: PreparedTurn) -> StreamingHttpResponse:
    response = StreamingHttpResponse(answer_events(turn), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
