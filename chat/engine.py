"""The one answering engine: a planned answer (chat.services.AnswerPlan) streamed from the model
as events. Conversations (SSE), team rooms (WebSocket messages) and the OpenAI-compatible API
(`chat.completion.chunk`s) are three formats of the same events; each front door says only how an
answer that ended is kept (`Finish`): a conversation saves its message, /v1 meters usage.

Events, in order: `sources`, `token`..., then `error` if the model failed, then `usage` and
`done`. The front doors that do not stream (REST without `stream`, /v1 without it) take the same
events whole (`answer()`). Tool calls will be events of their own here. Whatever way the answer ends (complete,
stopped by the user, the model failing, the client going away) the finish runs once, with what
was written so far; closing the event generator closes the model's stream, so the model stops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from asgiref.sync import sync_to_async

from chat.memory import estimate_tokens
from chat.models import MessageStatus
from chat.services import AnswerPlan
from core.database import release_pooled_connection
from core.domain_errors import DomainError, model_call_error
from models_registry.langchain_models import chat_model_for

STOP_CHECK_EVERY_S = 0.25


@dataclass(frozen=True)
class AnswerEvent:
    kind: str  # "sources", "token", "error", "usage" or "done"
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
    finish_reason: str  # OpenAI's: "stop", "length" or "content_filter"


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
        kwargs = {"max_tokens": self.plan.max_tokens, **self.model_kwargs}
        upstream = cast(AsyncGenerator[Any, None], chat_model_for(self.plan.llm).astream(self.plan.prompt, **kwargs))
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
            async with contextlib.aclosing(self._texts()) as texts:
                async for text in texts:
                    yield AnswerEvent("token", {"text": text})
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

    async def _texts(self) -> AsyncGenerator[str, None]:
        if self.plan.canned_answer is not None:  # nothing found: said without calling the model
            yield self._take_text(self.plan.canned_answer)
            return
        await self.start()
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

    def _take(self, piece: Any) -> str:
        if getattr(piece, "usage_metadata", None):
            self._usage = dict(piece.usage_metadata)
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
        )
