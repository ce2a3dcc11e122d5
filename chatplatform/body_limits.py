"""Request bodies capped before Django reads them.

Django's ASGI handler reads the whole body into a temporary file (on disk past
FILE_UPLOAD_MAX_MEMORY_SIZE) before any middleware, authentication or view runs, and uvicorn has
no body limit of its own: without this, anyone who reaches the web port could make the server
store bodies of any size. This ASGI middleware, around the Django application, refuses a body
over its path's cap with 413 in the API's error shape, from the Content-Length before a byte of
the body is read, or, for a chunked body, as soon as the bytes received pass the cap.

The upload endpoints (UPLOAD_URL_NAMES) take up to UPLOAD_MAX_REQUEST_BYTES per request (each
file is still held to KB_MAX_UPLOAD_BYTES by kb.uploads); everything else API_MAX_BODY_BYTES.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable, ASGISendEvent
from django.conf import settings
from django.urls import Resolver404, resolve

from core.sizes import format_bytes

# The views that take files, multipart: a knowledge base's documents, a conversation's files,
# the admin console's upload page, a data source's SQLite file (the API's, and the web form's).
UPLOAD_URL_NAMES = frozenset(
    {"knowledge-base-documents", "conversation-files", "admin:kb_upload", "data-source-list", "web:datasource-create"}
)

Scope = dict[str, Any]
Application = Any  # an ASGI application: (scope, receive, send) -> None


def body_limit(path: str) -> tuple[int, str]:
    """The cap for a request to `path`, and what to tell a client that went over it."""
    try:
        is_upload = resolve(path).view_name in UPLOAD_URL_NAMES
    except Resolver404:
        is_upload = False
    if is_upload:
        limit = settings.UPLOAD_MAX_REQUEST_BYTES
        advice = (
            f"upload fewer files per request (each file may be up to {format_bytes(settings.KB_MAX_UPLOAD_BYTES)}), "
            "or ask the operator to raise UPLOAD_MAX_REQUEST_BYTES"
        )
    else:
        limit = settings.API_MAX_BODY_BYTES
        advice = (
            "send less; files go to the upload endpoints, as multipart "
            "(or ask the operator to raise API_MAX_BODY_BYTES)"
        )
    return limit, f"The request body is over {format_bytes(limit)}, the most this server accepts here: {advice}."


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server (h11, httptools) refuses a malformed one before us
    return None


async def _send_too_large(send: ASGISendCallable, limit: int, message: str) -> None:
    body = json.dumps({"error": {"code": "too_large", "message": message, "details": {"limit_bytes": limit}}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodySizeLimit:
    """ASGI middleware: HTTP bodies over their path's cap answer 413 before the app reads them."""

    def __init__(self, app: Application) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Under the smaller cap no path needs its own: most requests never resolve their URL,
        # which costs up to a millisecond against the API's patterns.
        floor = min(settings.API_MAX_BODY_BYTES, settings.UPLOAD_MAX_REQUEST_BYTES)
        cap: tuple[int, str] | None = None

        def over_cap(size: int) -> bool:
            nonlocal cap
            if size <= floor:
                return False
            if cap is None:
                cap = body_limit(scope["path"])
            return size > cap[0]

        declared = _declared_length(scope)
        if declared is not None and over_cap(declared):
            assert cap is not None
            await _send_too_large(send, *cap)
            return
        received = 0
        refused = False
        response_started = False

        async def limited_receive() -> ASGIReceiveEvent:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if over_cap(received):
                    # A chunked body (no Content-Length) past the cap: answer now, and tell the
                    # app the client left, so Django stops reading (RequestAborted) and answers nothing.
                    assert cap is not None
                    refused = True
                    if not response_started:
                        await _send_too_large(send, *cap)
                    return {"type": "http.disconnect"}
            return event

        async def guarded_send(event: ASGISendEvent) -> None:
            nonlocal response_started
            if refused:
                return  # the 413 went out instead
            if event["type"] == "http.response.start":
                response_started = True
            await send(event)

        await self.app(scope, limited_receive, guarded_send)
