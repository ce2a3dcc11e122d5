"""Team-scoped API plumbing and the teams endpoint."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import mixins, serializers, viewsets
from rest_framework.permissions import IsAuthenticated

from accounts.models import ApiKey, Team
from accounts.permissions import ApiKeyScopePermission
from accounts.selectors import team_scoped


class TeamScopedViewSet(viewsets.GenericViewSet):
    """Every viewset over team-owned rows inherits this: its queryset is narrowed to the actor's
    teams before anything else sees it, so a view cannot forget to scope. Rows of other teams
    are then simply not found (404), which also hides that they exist."""

    team_field = "team"
    permission_classes = [IsAuthenticated, ApiKeyScopePermission]

    def get_queryset(self) -> QuerySet[Any]:
        queryset = super().get_queryset()
        api_key = self.request.auth if isinstance(self.request.auth, ApiKey) else None
        return team_scoped(queryset, user=self.request.user, api_key=api_key, team_field=self.team_field)


class TeamOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Team
        fields = ["id", "name", "slug", "created_at"]


class TeamViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TeamScopedViewSet):
    """The teams the caller belongs to (with an API key: the key's team)."""

    queryset = Team.objects.all()
    serializer_class = TeamOutputSerializer
    team_field = "pk"
