"""API key scopes: a key may read with `read`, change with `write`; session users hold every scope.
A view names another scope with `required_scope`, or per method with `required_scopes`."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from accounts.models import ApiKey, Scope


class ApiKeyScopePermission(BasePermission):
    message = "This API key lacks the scope this request needs: create a key with it."

    def has_permission(self, request: Request, view: Any) -> bool:
        if not isinstance(request.auth, ApiKey):
            return True
        return key_has_scope(request.auth, scope_needed(request, view))


def scope_needed(request: Request, view: Any) -> str:
    by_method: dict[str, str] = getattr(view, "required_scopes", {})
    return (
        by_method.get(request.method or "")
        or getattr(view, "required_scope", None)
        or (Scope.READ if request.method in SAFE_METHODS else Scope.WRITE)
    )


def key_has_scope(key: ApiKey, scope: str) -> bool:
    return scope in key.scopes or Scope.ADMIN in key.scopes
