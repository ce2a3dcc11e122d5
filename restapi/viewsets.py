"""The team-scoped viewsets every team-owned endpoint inherits: rows of other teams are never
found, and each action names the role it needs."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from rest_framework import mixins, viewsets
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request

from accounts.models import ApiKey, Role, Team
from accounts.permissions import ApiKeyScopePermission
from accounts.selectors import has_team_role, team_scoped, teams_for


class TeamScopedViewSet(viewsets.GenericViewSet):
    """Every viewset over team-owned rows inherits this: its queryset is narrowed to the actor's
    teams before anything else sees it, so a view cannot forget to scope. Rows of other teams
    are then simply not found (404), which also hides that they exist. `action_roles` names the
    minimum role an action needs in the object's team (403 otherwise); unnamed actions need
    membership only."""

    team_field = "team"
    action_roles: dict[str, Role] = {}
    permission_classes = [IsAuthenticated, ApiKeyScopePermission]

    @property
    def api_key(self) -> ApiKey | None:
        return self.request.auth if isinstance(self.request.auth, ApiKey) else None

    def get_queryset(self) -> QuerySet[Any]:
        queryset = super().get_queryset()
        return team_scoped(queryset, user=self.request.user, api_key=self.api_key, team_field=self.team_field)

    def check_object_permissions(self, request: Request, obj: Any) -> None:
        super().check_object_permissions(request, obj)
        role = self.action_roles.get(self.action or "")
        if role is not None:
            team_id = obj.pk if self.team_field == "pk" else getattr(obj, f"{self.team_field}_id")
            self.require_role(team_id, role)

    def require_role(self, team_id: int, role: Role) -> None:
        if not has_team_role(user=self.request.user, api_key=self.api_key, team_id=team_id, role=role):
            needed = "admins and owners" if role in (Role.ADMIN, Role.OWNER) else "members"
            raise PermissionDenied(f"Only the team's {needed} may do this: ask one of them.")

    def target_team(self, team_id: int | None, role: Role) -> Team:
        """The team a new object goes into: the given one (or the API key's, or the caller's only
        team), in which the caller must hold `role`."""
        teams = teams_for(user=self.request.user, api_key=self.api_key)
        if team_id is None:
            candidates = list(teams[:2])
            if len(candidates) != 1:
                raise ValidationError({"team": "Say which team: you belong to several (or none)."})
            team = candidates[0]
        else:
            team = get_object_or_404(teams, pk=team_id)
        self.require_role(team.pk, role)
        return team


class TeamScopedModelViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    TeamScopedViewSet,
):
    """Create, read, update and delete over team-owned rows."""
