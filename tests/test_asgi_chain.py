"""Under ASGI the middleware chain runs in one thread (web.middleware.SynchronousChainMiddleware)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync, iscoroutinefunction
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler


def test_the_asgi_middleware_chain_leaves_its_thread_only_around_the_view() -> None:
    handler = ASGIHandler()  # loads the middleware as each uvicorn process does
    middleware: list[Any] = []
    switches: list[str] = []
    current: Any = handler._middleware_chain  # type: ignore[attr-defined]  # the loaded chain
    # Layers: asgiref's adapters (a thread switch each), Django's exception wrappers (functions
    # that wrap the next layer), the middleware instances; down to the handler's view call.
    while current is not None:
        if isinstance(current, SyncToAsync | AsyncToSync):
            switches.append(type(current).__name__)
            current = getattr(current, "func", None) or getattr(current, "awaitable", None)
            continue
        if type(current).__module__ != "builtins" and hasattr(current, "get_response"):
            middleware.append(current)
        current = getattr(current, "__wrapped__", None) or getattr(current, "get_response", None)
    assert [f"{type(layer).__module__}.{type(layer).__name__}" for layer in middleware] == settings.MIDDLEWARE
    # Before SynchronousChainMiddleware: MessageMiddleware, XFrameOptionsMiddleware and Axes,
    # whose hooks each switched threads while a request ran.
    assert [type(layer).__name__ for layer in middleware if iscoroutinefunction(layer)] == []
    # Into the thread for the whole chain, back to the event loop for the view's call (which runs
    # a synchronous view in that same thread).
    assert switches == ["SyncToAsync", "AsyncToSync"]
