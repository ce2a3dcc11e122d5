"""API key scopes: a key may read with `read`, change with `write`; session users hold every scope."""

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
        needed = getattr(view, "required_scope", None) or (
            Scope.READ if request.method in SAFE_METHODS else Scope.WRITE
        )
        return needed in request.auth.scopes or Scope.ADMIN in request.auth.scopes
