"""The teams (with members), API keys and usage endpoints."""

from __future__ import annotations

from typing import Any

import django_filters
from django.conf import settings
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import ApiKey, Membership, Role, Scope, Team, Usage, User
from accounts.selectors import team_ids_for
from accounts.services import api_key_create, api_key_revoke, membership_remove, membership_set, team_create
from restapi.serializers import StrictFieldsMixin
from restapi.viewsets import TeamScopedModelViewSet, TeamScopedViewSet


class TeamSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    slug = serializers.SlugField(max_length=60, required=False)

    class Meta:
        model = Team
        fields = ["id", "name", "slug", "rate_limit_per_minute", "created_at"]
        read_only_fields = ["rate_limit_per_minute", "created_at"]  # set by the operator, in the admin


class MemberSerializer(serializers.ModelSerializer):
    user = serializers.IntegerField(source="user_id", read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["user", "username", "role", "created_at"]
        read_only_fields = ["created_at"]


class MemberAddSerializer(StrictFieldsMixin, serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class MemberRoleSerializer(StrictFieldsMixin, serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class TeamViewSet(TeamScopedModelViewSet):
    """The teams the caller belongs to (with an API key: the key's team only), and their members.
    Anyone signed in may create a team (and owns it); admins rename it and manage members; only
    owners delete it or make other owners."""

    queryset = Team.objects.all()
    serializer_class = TeamSerializer
    team_field = "pk"
    action_roles = {"update": Role.ADMIN, "partial_update": Role.ADMIN, "destroy": Role.OWNER}

    def perform_create(self, serializer: serializers.BaseSerializer[Team]) -> None:
        if self.api_key is not None:
            # A key acts in its own team only; it could not even see the team it created.
            raise PermissionDenied("Create teams while signed in, not with an API key.")
        data = serializer.validated_data
        user = self.request.user
        assert isinstance(user, User)
        serializer.instance = team_create(name=data["name"], owner=user, slug=data.get("slug", ""))

    def perform_update(self, serializer: serializers.BaseSerializer[Team]) -> None:
        serializer.save(slug=serializer.instance.slug if serializer.instance else None)

    @extend_schema(methods=["get"], responses=MemberSerializer(many=True))
    @extend_schema(methods=["post"], request=MemberAddSerializer, responses={201: MemberSerializer})
    @action(detail=True, methods=["get", "post"], pagination_class=None, serializer_class=MemberSerializer)
    def members(self, request: Request, pk: str | None = None) -> Response:
        team = self.get_object()
        if request.method == "GET":
            rows = Membership.objects.filter(team=team).select_related("user")
            return Response(MemberSerializer(rows, many=True).data)
        data = MemberAddSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        role = Role(data.validated_data["role"])
        self.require_role(team.pk, Role.OWNER if role == Role.OWNER else Role.ADMIN)
        user = User.objects.filter(username=data.validated_data["username"], is_active=True).first()
        if user is None:
            raise ValidationError({"username": "No active user has this name: ask them to sign up first."})
        membership = membership_set(team=team, user=user, role=role)
        return Response(MemberSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["patch"], request=MemberRoleSerializer, responses=MemberSerializer)
    @extend_schema(methods=["delete"], request=None, responses={204: None})
    @action(
        detail=True,
        methods=["patch", "delete"],
        url_path=r"members/(?P<user_id>\d+)",
        serializer_class=MemberSerializer,
    )
    def member(self, request: Request, pk: str | None = None, user_id: str = "") -> Response:
        team = self.get_object()
        membership = get_object_or_404(Membership.objects.select_related("user"), team=team, user_id=user_id)
        if request.method == "DELETE":
            if membership.user_id != request.user.pk:  # leaving a team needs no role
                self.require_role(team.pk, Role.OWNER if membership.role == Role.OWNER else Role.ADMIN)
            membership_remove(team=team, user=membership.user)
            return Response(status=status.HTTP_204_NO_CONTENT)
        data = MemberRoleSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        role = Role(data.validated_data["role"])
        touches_owner = Role.OWNER in (role, membership.role)
        self.require_role(team.pk, Role.OWNER if touches_owner else Role.ADMIN)
        membership = membership_set(team=team, user=membership.user, role=role)
        return Response(MemberSerializer(membership).data)


class ApiKeySerializer(StrictFieldsMixin, serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id", required=False)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), required=False, allow_empty=False
    )
    rate_limit_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "team",
            "user",
            "name",
            "prefix",
            "scopes",
            "expires_at",
            "rate_limit_per_minute",
            "last_used_at",
            "revoked_at",
            "created_at",
        ]
        read_only_fields = ["user", "prefix", "last_used_at", "revoked_at", "created_at"]

    def validate_rate_limit_per_minute(self, value: int | None) -> int | None:
        if value is not None and value > settings.API_RATE_LIMIT_KEY_PER_MINUTE:
            raise ValidationError(
                f"at most {settings.API_RATE_LIMIT_KEY_PER_MINUTE} (the platform's limit per key); "
                "an operator may raise a key's limit in the admin"
            )
        return value


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret: shown only in this response.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    TeamScopedViewSet,
):
    """API keys: everyone sees and revokes their own; team admins see and revoke all of the
    team's. The secret is shown once, in the create response; DELETE revokes (the row stays, for
    the audit trail). With an API key, managing keys needs the `admin` scope, and a key never
    creates a key with scopes it lacks."""

    queryset = ApiKey.objects.select_related("team")
    serializer_class = ApiKeySerializer
    required_scope = Scope.ADMIN
    filterset_fields = ["team", "user"]

    def get_queryset(self) -> QuerySet[ApiKey]:
        rows = super().get_queryset()
        admin_teams = team_ids_for(user=self.request.user, api_key=self.api_key, minimum_role=Role.ADMIN)
        return rows.filter(Q(user=self.request.user) | Q(team_id__in=admin_teams))

    @extend_schema(responses={201: ApiKeyCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        team = self.target_team(data.get("team_id"), Role.VIEWER)
        user = self.request.user
        assert isinstance(user, User)
        key, secret = api_key_create(
            user=user,
            team=team,
            name=data["name"],
            scopes=data.get("scopes"),
            expires_at=data.get("expires_at"),
            rate_limit_per_minute=data.get("rate_limit_per_minute"),
            issued_by=self.api_key,
        )
        body = {**ApiKeySerializer(key).data, "key": secret}
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiKey) -> None:
        api_key_revoke(key=instance)


class UsageSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Usage
        fields = ["id", "team", "user", "username", "model_name", "day", "requests", "tokens_in", "tokens_out"]
        read_only_fields = fields


class UsageFilter(django_filters.FilterSet):
    since = django_filters.DateFilter(field_name="day", lookup_expr="gte")
    until = django_filters.DateFilter(field_name="day", lookup_expr="lte")

    class Meta:
        model = Usage
        fields = ["team", "user", "model_name", "since", "until"]


class UsageViewSet(mixins.ListModelMixin, TeamScopedViewSet):
    """Tokens per user, team, model and day (UTC). Members see their own rows; team admins see
    the whole team's."""

    queryset = Usage.objects.select_related("user")
    serializer_class = UsageSerializer
    filterset_class = UsageFilter

    def get_queryset(self) -> QuerySet[Usage]:
        rows = super().get_queryset()
        admin_teams = team_ids_for(user=self.request.user, api_key=self.api_key, minimum_role=Role.ADMIN)
        return rows.filter(Q(user=self.request.user) | Q(team_id__in=admin_teams))
