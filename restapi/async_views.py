"""Endpoints that answer either with a stream (async, token by token) or as plain REST (a DRF view).

The returned async view keeps the DRF view's `cls`/`initkwargs`, so drf-spectacular documents the
endpoint like any other; only requests that ask for a stream bypass DRF."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from rest_framework.request import Request
from rest_framework.views import APIView

StreamHandler = Callable[..., Awaitable[HttpResponseBase]]


def body_asks_for_stream(request: HttpRequest) -> bool:
    """A JSON body with `"stream": true`, as chat clients send it."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("stream") is True


def drf_request_through(view_class: type[APIView], request: HttpRequest, **kwargs: Any) -> Request:
    """`request` authenticated, authorized and throttled exactly as `view_class` would do it (its
    own authentication, permission and throttle classes: bearer key or session with CSRF, the API
    key's scope), for a stream that answers outside DRF. Raises DRF's APIException on refusal."""
    view = view_class()
    view.setup(request, **kwargs)
    view.format_kwarg = None
    drf_request = view.initialize_request(request, **kwargs)
    view.request = drf_request
    # APIView.initial less its content negotiation: a stream asks for text/event-stream, which no
    # DRF renderer offers.
    view.perform_authentication(drf_request)
    view.check_permissions(drf_request)
    view.check_throttles(drf_request)
    return drf_request


def stream_or_rest(
    rest_view: type[APIView], wants_stream: Callable[[HttpRequest], bool], stream: StreamHandler
) -> Callable[..., Coroutine[Any, Any, HttpResponseBase]]:
    rest = rest_view.as_view()

    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method == "POST" and wants_stream(request):
            return await stream(request, *args, **kwargs)
        return await sync_to_async(rest)(request, *args, **kwargs)

    # Both paths authenticate inside (bearer key, or session with DRF's CSRF check).
    view.csrf_exempt = True  # type: ignore[attr-defined]
    view.cls = rest.cls  # type: ignore[attr-defined]
    view.initkwargs = rest.initkwargs  # type: ignore[attr-defined]
    return view
