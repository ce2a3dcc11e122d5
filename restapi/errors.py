"""One error shape for the whole API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import OperationalError
from django.db.models import ProtectedError
from django.http import Http404, JsonResponse
from psycopg_pool import PoolTimeout
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core.domain_errors import DomainError
from core.sizes import format_bytes


def _message(detail: Any) -> str:
    """The first human-readable message inside a DRF error detail."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            inner = _message(value)
            return inner if field in ("detail", "non_field_errors") else f"{field}: {inner}"
        return "invalid request"
    if isinstance(detail, list):
        return _message(detail[0]) if detail else "invalid request"
    return str(detail)


def _in_use_message(exc: ProtectedError) -> str:
    """What still uses the object a delete would have removed, by kind and name."""
    users = sorted({f"{type(obj)._meta.verbose_name} {obj}" for obj in list(exc.protected_objects)[:5]})
    return f"Still in use by {', '.join(users)}: change or delete those first."


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response({"error": {"code": exc.code, "message": str(exc), "details": {}}}, status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        limit = format_bytes(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        message = f"The request body is over {limit}: send less (files go to the upload endpoints, as multipart)."
        return Response({"error": {"code": "too_large", "message": message, "details": {}}}, status=413)
    if isinstance(exc, OperationalError) and isinstance(exc.__cause__, PoolTimeout):
        # Every pooled connection of this web process stayed in use past the pool's wait.
        message = "The server is at capacity (every database connection is busy): retry in a few seconds."
        busy = Response({"error": {"code": "busy", "message": message, "details": {}}}, status=503)
        busy["Retry-After"] = "5"
        return busy
    if isinstance(exc, ProtectedError):
        return Response({"error": {"code": "in_use", "message": _in_use_message(exc), "details": {}}}, status=409)
    # Django's own exceptions become their DRF twins, so they get a proper code as well.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    code = exc.get_codes()
    if not isinstance(code, str):
        code = "invalid" if isinstance(exc, exceptions.ValidationError) else "error"
    details = response.data if isinstance(exc, exceptions.ValidationError) else {}
    response.data = {"error": {"code": code, "message": _message(response.data), "details": details}}
    return response


def api_error_response(exc: exceptions.APIException) -> JsonResponse:
    """The same shape for the async entry points that answer outside DRF's exception handling."""
    code = exc.get_codes()
    response = JsonResponse(
        {
            "error": {
                "code": code if isinstance(code, str) else "invalid",
                "message": _message(exc.detail),
                "details": {},
            }
        },
        status=exc.status_code,
    )
    wait = getattr(exc, "wait", None)
    if wait:
        response["Retry-After"] = str(int(wait))
    return response
