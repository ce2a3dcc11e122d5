"""The one answering engine: a planned answer (chat.services.AnswerPlan) streamed from the model
as events. Conversations (SSE), team rooms (WebSocket messages) and the OpenAI-compatible API
(`chat.completion.chunk`s) are three formats of the same events; each front door says only how an
answer that ended is kept (`Finish`): a conversation saves its message, /v1 meters usage.

Events, in order: `sources`, the `tool_call`s run before the answer (SQL), `token`..., with
`tool_call` and `tool_result` between rounds when the model calls the assistant's tools, then
`error` if the model failed, then `usage` and `done`. The front doors that do not stream (REST
without `stream`, /v1 without it) take the same events whole (`answer()`).

Tools (chat.tools): the model is called with the plan's tools bound; when a round ends in tool
calls, each runs (time-limited, metered as a request of `tool:<name>`), its result goes back to the
model, and the next round streams; after TOOL_MAX_STEPS rounds the model is called without tools,
so it must answer. A call to a tool it was not given is answered with an error, never run.

Whatever way the answer ends (complete,
stopped by the user, the model failing, the client going away) the finish runs once, with what
was written so far; closing the event generator closes the model's stream, so the model stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from langchain_core.messages import AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool

from accounts.quotas import usage_record
from chat.memory import estimate_tokens
from chat.models import MessageStatus
from chat.services import AnswerPlan
from core.database import release_pooled_connection
from core.domain_errors import DomainError, model_call_error
from models_registry.langchain_models import chat_model_for

STOP_CHECK_EVERY_S = 0.25


@dataclass(frozen=True)
class AnswerEvent:
    # "sources", "tool_call", "tool_result", "tool_calls_requested", "token", "error", "usage" or "done"
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class AnswerOutcome:
    """How an answer ended, for its front door to keep."""

    content: str
    status: str  # a MessageStatus
    error: str
    called_model: bool  # False for a canned answer and for a model that failed
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: int | None
    total_ms: int
    finish_reason: str  # OpenAI's: "stop", "length", "content_filter" or "tool_calls"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # the plan's and the rounds'
    # Calls of a /v1 client's functions, for the client to run: [{"id", "name", "arguments"}].
    requested_tool_calls: list[dict[str, Any]] = field(default_factory=list)


# Keeps the outcome (saves the message, meters the usage) and returns the `done` event's data.
Finish = Callable[[AnswerOutcome], Awaitable[dict[str, Any]]]
StopRequested = Callable[[], Awaitable[bool]]


def finish_reason_of(metadata: dict[str, Any] | None) -> str:
    """OpenAI's finish reason from a model response's metadata (`stop` when it says none)."""
    reason = (metadata or {}).get("finish_reason") or "stop"
    return reason if reason in ("stop", "length", "content_filter") else "stop"


@dataclass
class AnswerEngine:
    """One answer. `start()` is optional: it calls the model and waits for its first piece, so a
    front door that has sent nothing yet can still answer a plain 503 when the model is down."""

    plan: AnswerPlan
    finish: Finish
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    stop_requested: StopRequested | None = None
    sources_data: dict[str, Any] = field(default_factory=dict)
    _upstream: AsyncGenerator[Any, None] | None = None
    _first: Any = None
    _started_at: float = field(default_factory=time.perf_counter)
    _parts: list[str] = field(default_factory=list)
    _usage: dict[str, int] = field(default_factory=dict)
    _finish_reason: str = "stop"
    _first_token_ms: int | None = None
    _last_stop_check: float = 0.0
    _prompt: list[BaseMessage] = field(default_factory=list)  # grows by each round of tool calls
    _round: AIMessageChunk | None = None  # the current round's message, pieces added up
    _tool_calls: list[dict[str, Any]] = field(default_factory=list)
    _requested_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    outcome: AnswerOutcome | None = None  # set once the answer ended
    failure: Exception | None = None  # why the model failed, when it did

    async def start(self) -> None:
        """Call the model and read its first piece; on failure the stream is closed, nothing kept,
        and core.domain_errors.model_call_error says why (ModelUnavailable, or the
        configuration's own refusal). Nothing to do for a canned answer."""
        if self.plan.canned_answer is not None or self._upstream is not None:
            return
        # The answer may take minutes: the request's pooled database connection is not held
        # through it (the finish borrows one again).
        await sync_to_async(release_pooled_connection)()
        self._prompt = list(self.plan.prompt)
        await self._open_round(with_tools=bool(self.plan.tools or self.plan.client_tools))

    async def _open_round(self, *, with_tools: bool) -> None:
        kwargs = {"max_tokens": self.plan.max_tokens, **self.model_kwargs}
        model: Any = chat_model_for(self.plan.llm)
        if with_tools and self.plan.client_tools:
            model = model.bind_tools(self.plan.client_tools, tool_choice=self.plan.tool_choice)
        elif with_tools:
            model = model.bind_tools(self.plan.tools)
        upstream = cast(AsyncGenerator[Any, None], model.astream(self._prompt, **kwargs))
        self._round = None
        try:
            self._first = await upstream.__anext__()
        except StopAsyncIteration:
            self._first = None
        except Exception as exc:
            await upstream.aclose()
            raise model_call_error(exc, self.plan.llm.name) from exc
        self._upstream = upstream

    async def events(self) -> AsyncGenerator[AnswerEvent, None]:
        yield AnswerEvent("sources", {**self.sources_data, "sources": self.plan.sources})
        for call in self.plan.tool_calls:
            yield AnswerEvent("tool_call", call)
        status, error = MessageStatus.COMPLETE, ""
        try:
            async with contextlib.aclosing(self._pieces()) as pieces:
                async for piece in pieces:
                    yield piece if isinstance(piece, AnswerEvent) else AnswerEvent("token", {"text": piece})
                    if await self._stop_requested_now():
                        status = MessageStatus.STOPPED
                        break
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away: the aclosing block has closed the model's stream; keep what
            # was written, whatever cancels the caller next.
            await asyncio.shield(self._end(MessageStatus.STOPPED, ""))
            raise
        except Exception as exc:  # the model failed: say so, keep what came
            self.failure = exc
            status, error = MessageStatus.FAILED, f"the model {self.plan.llm.name} failed: {type(exc).__name__}: {exc}"
            code = exc.code if isinstance(exc, DomainError) else "model_unavailable"
            yield AnswerEvent("error", {"message": error, "code": code})
        outcome, done = await self._end(status, error)
        yield AnswerEvent(
            "usage",
            {
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "time_to_first_token_ms": outcome.time_to_first_token_ms,
                "total_ms": outcome.total_ms,
            },
        )
        yield AnswerEvent("done", done)

    async def answer(self) -> AnswerOutcome:
        """The whole answer at once, for the front doors that do not stream: the same model call,
        usage and finish as a stream. When the model was down or failed, `finish` has run (with
        the failed status) and the DomainError to answer with is raised."""
        async with contextlib.aclosing(self.events()) as events:
            async for _event in events:
                pass
        if self.failure is not None:
            if isinstance(self.failure, DomainError):
                raise self.failure
            raise model_call_error(self.failure, self.plan.llm.name) from self.failure
        assert self.outcome is not None
        return self.outcome

    async def _pieces(self) -> AsyncGenerator[str | AnswerEvent, None]:
        """The answer's text, round by round, with the tool events between rounds."""
        if self.plan.canned_answer is not None:  # nothing found: said without calling the model
            yield self._take_text(self.plan.canned_answer)
            return
        await self.start()
        for step in range(1, settings.TOOL_MAX_STEPS + 2):
            async with contextlib.aclosing(self._round_texts()) as texts:
                async for text in texts:
                    yield text
            round_message = self._round
            if round_message is None or not round_message.tool_calls:
                return
            calls = round_message.tool_calls
            if self.plan.client_tools:  # the client's functions: it runs them and asks again
                self._requested_tool_calls = [
                    {"id": call["id"], "name": call["name"], "arguments": json.dumps(call["args"], ensure_ascii=False)}
                    for call in calls
                ]
                self._finish_reason = "tool_calls"
                yield AnswerEvent("tool_calls_requested", {"tool_calls": self._requested_tool_calls})
                return
            self._prompt.append(round_message)
            for call in calls:
                yield AnswerEvent("tool_call", {"id": call["id"], "name": call["name"], "arguments": call["args"]})
                record = await self._run_tool(dict(call))
                self._tool_calls.append(record)
                self._prompt.append(ToolMessage(content=record["result"] or record["error"], tool_call_id=call["id"]))
                yield AnswerEvent("tool_result", record)
            # The last round has no tools bound: the model answers with what it has.
            await self._open_round(with_tools=step < settings.TOOL_MAX_STEPS)

    async def _round_texts(self) -> AsyncGenerator[str, None]:
        assert self._upstream is not None
        async with contextlib.aclosing(self._upstream) as stream:
            if self._first is not None:
                text = self._take(self._first)
                if text:
                    yield text
            async for piece in stream:
                text = self._take(piece)
                if text:
                    yield text

    async def _run_tool(self, call: dict[str, Any]) -> dict[str, Any]:
        """Run one call the model made, within the time limit; what went wrong is its result."""
        record: dict[str, Any] = {
            "tool": call["name"],
            "id": call["id"],
            "arguments": call["args"],
            "result": "",
            "error": "",
        }
        tools: dict[str, BaseTool] = {tool.name: tool for tool in self.plan.tools}
        tool = tools.get(call["name"])
        started = time.perf_counter()
        if tool is None:
            record["error"] = f"there is no tool {call['name']!r}: use one of {', '.join(tools) or 'none'}"
        else:
            try:
                result = await asyncio.wait_for(tool.ainvoke(call["args"]), settings.TOOL_CALL_TIMEOUT_S)
                record["result"] = str(result)
            except TimeoutError:
                record["error"] = f"the tool ran past its {settings.TOOL_CALL_TIMEOUT_S:g} s limit"
            except Exception as exc:  # a refusal (SqlRefused...), a bad argument, a server down
                record["error"] = f"{type(exc).__name__}: {exc}"[:1000]
            await sync_to_async(usage_record)(
                team_id=self.plan.team_id, user_id=self.plan.user_id, model_name=f"tool:{call['name']}"[:200],
                tokens_in=0, tokens_out=0,
            )  # fmt: skip
        record["ms"] = int((time.perf_counter() - started) * 1000)
        return record

    def _take(self, piece: Any) -> str:
        if isinstance(piece, AIMessageChunk):
            self._round = piece if self._round is None else self._round + piece
        if getattr(piece, "usage_metadata", None):
            # One usage per round (the stream's last piece): rounds add up.
            for key in ("input_tokens", "output_tokens"):
                self._usage[key] = self._usage.get(key, 0) + int(piece.usage_metadata.get(key) or 0)
        metadata = getattr(piece, "response_metadata", None)
        if metadata and metadata.get("finish_reason"):
            self._finish_reason = finish_reason_of(metadata)
        return self._take_text(str(piece.content)) if piece.content else ""

    def _take_text(self, text: str) -> str:
        if self._first_token_ms is None:
            self._first_token_ms = int((time.perf_counter() - self._started_at) * 1000)
        self._parts.append(text)
        return text

    async def _stop_requested_now(self) -> bool:
        """Asked at most every STOP_CHECK_EVERY_S: a check per token would be a cache call per token."""
        if self.stop_requested is None or time.perf_counter() - self._last_stop_check < STOP_CHECK_EVERY_S:
            return False
        self._last_stop_check = time.perf_counter()
        return await self.stop_requested()

    async def _end(self, status: str, error: str) -> tuple[AnswerOutcome, dict[str, Any]]:
        if self.outcome is not None:  # a cancel that came after the finish: nothing to keep twice
            return self.outcome, {}
        self.outcome = self._outcome(status, error)
        return self.outcome, await self.finish(self.outcome)

    def _outcome(self, status: str, error: str) -> AnswerOutcome:
        content = "".join(self._parts)
        canned = self.plan.canned_answer is not None
        # A model that failed after writing something did the work: that much is metered.
        called_model = not canned and (status != MessageStatus.FAILED or bool(content))
        total_ms = int((time.perf_counter() - self._started_at) * 1000)
        return AnswerOutcome(
            content=content,
            status=status,
            error=error,
            called_model=called_model,
            prompt_tokens=(self._usage.get("input_tokens") or self.plan.prompt_tokens) if called_model else 0,
            completion_tokens=(self._usage.get("output_tokens") or estimate_tokens(content)) if called_model else 0,
            time_to_first_token_ms=None if canned else self._first_token_ms,
            total_ms=0 if canned else total_ms,
            finish_reason=self._finish_reason,
            tool_calls=[*self.plan.tool_calls, *self._tool_calls],
            requested_tool_calls=self._requested_tool_calls,
        )
