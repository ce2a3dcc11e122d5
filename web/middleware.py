"""The user's language setting, and a Content-Security-Policy for the web pages."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils import translation

# The web pages load only the platform's own scripts, styles and images: an answer or a document
# that smuggles markup past the sanitiser still cannot run a script or fetch an outside image
# (which could carry data out in its URL).
WEB_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


class UserLanguageMiddleware:
    """A signed-in user's language setting wins over the browser's Accept-Language (which
    LocaleMiddleware, before this, has already applied)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        language = getattr(user, "language", "") if user is not None and user.is_authenticated else ""
        if language:
            translation.activate(language)
            request.LANGUAGE_CODE = language
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        match = request.resolver_match
        if match is not None and match.app_name == "web" and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = WEB_CSP
        return response


class SynchronousChainMiddleware:
    """The innermost middleware, synchronous only, so that every middleware runs in one thread.

    Under ASGI, Django runs each middleware the way the one inside it runs. Axes, last before
    this, can run either way, so it ran async; the middlewares that can too (MessageMiddleware,
    XFrameOptionsMiddleware) followed it, each hook of theirs a thread switch, and the synchronous
    ones above switched back to the event loop to reach them. Now the chain leaves its thread only
    around the view."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)
