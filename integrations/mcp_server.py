"""The platform as an MCP server at /mcp/: MCP over streamable HTTP, for MCP clients (Claude
Desktop, Cursor, agents built on the `mcp` package), authenticated by an API key as
`Authorization: Bearer <key>`. Three tools over the key's team:

- `list_knowledge_bases` and `search_knowledge_base`: the REST API's knowledge-base list and
  search (kb.selectors, kb.retrieval.kb_search, the same hit shape), with the `read` scope;
- `ask_assistant`: the OpenAI-compatible API's answer (completion_prepare, completion_answer: the
  same quota check, metering and refusals), with the `chat` scope.

Served beside Django, not through it: chatplatform.asgi routes /mcp and /mcp/ here. Each request
is authenticated exactly as the REST API does it (ApiKeyAuthentication: revoked, expired, the
rate limits) before any MCP handling, and recorded in the API key audit log; no key or a bad one
answers 401 in the API's error shape. The server is stateless and answers JSON, so any web process
may serve any request (no session affinity). Each request runs a session manager of its own, whose
task group lives as long as the request: nothing depends on the ASGI lifespan, which `make run`
turns off (runtime/supervisor.py starts uvicorn with `--lifespan off`).

Objects of another team are not found, exactly like missing ones. What a caller can get wrong
comes back as a tool error (`isError: true`) whose text says what to do."""

from __future__ import annotations

import contextlib
import contextvars
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Count
from django.http import HttpResponse, JsonResponse
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field
from rest_framework import exceptions
from rest_framework.request import Request
from starlette.types import Message, Receive, Scope, Send

from accounts.audit import api_key_use_record
from accounts.authentication import ApiKeyAuthentication
from accounts.models import ApiKey, Team, User
from accounts.models import Scope as KeyScope
from accounts.permissions import key_has_scope
from chat.models import Assistant
from chat.services import mark_citations
from core.domain_errors import DomainError
from integrations.openai_api import MAX_CONTENT_CHARS, completion_answer, completion_prepare
from kb.api import HitSerializer
from kb.retrieval import SearchRequest, kb_search
from kb.selectors import knowledge_bases_visible
from restapi.errors import api_error_response

MCP_PATHS = frozenset({"/mcp", "/mcp/"})
SEARCH_MAX_TOP_K = 100  # as the REST search endpoint (kb.api.SearchInputSerializer)
SEARCH_MAX_QUERY_CHARS = 2000


def is_mcp_path(path: str) -> bool:
    """Whether chatplatform.asgi hands the request to this server (/mcp, /mcp/ and below)."""
    return path == "/mcp" or path.startswith("/mcp/")


# --- who is calling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    user: User
    api_key: ApiKey


# Set by McpApplication for the request it serves. The session manager, its tasks and the threads
# sync_to_async runs the tools' database work in all start inside that request, so they see it.
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("mcp_caller")


def _caller_with(scope: str) -> Caller:
    caller = _caller.get(None)
    if caller is None:  # only McpApplication serves the tools, and it sets the caller first
        raise ToolError("Not authenticated: send an API key as `Authorization: Bearer <key>`.")
    if not key_has_scope(caller.api_key, scope):
        raise ToolError(f"This API key lacks the `{scope}` scope this tool needs: create a key with it.")
    return caller


def _detail_text(detail: Any) -> str:
    """The first message inside a DRF error detail."""
    if isinstance(detail, dict):
        return _detail_text(next(iter(detail.values()), "invalid request"))
    if isinstance(detail, list):
        return _detail_text(detail[0]) if detail else "invalid request"
    return str(detail)


@contextlib.contextmanager
def _refusals_as_tool_errors() -> Iterator[None]:
    """The services' refusals (their messages say what to do) as tool errors, not crashes."""
    try:
        yield
    except DomainError as exc:
        raise ToolError(str(exc)) from exc
    except exceptions.APIException as exc:
        raise ToolError(_detail_text(exc.detail)) from exc


# --- the tools' results ---------------------------------------------------------------------------


class KnowledgeBaseSummary(BaseModel):
    id: int
    name: str
    description: str
    document_count: int


class KnowledgeBaseList(BaseModel):
    knowledge_bases: list[KnowledgeBaseSummary]


class SearchHit(BaseModel):  # shaped like the REST search endpoint's results (kb.api.HitSerializer)
    chunk_id: int
    document_id: int
    document_name: str
    text: str
    score: float
    metadata: dict[str, Any]


class SearchResults(BaseModel):
    results: list[SearchHit]


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantAnswer(BaseModel):
    assistant: str
    answer: str
    finish_reason: str | None
    sources: list[dict[str, Any]] = Field(
        description="What retrieval found, numbered as the answer cites them ([n]); `cited` marks those it cites."
    )
    usage: TokenUsage


# --- the tools' work (synchronous: the database and the services) ---------------------------------


def knowledge_bases_list(*, caller: Caller) -> KnowledgeBaseList:
    knowledge_bases = (
        knowledge_bases_visible(user=caller.user, api_key=caller.api_key)
        .annotate(document_count=Count("documents"))
        .order_by("name", "pk")
    )
    return KnowledgeBaseList(
        knowledge_bases=[
            KnowledgeBaseSummary(id=kb.pk, name=kb.name, description=kb.description, document_count=kb.document_count)
            for kb in knowledge_bases
        ]
    )


def knowledge_base_search(
    *, caller: Caller, knowledge_base_id: int, query: str, top_k: int, mode: str
) -> SearchResults:
    kb = (
        knowledge_bases_visible(user=caller.user, api_key=caller.api_key)
        .select_related("embedding_model__provider")
        .filter(pk=knowledge_base_id)
        .first()
    )
    if kb is None:  # another team's is not found either
        raise ToolError(
            f"There is no knowledge base {knowledge_base_id} in this team: "
            "call list_knowledge_bases for the ids you can search."
        )
    with _refusals_as_tool_errors():
        hits = kb_search(knowledge_bases=[kb], request=SearchRequest(query=query, top_k=top_k, mode=mode))
    return SearchResults.model_validate({"results": HitSerializer(hits, many=True).data})


def _assistant_of(team: Team, reference: str) -> Assistant:
    """The team's assistant with this name, else with this id."""
    assistants = Assistant.objects.filter(team=team)
    assistant = assistants.filter(name=reference).first()
    if assistant is None and reference.strip().isdigit():
        assistant = assistants.filter(pk=int(reference)).first()
    if assistant is None:  # another team's is not found either
        known = list(assistants.order_by("name").values_list("name", flat=True)[:20])
        raise ToolError(f"There is no assistant {reference!r} in this team: ask one of {known} (by name or id).")
    return assistant


def assistant_ask(*, caller: Caller, assistant: str, question: str, max_tokens: int | None) -> AssistantAnswer:
    found = _assistant_of(caller.api_key.team, assistant)
    data: dict[str, Any] = {
        "model": found.name,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
    }
    with _refusals_as_tool_errors():
        response = completion_answer(completion_prepare(user=caller.user, api_key=caller.api_key, data=data))
    choice = response["choices"][0]
    answer = choice["message"]["content"]
    return AssistantAnswer(
        assistant=response["model"],
        answer=answer,
        finish_reason=choice["finish_reason"],
        sources=mark_citations(response["sources"], answer),
        usage=TokenUsage(**response["usage"]),
    )


# --- the MCP server -------------------------------------------------------------------------------

server: MCPServer[Any] = MCPServer(
    "chatplatform",
    instructions=(
        "Search the team's knowledge bases (list_knowledge_bases, then search_knowledge_base) and ask "
        "its assistants, which answer from their knowledge bases with numbered sources (ask_assistant)."
    ),
    # Stateless over many web processes: nothing to listen to across requests.
    subscriptions=False,
)


@server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
async def list_knowledge_bases() -> KnowledgeBaseList:
    """The team's knowledge bases this API key may search: id, name, description, document count."""
    caller = _caller_with(KeyScope.READ)
    return await sync_to_async(knowledge_bases_list)(caller=caller)


@server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
async def search_knowledge_base(
    knowledge_base_id: Annotated[int, Field(description="An id from list_knowledge_bases.")],
    query: Annotated[str, Field(min_length=1, max_length=SEARCH_MAX_QUERY_CHARS, description="What to look for.")],
    top_k: Annotated[int, Field(ge=1, le=SEARCH_MAX_TOP_K, description="How many chunks to return.")] = 5,
    mode: Annotated[
        Literal["hybrid", "vector", "fulltext"],
        Field(description="hybrid (vector and full text, fused), vector, or fulltext."),
    ] = "hybrid",
) -> SearchResults:
    """The chunks of a knowledge base that best match the query, with their documents and scores."""
    caller = _caller_with(KeyScope.READ)
    return await sync_to_async(knowledge_base_search)(
        caller=caller, knowledge_base_id=knowledge_base_id, query=query, top_k=top_k, mode=mode
    )


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False))
async def ask_assistant(
    assistant: Annotated[str, Field(min_length=1, max_length=200, description="The assistant's name or id.")],
    question: Annotated[str, Field(min_length=1, max_length=MAX_CONTENT_CHARS)],
    max_tokens: Annotated[
        int | None, Field(ge=1, description="At most this many tokens of answer (the assistant's own cap still holds).")
    ] = None,
) -> AssistantAnswer:
    """One of the team's assistants answers the question from its knowledge bases, with the sources
    it found. Uses the team's token quota like a chat message."""
    caller = _caller_with(KeyScope.CHAT)
    if not question.strip():
        raise ToolError("The question is empty: ask something.")
    return await sync_to_async(assistant_ask)(
        caller=caller, assistant=assistant, question=question, max_tokens=max_tokens
    )


# --- the ASGI application -------------------------------------------------------------------------


def _authenticate(request: ASGIRequest) -> Caller:
    """The REST API's bearer-key check (and its rate limits), or the APIException to answer with."""
    authenticated = ApiKeyAuthentication().authenticate(Request(request))
    if authenticated is None:
        raise exceptions.NotAuthenticated(
            "Send an API key as `Authorization: Bearer <key>` "
            "(create one with `python manage.py create_api_key` or in the console)."
        )
    user, key = authenticated
    return Caller(user=user, api_key=key)


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, "details": {}}}, status=status)


async def _send_django_response(response: HttpResponse, send: Send) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})


class McpApplication:
    """ASGI application for /mcp and /mcp/: checks the host and the API key as Django would, then
    lets a per-request, stateless streamable-HTTP session manager answer with JSON."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"the MCP server speaks HTTP only, not {scope['type']}")
        # As Django's ASGI handler: this request's synchronous work runs in a thread of its own,
        # and its database connections are given back when it ends (request_finished).
        async with ThreadSensitiveContext():
            await signals.request_started.asend(sender=self.__class__, scope=scope)
            try:
                await self._handle(scope, receive, send)
            finally:
                await signals.request_finished.asend(sender=self.__class__)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = ASGIRequest(scope, io.BytesIO())  # headers, client address and path; no body
        try:
            request.get_host()  # ALLOWED_HOSTS, as for every other request
        except DisallowedHost:
            await _send_django_response(_error(400, "bad_host", "This host name is not served here."), send)
            return
        if scope["path"] not in MCP_PATHS:
            await _send_django_response(_error(404, "not_found", "The MCP server is at /mcp/."), send)
            return
        try:
            caller = await sync_to_async(_authenticate)(request)
        except exceptions.APIException as exc:
            response = api_error_response(exc)
            if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
                response["WWW-Authenticate"] = ApiKeyAuthentication().authenticate_header(Request(request))
            await _send_django_response(response, send)
            return

        status = 500

        async def send_watching_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        manager = StreamableHTTPSessionManager(
            # The SDK's own in-process client reaches the low-level server the same way.
            app=server._lowlevel_server,
            json_response=True,
            stateless=True,
            max_request_body_size=settings.API_MAX_BODY_BYTES,
        )
        token = _caller.set(caller)
        try:
            async with manager.run():
                await manager.handle_request(scope, receive, send_watching_status)
        finally:
            _caller.reset(token)
            await sync_to_async(api_key_use_record)(key=caller.api_key, request=request, status_code=status)


mcp_application = McpApplication()
