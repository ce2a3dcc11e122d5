"""/api/v1/providers/ and /api/v1/models/: members read, team admins change, launch, terminate, test."""

from __future__ import annotations

from typing import Any

from django.db.models import ProtectedError
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role
from core.outbound import outbound_url_check
from models_registry.models import ModelEvent, ModelRegistration, Provider, ProviderKind
from models_registry.providers import client_for
from models_registry.providers.xinference import XinferenceClient
from models_registry.selectors import team_providers
from models_registry.services import (
    provider_create,
    provider_update,
    registration_create,
    registration_launch,
    registration_terminate,
    registration_test,
)
from restapi.serializers import StrictFieldsMixin
from restapi.viewsets import TeamScopedModelViewSet

ADMIN_ONLY = {
    action: Role.ADMIN for action in ("create", "update", "partial_update", "destroy", "launch", "terminate", "test")
}


class ProviderSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id", required=False, help_text="Defaults to your only team.")
    api_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        help_text="Stored encrypted; never shown again. A new endpoint without a new api_key drops the stored one.",
    )
    has_credentials = serializers.BooleanField(read_only=True)

    class Meta:
        model = Provider
        fields = ["id", "team", "name", "kind", "endpoint", "api_key", "has_credentials", "is_embedded", "created_at"]
        read_only_fields = ["is_embedded", "created_at"]

    def validate_endpoint(self, endpoint: str) -> str:
        """The SSRF guard on what users type (the embedded Xinference, registered by bootstrap
        from the operator's configuration, never passes through here); an unchanged endpoint is
        not judged again."""
        if self.instance is None or endpoint != self.instance.endpoint:
            outbound_url_check(endpoint)
        return endpoint


class FamilySerializer(serializers.Serializer):
    model_name = serializers.CharField()
    is_builtin = serializers.BooleanField()


class RemoteModelSerializer(serializers.Serializer):
    uid = serializers.CharField()
    kind = serializers.CharField()


class ProviderViewSet(TeamScopedModelViewSet):
    """Model servers of your teams. The API key of a provider is write-only."""

    queryset = Provider.objects.select_related("team")
    serializer_class = ProviderSerializer
    action_roles = ADMIN_ONLY
    filterset_fields = ["kind", "team"]

    def perform_create(self, serializer: serializers.BaseSerializer[Provider]) -> None:
        data = serializer.validated_data
        serializer.instance = provider_create(
            team=self.target_team(data.get("team_id"), Role.ADMIN),
            name=data["name"],
            kind=data["kind"],
            endpoint=data["endpoint"],
            api_key=data.get("api_key", ""),
        )

    def perform_update(self, serializer: serializers.BaseSerializer[Provider]) -> None:
        data = dict(serializer.validated_data)
        if "team_id" in data and data["team_id"] != serializer.instance.team_id:  # type: ignore[union-attr]
            raise ValidationError({"team": "A provider cannot move to another team: create it there."})
        # A new endpoint without a new api_key drops the stored key (provider_update says why).
        serializer.instance = provider_update(
            provider=serializer.instance,  # type: ignore[arg-type]
            name=data.get("name"),
            kind=data.get("kind"),
            endpoint=data.get("endpoint"),
            api_key=data.get("api_key"),
        )

    def perform_destroy(self, instance: Provider) -> None:
        try:
            instance.delete()
        except ProtectedError as exc:
            raise ValidationError(
                {"detail": "Models are registered on this provider: delete those registrations first."}
            ) from exc

    @extend_schema(request=None, responses=RemoteModelSerializer(many=True))
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Test the connection: the models the server serves right now."""
        provider = self.get_object()
        models = client_for(provider).running_models()
        return Response(RemoteModelSerializer(models, many=True).data)

    @extend_schema(
        # Not `kind`: that name filters the providers themselves (filterset_fields).
        parameters=[OpenApiParameter("model_kind", enum=["llm", "embedding", "rerank"], default="llm")],
        responses=FamilySerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def families(self, request: Request, pk: str | None = None) -> Response:
        """Xinference only: the built-in and custom model families of one kind, to launch from."""
        provider = self.get_object()
        kind = request.query_params.get("model_kind", "llm")
        if kind not in ("llm", "embedding", "rerank"):
            raise ValidationError({"model_kind": "Choose llm, embedding or rerank."})
        client = client_for(provider)
        if not isinstance(client, XinferenceClient):
            raise ValidationError({"detail": "Only Xinference providers have model families to launch."})
        families = [
            {"model_name": family["model_name"], "is_builtin": bool(family.get("is_builtin"))}
            for family in client.families(kind)
        ]
        return Response(FamilySerializer(families, many=True).data)


class ModelEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelEvent
        fields = ["kind", "message", "duration_ms", "created_at"]


class ModelRegistrationSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    provider = serializers.PrimaryKeyRelatedField(queryset=Provider.objects.none())
    recent_events = serializers.SerializerMethodField()

    class Meta:
        model = ModelRegistration
        fields = [
            "id",
            "team",
            "provider",
            "kind",
            "name",
            "provider_model_uid",
            "launch_spec",
            "custom_spec",
            "dimensions",
            "context_length",
            "keep_running",
            "status",
            "last_error",
            "last_checked_at",
            "recent_events",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["team", "status", "last_error", "last_checked_at", "created_at", "updated_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            api_key = self.context["view"].api_key
            self.fields["provider"].queryset = team_providers(user=request.user, api_key=api_key)

    @extend_schema_field(ModelEventSerializer(many=True))
    def get_recent_events(self, registration: ModelRegistration) -> list[dict[str, Any]]:
        events = registration.events.all()[:5]
        return ModelEventSerializer(events, many=True).data  # type: ignore[return-value]

    def validate_kind(self, kind: str) -> str:
        if self.instance is not None and kind != self.instance.kind:
            raise ValidationError("The kind of a registration cannot change: register the model anew.")
        return kind


class ModelRegistrationViewSet(TeamScopedModelViewSet):
    """LLM, embedding and rerank models registered on your teams' providers, with their status.
    Team admins launch, terminate and test them; a model kept running is relaunched whenever it
    is found stopped (for example after Xinference restarts)."""

    queryset = ModelRegistration.objects.select_related("provider", "team")
    serializer_class = ModelRegistrationSerializer
    action_roles = ADMIN_ONLY
    filterset_fields = ["kind", "status", "provider", "team"]

    def perform_create(self, serializer: serializers.BaseSerializer[ModelRegistration]) -> None:
        data = serializer.validated_data
        provider: Provider = data["provider"]
        self.require_role(provider.team_id, Role.ADMIN)
        serializer.instance = registration_create(
            provider=provider,
            kind=data["kind"],
            name=data["name"],
            provider_model_uid=data["provider_model_uid"],
            launch_spec=data.get("launch_spec"),
            custom_spec=data.get("custom_spec"),
            dimensions=data.get("dimensions"),
            context_length=data.get("context_length"),
            keep_running=data.get("keep_running", provider.kind == ProviderKind.XINFERENCE),
        )

    def perform_update(self, serializer: serializers.BaseSerializer[ModelRegistration]) -> None:
        provider = serializer.validated_data.get("provider")
        if provider is not None and provider.pk != serializer.instance.provider_id:  # type: ignore[union-attr]
            raise ValidationError({"provider": "A registration cannot move to another provider: register it there."})
        serializer.save()

    @extend_schema(request=None, responses=ModelRegistrationSerializer)
    @action(detail=True, methods=["post"])
    def launch(self, request: Request, pk: str | None = None) -> Response:
        """Launch now and keep it running. Waits for the launch (seconds to minutes)."""
        registration = registration_launch(registration=self.get_object())
        return Response(self.get_serializer(registration).data)

    @extend_schema(request=None, responses=ModelRegistrationSerializer)
    @action(detail=True, methods=["post"])
    def terminate(self, request: Request, pk: str | None = None) -> Response:
        """Stop it and stop keeping it running."""
        registration = registration_terminate(registration=self.get_object())
        return Response(self.get_serializer(registration).data)

    @extend_schema(
        request=None,
        responses=inline_serializer(
            "ModelTestResult",
            {
                "ok": serializers.BooleanField(),
                "detail": serializers.CharField(),
                "duration_ms": serializers.IntegerField(),
            },
        ),
    )
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """One real call: a short chat, an embedding, or a rerank."""
        result = registration_test(registration=self.get_object())
        return Response(
            {"ok": result.ok, "detail": result.detail, "duration_ms": result.duration_ms}, status.HTTP_200_OK
        )
