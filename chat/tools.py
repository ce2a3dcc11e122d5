"""Tools an assistant's model may call (OpenAI function calling; the loop is chat.engine's).

An assistant's `tools` is a list of specs, checked and normalised here when it is saved:
- `{"type": "knowledge_base_search"}`: search the assistant's knowledge bases;
- `{"type": "sql"}`: one read-only query over the assistant's data sources (datasources.sql_guard);
- `{"type": "http", "name", "openapi_url" | "openapi", "headers"?}`: the operations of an OpenAPI
  document (JSON), each a tool, called through the SSRF guard (core.outbound) on the document's
  server only;
- `{"type": "mcp", "name", "url", "headers"?}`: the tools of an MCP server over streamable HTTP (its
  URL through the SSRF guard), or `{"type": "mcp", "name", "server"}`: a stdio server the operator
  configured (MCP_STDIO_SERVERS); users never name a command.
Header values (API keys) are kept encrypted and shown as `***`.

The set of tools is fixed when the answer is planned, from the assistant's configuration: a model
may only call those, with arguments checked against their schemas; text in a document or a tool's
result cannot add a tool, widen a tool's reach (the knowledge bases, the data sources, the HTTP
server are the assistant's, not arguments), or lift the step and time limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote, urljoin

import anyio
import httpx
import httpx2
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from langchain_core.tools import BaseTool, StructuredTool
from mcp.client import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from core.domain_errors import DomainError
from core.outbound import outbound_client, outbound_url_check
from datasources.models import DataSource
from datasources.services import data_source_query
from datasources.text_to_sql import markdown_table, schema_text
from kb.models import KnowledgeBase
from kb.retrieval import SearchRequest, kb_search
from models_registry.credentials import credentials_decrypt, credentials_encrypt

TOOL_TYPES = ("knowledge_base_search", "sql", "http", "mcp")
MAX_TOOL_SPECS = 16
MAX_OPERATIONS = 30
MAX_RESULT_CHARS = 4000
MAX_OPENAPI_BYTES = 1024 * 1024
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
MASK = "***"


class ToolSpecError(DomainError):
    code = "invalid_tool"


class ToolUnavailable(DomainError):
    status_code = 503
    code = "tool_unavailable"


# --- specs, checked when an assistant is saved -------------------------------------------------


def _name(spec: dict[str, Any]) -> str:
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ToolSpecError(
            f"tools: {spec.get('type')} needs a `name` of letters, digits, - and _ (up to 40), starting with a letter"
        )
    return name


def _headers(spec: dict[str, Any], previous: dict[str, Any] | None) -> str:
    """The spec's headers, encrypted; a value sent back as *** keeps the stored one."""
    headers = spec.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ToolSpecError("tools: `headers` is an object of header names and string values")
    stored = (
        json.loads(credentials_decrypt(previous["headers_encrypted"]))
        if previous and previous.get("headers_encrypted")
        else {}
    )
    merged = {key: stored.get(key, "") if value == MASK else value for key, value in headers.items()}
    return credentials_encrypt(json.dumps(merged)) if merged else ""


def _fetch_openapi(url: str) -> dict[str, Any]:
    outbound_url_check(url)
    try:
        with outbound_client(timeout=10.0) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        raise ToolSpecError(f"tools: the OpenAPI document at {url} could not be fetched: {exc}") from exc
    if response.status_code != 200:
        raise ToolSpecError(f"tools: {url} answered {response.status_code}: give the URL of an OpenAPI JSON document")
    if len(response.content) > MAX_OPENAPI_BYTES:
        raise ToolSpecError("tools: the OpenAPI document is over 1 MB")
    try:
        document = response.json()
    except ValueError as exc:
        raise ToolSpecError("tools: the OpenAPI document is not JSON (YAML is not read): give its JSON form") from exc
    return document if isinstance(document, dict) else {}


def _operations(document: dict[str, Any], source_url: str) -> tuple[str, list[dict[str, Any]]]:
    servers = document.get("servers") or [{"url": "/"}]
    base_url = urljoin(source_url, str(servers[0].get("url", "/")))
    outbound_url_check(base_url)
    operations: list[dict[str, Any]] = []
    for path, item in (document.get("paths") or {}).items():
        for method in HTTP_METHODS:
            operation = (item or {}).get(method)
            if not isinstance(operation, dict) or not operation.get("operationId"):
                continue
            parameters = [p for p in operation.get("parameters", []) if isinstance(p, dict) and p.get("name")]
            operations.append(
                {
                    "name": re.sub(r"[^A-Za-z0-9_-]", "_", str(operation["operationId"]))[:40],
                    "method": method.upper(),
                    "path": str(path),
                    "description": str(operation.get("summary") or operation.get("description") or path)[:300],
                    "path_params": [p["name"] for p in parameters if p.get("in") == "path"],
                    "query_params": [p["name"] for p in parameters if p.get("in") == "query"],
                    "body": "requestBody" in operation,
                }
            )
    if not operations:
        raise ToolSpecError("tools: the OpenAPI document has no operation with an operationId")
    if len(operations) > MAX_OPERATIONS:
        raise ToolSpecError(f"tools: the OpenAPI document has {len(operations)} operations; at most {MAX_OPERATIONS}")
    return base_url, operations


def _clean_one(spec: Any, previous: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not isinstance(spec, dict) or spec.get("type") not in TOOL_TYPES:
        raise ToolSpecError(f"tools: each tool is an object whose `type` is one of {', '.join(TOOL_TYPES)}")
    kind = spec["type"]
    if kind in ("knowledge_base_search", "sql"):
        return {"type": kind}
    name = _name(spec)
    before = previous.get(name)
    if kind == "http":
        if "openapi_url" in spec:
            url = str(spec["openapi_url"])
            document = _fetch_openapi(url)
        elif isinstance(spec.get("openapi"), dict):
            if not isinstance(spec.get("base_url"), str):
                raise ToolSpecError("tools: an inline `openapi` document needs the `base_url` its paths are under")
            url, document = spec["base_url"], spec["openapi"]
        elif before is not None and before["type"] == "http" and spec.get("operations"):
            return {**before, "headers_encrypted": _headers(spec, before)}  # sent back as read
        else:
            raise ToolSpecError("tools: an http tool needs `openapi_url` (or an inline `openapi` with `base_url`)")
        base_url, operations = _operations(document, url)
        return {"type": "http", "name": name, "base_url": base_url, "operations": operations,
                "headers_encrypted": _headers(spec, before)}  # fmt: skip
    if "server" in spec:
        if spec["server"] not in settings.MCP_STDIO_SERVERS:
            configured = ", ".join(sorted(settings.MCP_STDIO_SERVERS)) or "none"
            raise ToolSpecError(
                f"tools: no MCP server {spec['server']!r} is configured (MCP_STDIO_SERVERS: {configured})"
            )
        return {"type": "mcp", "name": name, "server": str(spec["server"])}
    if not isinstance(spec.get("url"), str):
        raise ToolSpecError("tools: an mcp tool needs the server's `url` (or an operator-configured `server`)")
    outbound_url_check(spec["url"])
    return {"type": "mcp", "name": name, "url": spec["url"], "headers_encrypted": _headers(spec, before)}


def tool_specs_clean(specs: Any, *, previous: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The specs as stored, or ToolSpecError saying what to fix."""
    if not isinstance(specs, list):
        raise ToolSpecError("tools: send a list of tool objects")
    if len(specs) > MAX_TOOL_SPECS:
        raise ToolSpecError(f"tools: at most {MAX_TOOL_SPECS} tools")
    before = {spec["name"]: spec for spec in previous or [] if spec.get("name")}
    cleaned = [_clean_one(spec, before) for spec in specs]
    keys = [spec.get("name", spec["type"]) for spec in cleaned]
    if len(set(keys)) != len(keys):
        raise ToolSpecError("tools: each tool appears once (names are unique)")
    return cleaned


def tool_specs_shown(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The specs as the API shows them: header values masked."""
    shown = []
    for spec in specs:
        visible = {key: value for key, value in spec.items() if key != "headers_encrypted"}
        if spec.get("headers_encrypted"):
            visible["headers"] = dict.fromkeys(json.loads(credentials_decrypt(spec["headers_encrypted"])), MASK)
        shown.append(visible)
    return shown


# --- tools, built when an answer is planned ----------------------------------------------------


def _truncated(text: str) -> str:
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + "\n[... cut]"


def _sync_tool(name: str, description: str, schema: dict[str, Any], func: Callable[..., str]) -> BaseTool:
    """A tool whose work is synchronous (the database, a guarded HTTP call): awaited through
    sync_to_async, so Django's connections stay on its own threads."""
    return StructuredTool(
        name=name, description=description, args_schema=schema, func=func, coroutine=sync_to_async(func)
    )


def _knowledge_base_tool(knowledge_bases: list[KnowledgeBase]) -> BaseTool:
    def search(query: str, top_k: int = 4) -> str:
        hits = kb_search(
            knowledge_bases=knowledge_bases, request=SearchRequest(query=query[:2000], top_k=max(1, min(top_k, 10)))
        )
        if not hits:
            return "Nothing found."
        return "\n\n".join(f"[{index}] ({hit.document_name}) {hit.text}" for index, hit in enumerate(hits, start=1))

    names = ", ".join(kb.name for kb in knowledge_bases)
    schema = {
        "type": "object",
        "properties": {"query": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["query"],
    }
    return _sync_tool("search_knowledge_base", f"Search the knowledge bases ({names}) for passages.", schema, search)


def _sql_tool(sources: list[DataSource]) -> BaseTool:
    by_name = {source.name: source for source in sources}

    def query(sql: str, data_source: str = "") -> str:
        source = by_name.get(data_source) or sources[0]
        result = data_source_query(data_source=source, sql=sql, row_cap=settings.DATA_SOURCE_ANSWER_ROWS)
        more = " (more rows not shown)" if result.truncated else ""
        return f"{result.row_count} rows{more}\n{markdown_table(result.columns, result.rows)}"

    schemas = "\n\n".join(f"{source.name} ({source.dialect}):\n{schema_text(source)}" for source in sources)
    schema = {
        "type": "object",
        "properties": {"sql": {"type": "string"}, "data_source": {"type": "string", "enum": list(by_name)}},
        "required": ["sql"],
    }
    return _sync_tool("query_database", f"Run one read-only SELECT. Databases:\n{schemas}"[:4000], schema, query)


def _http_tools(spec: dict[str, Any]) -> list[BaseTool]:
    headers = json.loads(credentials_decrypt(spec["headers_encrypted"])) if spec.get("headers_encrypted") else {}
    tools = []
    for operation in spec["operations"]:
        properties: dict[str, Any] = {
            name: {"type": "string"} for name in operation["path_params"] + operation["query_params"]
        }
        if operation["body"]:
            properties["body"] = {"type": "object"}

        def call(_operation: dict[str, Any] = operation, **arguments: Any) -> str:
            path = _operation["path"]
            for name in _operation["path_params"]:
                path = path.replace("{" + name + "}", quote(str(arguments.get(name, "")), safe=""))
            url = spec["base_url"].rstrip("/") + "/" + path.lstrip("/")
            params = {name: arguments[name] for name in _operation["query_params"] if name in arguments}
            with outbound_client(timeout=settings.TOOL_CALL_TIMEOUT_S) as client:
                response = client.request(
                    _operation["method"], url, params=params, json=arguments.get("body"), headers=headers
                )
            return _truncated(f"HTTP {response.status_code}\n{response.text}")

        schema = {"type": "object", "properties": properties, "required": operation["path_params"]}
        tools.append(_sync_tool(f"{spec['name']}__{operation['name']}"[:64], operation["description"], schema, call))
    return tools


class McpServer:
    """One MCP server of an assistant: connected per call (stateless), its tools listed once per plan."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    async def _session(self, stack: AsyncExitStack) -> ClientSession:
        if "server" in self.spec:
            configured = settings.MCP_STDIO_SERVERS[self.spec["server"]]
            parameters = StdioServerParameters(command=configured["command"], args=configured.get("args", []))
            read, write = await stack.enter_async_context(stdio_client(parameters))
        else:
            outbound_url_check(self.spec["url"])  # again: the name may resolve elsewhere by now
            headers = (
                json.loads(credentials_decrypt(self.spec["headers_encrypted"]))
                if self.spec.get("headers_encrypted")
                else {}
            )
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=headers, timeout=settings.TOOL_CALL_TIMEOUT_S, follow_redirects=False)
            )
            read, write = await stack.enter_async_context(streamable_http_client(self.spec["url"], http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session

    async def list_tools(self) -> list[Any]:
        with anyio.fail_after(settings.TOOL_CALL_TIMEOUT_S):
            async with AsyncExitStack() as stack:
                session = await self._session(stack)
                return list((await session.list_tools()).tools)

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        async with AsyncExitStack() as stack:
            session = await self._session(stack)
            result = await session.call_tool(tool, arguments)
        texts = [getattr(block, "text", "") for block in getattr(result, "content", [])]
        prefix = "Error: " if getattr(result, "is_error", False) else ""
        return _truncated(prefix + "\n".join(text for text in texts if text))


def _mcp_tools(spec: dict[str, Any]) -> list[BaseTool]:
    server = McpServer(spec)
    listed = async_to_sync(server.list_tools)()
    tools: list[BaseTool] = []
    for tool in listed:

        def runner(_name: str = tool.name) -> Callable[..., Awaitable[str]]:
            async def run(**arguments: Any) -> str:
                return await server.call(_name, arguments)

            return run

        schema = dict(tool.input_schema or {"type": "object", "properties": {}})
        tools.append(
            StructuredTool(
                name=f"{spec['name']}__{tool.name}"[:64],
                description=(tool.description or tool.name)[:1000],
                args_schema=schema,
                coroutine=runner(),
            )
        )
    return tools


def assistant_tools(
    *, specs: list[dict[str, Any]], knowledge_bases: list[KnowledgeBase], data_sources: list[DataSource]
) -> list[BaseTool]:
    """The tools of one answer, from the assistant's specs and its own knowledge bases and data
    sources. An MCP server that cannot be reached now is a DomainError (the answer cannot use it)."""
    tools: list[BaseTool] = []
    for spec in specs:
        if spec["type"] == "knowledge_base_search" and knowledge_bases:
            tools.append(_knowledge_base_tool(knowledge_bases))
        elif spec["type"] == "sql" and data_sources:
            tools.append(_sql_tool(data_sources))
        elif spec["type"] == "http":
            tools.extend(_http_tools(spec))
        elif spec["type"] == "mcp":
            try:
                tools.extend(_mcp_tools(spec))
            except Exception as exc:
                raise ToolUnavailable(
                    f"the assistant's MCP server {spec['name']} could not be reached ({type(exc).__name__}): "
                    "try again later, or ask an admin to check the server"
                ) from exc
    return tools
