"""The page a locked-out sign-in gets (django-axes' AXES_LOCKOUT_CALLABLE), on /login/ and
/admin/login/ alike: who is locked, for how long, and how to get back in."""

from __future__ import annotations

import math
from typing import Any

from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def lockout_response(request: HttpRequest, *args: Any) -> HttpResponse:
    # axes passes (request, original_response, credentials) from sync code and (request,
    # credentials) from async code; the username is read from the request either way.
    cool_off = get_cool_off(request)
    context = {
        "failure_limit": get_failure_limit(request, None),
        "username": get_client_username(request) or "",
        "minutes": math.ceil(cool_off.total_seconds() / 60) if cool_off else None,
    }
    response = render(request, "web/locked_out.html", context, status=429)
    if cool_off:
        response["Retry-After"] = str(math.ceil(cool_off.total_seconds()))
    return response
