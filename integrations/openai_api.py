"""The OpenAI-compatible API under /v1/: `models` (the team's assistants), `chat/completions`
(plain and streamed, with the assistant's retrieval applied) and `embeddings` (the team's
embedding models). Authenticated by API key only, with the `chat` scope; errors in OpenAI's
shape, so that standard clients (the `openai` package, LangChain's ChatOpenAI, Open WebUI,
LobeChat) read them. Sources travel in an extension field, `sources`, that those clients ignore.

The API is stateless like OpenAI's: the client sends the whole conversation; the assistant's
memory budget keeps the newest turns that fit, and nothing is stored but usage."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from asgiref.sync import async_to_sync, sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from rest_framework import exceptions, serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiKeyAuthentication
from accounts.models import ApiKey, Role, Scope, Team, User
from accounts.permissions import ApiKeyScopePermission
from accounts.quotas import quota_check, quota_release, usage_record
from accounts.selectors import has_team_role
from chat.engine import AnswerEngine, AnswerOutcome
from chat.memory import estimate_tokens, recent_window
from chat.models import Assistant
from chat.services import (
    AnswerPlan,
    ChatError,
    Turn,
    answer_plan,
    answer_settle,
    assistant_default_for,
)
from core.domain_errors import DomainError, ModelUnavailable
from models_registry.langchain_models import embeddings_for
from models_registry.models import ModelKind, ModelRegistration
from restapi.async_views import body_asks_for_stream, drf_request_through, stream_or_rest

MAX_MESSAGES = 500
MAX_CONTENT_CHARS = 100_000
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_CHARS = 32_000
# Sampling parameters passed to the model as given; everything else OpenAI defines is accepted
# and ignored when harmless, refused when the platform cannot honour it.
SAMPLING_FIELDS = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
IGNORED_FIELDS = {
    "user",
    "metadata",
    "store",
    "logit_bias",
    "service_tier",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "modalities",
    "prediction",
    "web_search_options",
}
UNSUPPORTED_FIELDS = {"functions", "function_call", "audio"}
MAX_TOOLS = 64
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


# --- errors in OpenAI's shape -------------------------------------------------------------------


class ModelNotFound(DomainError):
    status_code = 404
    code = "model_not_found"


def openai_error_body(status: int, message: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }


def openai_error_response(status: int, message: str, code: str | None, param: str | None = None) -> JsonResponse:
    return JsonResponse(openai_error_body(status, message, code, param), status=status)


def _first_message(detail: Any) -> tuple[str, str | None]:
    """(message, the field it is about) from a DRF error detail."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            message, inner = _first_message(value)
            named = None if field in ("detail", "non_field_errors") else str(field)
            return (f"{named}: {message}" if named else message), inner or named
        return "invalid request", None
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else ("invalid request", None)
    return str(detail), None


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        param = "model" if isinstance(exc, ModelNotFound) else None
        return Response(openai_error_body(exc.status_code, str(exc), exc.code, param), status=exc.status_code)
    if not isinstance(exc, exceptions.APIException):
        return None
    message, param = _first_message(exc.detail)
    code = exc.get_codes()
    response = Response(
        openai_error_body(exc.status_code, message, code if isinstance(code, str) else "invalid", param),
        status=exc.status_code,
    )
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    if getattr(exc, "wait", None):
        response["Retry-After"] = str(int(cast(float, exc.wait)))  # type: ignore[attr-defined]
    return response


class OpenAIView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsAuthenticated, ApiKeyScopePermission]
    required_scope = Scope.CHAT

    def get_exception_handler(self) -> Any:
        return openai_exception_handler


def _api_key(request: Request) -> ApiKey:
    assert isinstance(request.auth, ApiKey)  # the only authentication these views accept
    return request.auth


def _require_member(user: User, api_key: ApiKey) -> None:
    """Model calls spend the team's tokens: members do that, viewers only read."""
    if not has_team_role(user=user, api_key=api_key, team_id=api_key.team_id, role=Role.MEMBER):
        raise exceptions.PermissionDenied(
            "Viewers cannot use the team's models: ask a team admin to make you a member."
        )


# --- models ---------------------------------------------------------------------------------------


def _model_object(assistant: Assistant) -> dict[str, Any]:
    return {
        "id": assistant.name,
        "object": "model",
        "created": int(assistant.created_at.timestamp()),
        "owned_by": assistant.team.slug,
    }


def _assistant_named(team: Team, name: str) -> Assistant:
    assistant = (
        Assistant.objects.select_related("team", "llm__provider", "rerank_model__provider")
        .filter(team=team, name=name)
        .first()
    )
    if assistant is None:
        known = list(Assistant.objects.filter(team=team).values_list("name", flat=True)[:20])
        raise ModelNotFound(f"The team has no assistant named {name!r}: use one of {known} (GET /v1/models).")
    return assistant


MODEL_OBJECT = inline_serializer(
    "OpenAIModel",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
    },
)


class ModelListView(OpenAIView):
    @extend_schema(
        tags=["openai"],
        operation_id="openai_models_list",
        responses=inline_serializer(
            "OpenAIModelList", {"object": serializers.CharField(), "data": serializers.ListField(child=MODEL_OBJECT)}
        ),
    )
    def get(self, request: Request) -> Response:
        """The team's assistants, each a model."""
        team = _api_key(request).team
        assistants = list(Assistant.objects.select_related("team").filter(team=team))
        if not assistants:
            # A new team chats at once: its default assistant is made from its default LLM.
            with contextlib.suppress(ChatError):
                assistants = [assistant_default_for(team=team)]
        return Response({"object": "list", "data": [_model_object(assistant) for assistant in assistants]})


class ModelDetailView(OpenAIView):
    @extend_schema(tags=["openai"], operation_id="openai_models_retrieve", responses=MODEL_OBJECT)
    def get(self, request: Request, model: str) -> Response:
        return Response(_model_object(_assistant_named(_api_key(request).team, model)))


# --- chat completions -----------------------------------------------------------------------------


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = serializers.JSONField(
        help_text="A string, or a list of text parts (null for an assistant message with tool_calls).", allow_null=True
    )
    name = serializers.CharField(required=False, max_length=200)
    tool_calls = serializers.ListField(
        child=serializers.DictField(), required=False, help_text="An assistant message's calls of your functions."
    )
    tool_call_id = serializers.CharField(
        required=False, max_length=200, help_text="A tool message: the call it answers."
    )

    def validate_tool_calls(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for call in calls:
            function = call.get("function")
            if not isinstance(call.get("id"), str) or not isinstance(function, dict) or not function.get("name"):
                raise serializers.ValidationError(
                    "each tool call is {'id', 'type': 'function', 'function': {'name', 'arguments'}}"
                )
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except (TypeError, ValueError) as exc:
                raise serializers.ValidationError("a tool call's arguments are a JSON object in a string") from exc
            if not isinstance(arguments, dict):
                raise serializers.ValidationError("a tool call's arguments are a JSON object in a string")
        return calls

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["role"] == "tool" and not attrs.get("tool_call_id"):
            raise serializers.ValidationError({"tool_call_id": "a tool message names the call it answers"})
        if attrs.get("content") is None and not attrs.get("tool_calls"):
            raise serializers.ValidationError({"content": "send the message's text"})
        attrs["content"] = attrs.get("content") or ""
        return attrs

    def validate_content(self, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            text = value
        elif isinstance(value, list) and all(isinstance(part, dict) for part in value):
            if any(part.get("type") != "text" for part in value):
                raise serializers.ValidationError("only text parts are supported (no images, audio or files)")
            text = "".join(str(part.get("text", "")) for part in value)
        else:
            raise serializers.ValidationError("send a string or a list of {'type': 'text', 'text': ...} parts")
        if len(text) > MAX_CONTENT_CHARS:
            raise serializers.ValidationError(f"at most {MAX_CONTENT_CHARS} characters per message")
        return text


class ChatCompletionRequestSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200, help_text="An assistant's name (GET /v1/models).")
    messages = ChatMessageSerializer(many=True, allow_empty=False)
    stream = serializers.BooleanField(default=False)
    stream_options = serializers.DictField(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    stop = serializers.JSONField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True)
    presence_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    tools = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        max_length=MAX_TOOLS,
        help_text="Your functions (OpenAI function calling): the model may answer with tool_calls for you to run.",
    )
    tool_choice = serializers.JSONField(
        required=False, allow_null=True, help_text='"auto", "none", "required" or a function.'
    )

    def validate_tools(self, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for tool in tools:
            function = tool.get("function")
            if tool.get("type") != "function" or not isinstance(function, dict):
                raise serializers.ValidationError("each tool is {'type': 'function', 'function': {'name', ...}}")
            if not FUNCTION_NAME.match(str(function.get("name", ""))):
                raise serializers.ValidationError("a function's name is 1-64 letters, digits, _ or -")
            if not isinstance(function.get("parameters", {}), dict):
                raise serializers.ValidationError("a function's parameters are a JSON Schema object")
        return tools

    def validate_tool_choice(self, choice: Any) -> Any:
        if choice is None or choice in ("auto", "none", "required"):
            return choice
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
            return choice
        raise serializers.ValidationError('"auto", "none", "required" or {"type": "function", "function": {"name"}}')

    def validate_messages(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) > MAX_MESSAGES:
            raise serializers.ValidationError(f"at most {MAX_MESSAGES} messages: send the newest ones")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        sent = set(self.initial_data) if isinstance(self.initial_data, dict) else set()
        unsupported = sorted(sent & UNSUPPORTED_FIELDS)
        if unsupported:
            raise serializers.ValidationError(
                {
                    unsupported[
                        0
                    ]: "not supported: send functions as `tools` (and `tool_choice`), as OpenAI's API now does"
                }
            )
        unknown = sorted(sent - set(self.fields) - IGNORED_FIELDS - UNSUPPORTED_FIELDS)
        if unknown:
            raise serializers.ValidationError({unknown[0]: "unrecognized request argument"})
        stop = attrs.get("stop")
        if stop is not None and not (
            isinstance(stop, str)
            or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
        ):
            raise serializers.ValidationError({"stop": "a string or a list of at most 4 strings"})
        last = attrs["messages"][-1]["role"]
        if last != "user" and not (last == "tool" and attrs.get("tools")):
            raise serializers.ValidationError(
                {"messages": "the last message must be the user's question (or, with `tools`, a tool result)"}
            )
        if not any(message["role"] == "user" for message in attrs["messages"]):
            raise serializers.ValidationError({"messages": "send the user's question"})
        return attrs


@dataclass
class Completion:
    """A planned answer and how to ask the model for it."""

    plan: AnswerPlan
    model_name: str  # the assistant's name, which clients sent as `model`
    model_kwargs: dict[str, Any]
    include_usage: bool


def completion_prepare(*, user: User, api_key: ApiKey, data: dict[str, Any]) -> Completion:
    """Quota, then the same retrieval query → retrieve → prompt as a conversation turn, from the request's
    messages: system messages join the assistant's system prompt, earlier turns fill the recent
    window, the last user message is the question."""
    assistant = _assistant_named(api_key.team, data["model"])
    _require_member(user, api_key)
    messages = data["messages"]
    last_user = max(index for index, message in enumerate(messages) if message["role"] == "user")
    # After the question: the model's calls of the client's functions and their results.
    calls_and_results = _function_messages(messages[last_user + 1 :])
    messages = messages[: last_user + 1]
    extra_system = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    turns = [Turn(role=m["role"], content=m["content"]) for m in messages if m["role"] in ("user", "assistant")]
    question, earlier = turns[-1], turns[:-1]
    recent = earlier[-recent_window(earlier, assistant.recent_tokens) :] if earlier else []
    plan = answer_plan(
        assistant=assistant,
        knowledge_bases=list(assistant.knowledge_bases.select_related("embedding_model__provider")),
        recent=recent,
        question=question.content,
        summary="",
        team_id=api_key.team_id,
        user_id=user.pk,
        extra_system=extra_system,
        max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
    )
    if data.get("tools"):
        # The client's functions only: the assistant's own tools are not mixed into its loop.
        plan.tools, plan.client_tools, plan.tool_choice = [], data["tools"], data.get("tool_choice")
        plan.canned_answer = None
    plan.prompt.extend(calls_and_results)
    model_kwargs = {field: data[field] for field in SAMPLING_FIELDS if data.get(field) is not None}
    model_kwargs["max_tokens"] = plan.max_tokens
    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    return Completion(plan=plan, model_name=assistant.name, model_kwargs=model_kwargs, include_usage=include_usage)


def _function_messages(messages: list[dict[str, Any]]) -> list[BaseMessage]:
    """A client's function calls and results as the model reads them."""
    converted: list[BaseMessage] = []
    for message in messages:
        if message["role"] == "tool":
            converted.append(ToolMessage(content=message["content"], tool_call_id=message["tool_call_id"]))
        elif message["role"] == "assistant":
            calls = [
                {"id": call["id"], "name": call["function"]["name"],
                 "args": json.loads(call["function"].get("arguments") or "{}")}
                for call in message.get("tool_calls", [])
            ]  # fmt: skip
            converted.append(AIMessage(content=message["content"], tool_calls=calls))
    return converted


def _openai_tool_calls(calls: list[dict[str, Any]], *, streamed: bool = False) -> list[dict[str, Any]]:
    return [
        {**({"index": index} if streamed else {}), "id": call["id"], "type": "function",
         "function": {"name": call["name"], "arguments": call["arguments"]}}
        for index, call in enumerate(calls)
    ]  # fmt: skip


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_answer(completion: Completion) -> dict[str, Any]:
    """The whole answer at once, from the same engine as the stream; 503 when the model is down."""
    outcome = async_to_sync(_completion_engine(completion).answer)()
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model_name,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": outcome.content or (None if outcome.requested_tool_calls else ""),
                    **(
                        {"tool_calls": _openai_tool_calls(outcome.requested_tool_calls)}
                        if outcome.requested_tool_calls
                        else {}
                    ),
                },
                "finish_reason": outcome.finish_reason,
            }
        ],
        "usage": _usage(outcome.prompt_tokens, outcome.completion_tokens),
        "sources": completion.plan.sources,
    }


class ChatCompletionsView(OpenAIView):
    @extend_schema(
        tags=["openai"],
        request=ChatCompletionRequestSerializer,
        responses={
            200: OpenApiResponse(
                inline_serializer(
                    "OpenAIChatCompletion",
                    {
                        "id": serializers.CharField(),
                        "object": serializers.CharField(),
                        "created": serializers.IntegerField(),
                        "model": serializers.CharField(),
                        "choices": serializers.ListField(child=serializers.DictField()),
                        "usage": serializers.DictField(),
                        "sources": serializers.ListField(child=serializers.DictField()),
                    },
                ),
                description="With `stream: true`: Server-Sent Events of `chat.completion.chunk` objects, "
                "then `data: [DONE]`; the first chunk carries `sources`.",
            )
        },
    )
    def post(self, request: Request) -> Response:
        """An assistant's answer to the conversation in `messages`."""
        data = ChatCompletionRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = request.user
        assert isinstance(user, User)
        completion = completion_prepare(user=user, api_key=_api_key(request), data=data.validated_data)
        return Response(completion_answer(completion))


# --- the streamed completion ----------------------------------------------------------------------


def _prepare_stream(request: HttpRequest) -> Completion | HttpResponse:
    """What ChatCompletionsView does before calling the model, as an error response or a plan."""
    try:
        drf_request = drf_request_through(ChatCompletionsView, request)
        data = ChatCompletionRequestSerializer(data=drf_request.data)
        data.is_valid(raise_exception=True)
        user = drf_request.user
        assert isinstance(user, User)
        return completion_prepare(user=user, api_key=_api_key(drf_request), data=data.validated_data)
    except (exceptions.APIException, DomainError) as exc:
        handled = openai_exception_handler(exc, {})
        assert handled is not None
        response = JsonResponse(handled.data, status=handled.status_code)
        for header in ("WWW-Authenticate", "Retry-After"):
            if header in handled:
                response[header] = handled[header]
        return response


def _sse(body: dict[str, Any] | str) -> bytes:
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def _completion_engine(completion: Completion) -> AnswerEngine:
    """The engine for a /v1 completion: stateless, so its end only meters the usage."""
    plan = completion.plan

    async def meter(outcome: AnswerOutcome) -> dict[str, Any]:
        await sync_to_async(answer_settle)(
            plan=plan,
            called_model=outcome.called_model,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
        )
        return {}

    return AnswerEngine(plan=plan, finish=meter, model_kwargs=completion.model_kwargs)


class CompletionStream:
    """The answering engine's events as `chat.completion.chunk`s. The engine was started (its
    first piece read) before any byte is sent, so that a model that is down answers 503."""

    def __init__(self, completion: Completion, engine: AnswerEngine) -> None:
        self.completion = completion
        self.engine = engine
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        return _sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.completion.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **extra,
            }
        )

    async def events(self) -> AsyncIterator[bytes]:
        failed = False
        usage: dict[str, Any] = {}
        async with contextlib.aclosing(self.engine.events()) as events:
            async for event in events:
                if event.kind == "sources":
                    yield self.chunk({"role": "assistant", "content": ""}, sources=event.data["sources"])
                elif event.kind == "token":
                    yield self.chunk({"content": event.data["text"]})
                elif event.kind == "tool_calls_requested":
                    yield self.chunk({"tool_calls": _openai_tool_calls(event.data["tool_calls"], streamed=True)})
                elif event.kind == "error":  # OpenAI clients raise on an error chunk
                    failed = True
                    yield _sse(openai_error_body(503, event.data["message"], "model_unavailable"))
                elif event.kind == "usage":
                    usage = event.data
        if failed:
            return
        assert self.engine.outcome is not None
        yield self.chunk({}, finish_reason=self.engine.outcome.finish_reason)
        if self.completion.include_usage:
            yield _sse(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.completion.model_name,
                    "choices": [],
                    "usage": _usage(usage["prompt_tokens"], usage["completion_tokens"]),
                }
            )
        yield _sse("[DONE]")


async def _stream_completion(request: HttpRequest) -> HttpResponseBase:
    prepared = await sync_to_async(_prepare_stream)(request)
    if isinstance(prepared, HttpResponse):
        return prepared
    engine = _completion_engine(prepared)
    try:
        await engine.start()
    except DomainError as exc:  # down or refusing before the first token: a plain error, no stream
        await sync_to_async(quota_release)(reservation_id=prepared.plan.reservation_id)
        return openai_error_response(exc.status_code, str(exc), exc.code)
    response = StreamingHttpResponse(CompletionStream(prepared, engine).events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


chat_completions = stream_or_rest(ChatCompletionsView, body_asks_for_stream, _stream_completion)


# --- embeddings -----------------------------------------------------------------------------------


class EmbeddingRequestSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200, help_text="The name of one of the team's embedding models.")
    input = serializers.JSONField(help_text="A string or a list of strings.")
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], default="float")
    dimensions = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    user = serializers.CharField(required=False, max_length=200)

    def validate_input(self, value: Any) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            raise serializers.ValidationError(
                "send a string or a non-empty list of strings (token arrays are not supported: with LangChain's "
                "OpenAIEmbeddings set check_embedding_ctx_length=False)"
            )
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise serializers.ValidationError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        if any(not text.strip() or len(text) > MAX_EMBEDDING_INPUT_CHARS for text in texts):
            raise serializers.ValidationError(
                f"each input must be non-empty and at most {MAX_EMBEDDING_INPUT_CHARS} characters"
            )
        return texts


def _embedding_model(team: Team, name: str) -> ModelRegistration:
    models = ModelRegistration.objects.select_related("provider").filter(team=team, kind=ModelKind.EMBEDDING)
    registration = models.filter(name=name).first() or models.filter(provider_model_uid=name).first()
    if registration is None:
        known = list(models.values_list("name", flat=True)[:20])
        raise ModelNotFound(f"The team has no embedding model named {name!r}: use one of {known}.")
    return registration


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


class EmbeddingsView(OpenAIView):
    @extend_schema(
        tags=["openai"],
        request=EmbeddingRequestSerializer,
        responses=inline_serializer(
            "OpenAIEmbeddingList",
            {
                "object": serializers.CharField(),
                "data": serializers.ListField(child=serializers.DictField()),
                "model": serializers.CharField(),
                "usage": serializers.DictField(),
            },
        ),
    )
    def post(self, request: Request) -> Response:
        """Vectors from one of the team's embedding models."""
        data = EmbeddingRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key = _api_key(request)
        user = request.user
        assert isinstance(user, User)
        registration = _embedding_model(api_key.team, data.validated_data["model"])
        dimensions = data.validated_data.get("dimensions")
        if dimensions is not None and registration.dimensions and dimensions != registration.dimensions:
            raise exceptions.ValidationError(
                {"dimensions": f"{registration.name} makes {registration.dimensions}-dimensional vectors only"}
            )
        _require_member(user, api_key)
        quota_check(team_id=api_key.team_id, user_id=user.pk)
        texts: list[str] = data.validated_data["input"]
        try:
            vectors = embeddings_for(registration).embed_documents(texts)
        except Exception as exc:
            raise ModelUnavailable(
                f"the embedding model {registration.name} did not answer ({type(exc).__name__}: {exc}); try again"
            ) from exc
        tokens = sum(estimate_tokens(text) for text in texts)
        usage_record(
            team_id=api_key.team_id, user_id=user.pk, model_name=registration.name, tokens_in=tokens, tokens_out=0
        )
        encoding = data.validated_data["encoding_format"]
        return Response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": index, "embedding": _encode(vector, encoding)}
                    for index, vector in enumerate(vectors)
                ],
                "model": registration.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
