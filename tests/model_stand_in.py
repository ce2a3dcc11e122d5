"""ScriptedModelStandIn: an OpenAI-compatible chat server that replays fixed replies, for the tests
where the model's output must be known (the SQL it writes, the tools it calls); the real model is
exercised by the smoke tests beside them. A reply is text, or {"tool_calls": [{"name", "arguments"}]}."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

Reply = str | dict[str, Any]
HandlerT = TypeVar("HandlerT", bound=BaseHTTPRequestHandler)
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def _tool_calls(reply: dict[str, Any], *, streamed: bool) -> list[dict[str, Any]]:
    calls = []
    for index, call in enumerate(reply["tool_calls"]):
        function = {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}
        calls.append(
            {**({"index": index} if streamed else {}), "id": f"call_{index}", "type": "function", "function": function}
        )
    return calls


class ScriptedModelStandIn(BaseHTTPRequestHandler):
    replies: list[Reply] = []
    requests: list[dict[str, Any]] = []  # each request's body: messages, tools

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.requests.append(body)
        reply: Reply = self.replies.pop(0) if self.replies else "No more replies."
        if body.get("stream"):
            self._stream(body, reply)
        else:
            self._whole(body, reply)

    def _whole(self, body: dict[str, Any], reply: Reply) -> None:
        if isinstance(reply, dict):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": _tool_calls(reply, streamed=False),
            }
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": reply}, "stop"
        payload = {"id": "c", "object": "chat.completion", "model": body["model"], "usage": USAGE,
                   "choices": [{"index": 0, "message": message, "finish_reason": finish}]}  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, body: dict[str, Any], reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if isinstance(reply, dict):
            first = {"role": "assistant", "content": None, "tool_calls": _tool_calls(reply, streamed=True)}
            pieces: list[tuple[dict[str, Any], str | None]] = [(first, None), ({}, "tool_calls")]
        else:
            pieces = [({"role": "assistant", "content": reply}, None), ({}, "stop")]
        for delta, finish in pieces:
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage_chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": USAGE}
        self.wfile.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


def local_http_server(handler: type[HandlerT]) -> Iterator[tuple[str, type[HandlerT]]]:
    """(base URL, handler class) of `handler` served on loopback in a thread; a generator for a
    fixture. Give each fixture its own subclass, so class-level state is not shared."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()


def scripted_model_server() -> Iterator[tuple[str, type[ScriptedModelStandIn]]]:
    """(endpoint, handler class whose `replies` to fill and `requests` to read); a generator for a fixture."""
    yield from local_http_server(type("Scripted", (ScriptedModelStandIn,), {"replies": [], "requests": []}))
