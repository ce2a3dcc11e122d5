"""Team-scoped API plumbing and the teams endpoint."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request

from accounts.models import ApiKey, Role, Team
from accounts.permissions import ApiKeyScopePermission
from accounts.selectors import team_ids_for, team_scoped, teams_for


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
        allowed_team_ids = team_ids_for(user=self.request.user, api_key=self.api_key, minimum_role=role)
        if not allowed_team_ids.filter(team_id=team_id).exists():
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


class TeamOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Team
        fields = ["id", "name", "slug", "created_at"]


class TeamViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TeamScopedViewSet):
    """The teams the caller belongs to (with an API key: the key's team)."""

    queryset = Team.objects.all()
    serializer_class = TeamOutputSerializer
    team_field = "pk"
