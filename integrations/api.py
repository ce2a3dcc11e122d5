"""/api/v1/webhooks/ (+ {id}/deliveries/, {id}/test/): members see the team's webhooks; team
admins create, change, delete and test them and read their deliveries (payloads carry
conversation content). The signing secret is in the create response only."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role, User
from integrations.models import DeliveryStatus, Webhook, WebhookDelivery, WebhookEvent
from integrations.services import webhook_create, webhook_ping, webhook_update
from restapi.pagination import IdCursorPagination
from restapi.serializers import StrictFieldsMixin
from restapi.viewsets import TeamScopedModelViewSet


class WebhookSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id", required=False, help_text="Defaults to your only team.")
    url = serializers.URLField(max_length=2000, help_text="Where events are POSTed; checked against the SSRF guard.")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.choices), allow_empty=False, help_text="Events to send."
    )

    class Meta:
        model = Webhook
        fields = ["id", "team", "url", "description", "events", "is_active", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        read_only=True,
        help_text="The signing key of X-Chatplatform-Signature. Shown only in this response: keep it now.",
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "webhook",
            "event",
            "payload",
            "status",
            "attempts",
            "response_status",
            "last_error",
            "next_attempt_at",
            "created_at",
            "delivered_at",
        ]
        read_only_fields = fields


ADMIN_ONLY = {action: Role.ADMIN for action in ("update", "partial_update", "destroy", "test", "deliveries")}


class WebhookViewSet(TeamScopedModelViewSet):
    """Signed outgoing webhooks of your teams: each event is POSTed as JSON with the headers
    X-Chatplatform-Event, X-Chatplatform-Delivery, X-Chatplatform-Timestamp and
    X-Chatplatform-Signature (`sha256=` HMAC-SHA256 of `{timestamp}.{body}` keyed with the secret)."""

    queryset = Webhook.objects.all()
    serializer_class = WebhookSerializer
    action_roles = ADMIN_ONLY
    filterset_fields = ["team", "is_active"]

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return WebhookCreatedSerializer if self.action == "create" else WebhookSerializer

    def perform_create(self, serializer: serializers.BaseSerializer[Webhook]) -> None:
        data = serializer.validated_data
        serializer.instance = webhook_create(
            team=self.target_team(data.get("team_id"), Role.ADMIN),
            url=data["url"],
            events=data["events"],
            description=data.get("description", ""),
            created_by=self.request.user if isinstance(self.request.user, User) else None,
        )

    def perform_update(self, serializer: serializers.BaseSerializer[Webhook]) -> None:
        webhook = serializer.instance
        assert webhook is not None
        changes = dict(serializer.validated_data)
        if changes.pop("team_id", webhook.team_id) != webhook.team_id:
            raise ValidationError({"team": "A webhook cannot move to another team: create it there."})
        serializer.instance = webhook_update(webhook=webhook, **changes)

    @extend_schema(
        parameters=[OpenApiParameter("status", enum=DeliveryStatus.values, required=False)],
        responses=WebhookDeliverySerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        """The webhook's deliveries, newest first: status, attempts, the receiver's last answer."""
        webhook = self.get_object()
        deliveries: QuerySet[WebhookDelivery] = WebhookDelivery.objects.filter(webhook=webhook)
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in DeliveryStatus.values:
                raise ValidationError({"status": f"Choose one of {', '.join(DeliveryStatus.values)}."})
            deliveries = deliveries.filter(status=wanted)
        paginator = IdCursorPagination()
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: WebhookDeliverySerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Send a `ping` event now (queued); follow it in deliveries/."""
        delivery = webhook_ping(webhook=self.get_object())
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
