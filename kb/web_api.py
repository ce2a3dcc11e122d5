"""/api/v1/web-sources/{id}/ (read, delete, `sync/`); a knowledge base's list and create live on
its viewset (`/api/v1/knowledge-bases/{id}/web-sources/`, kb.api). Members write, as they upload
documents; viewers read; another team's are 404."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role
from kb.models import WebPage, WebSource, WebSourceKind
from kb.selectors import web_sources_visible
from kb.web_sources import DEFAULT_SYNC_INTERVAL_HOURS, web_source_delete, web_source_sync_request
from restapi.serializers import StrictFieldsMixin
from restapi.viewsets import TeamScopedViewSet

WRITE_ROLE = Role.MEMBER  # as uploading documents (KnowledgeBaseViewSet.documents)


class WebSourceInputSerializer(StrictFieldsMixin, serializers.Serializer):
    url = serializers.CharField(max_length=2000, help_text="An http(s) page or sitemap the server may reach.")
    kind = serializers.ChoiceField(
        choices=WebSourceKind.choices,
        default=WebSourceKind.AUTO,
        help_text="`page` (that page alone), `sitemap` (its pages), or `auto`: decided by the content.",
    )
    max_pages = serializers.IntegerField(
        required=False, min_value=1, help_text="Pages fetched at most; defaults to KB_WEB_MAX_PAGES."
    )
    sync_interval_hours = serializers.IntegerField(
        default=DEFAULT_SYNC_INTERVAL_HOURS, min_value=0, help_text="0: synced only on request."
    )


class WebPageSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebPage
        fields = ["url", "status", "error", "document", "fetched_at"]
        read_only_fields = fields


class WebSourceSerializer(serializers.ModelSerializer):
    progress = serializers.IntegerField(read_only=True, help_text="Pages done of the sync's pages, 0-100.")

    class Meta:
        model = WebSource
        fields = [
            "id",
            "team",
            "knowledge_base",
            "url",
            "kind",
            "max_pages",
            "sync_interval_hours",
            "status",
            "progress",
            "pages_done",
            "pages_total",
            "last_synced_at",
            "next_sync_at",
            "last_error",
            "notice",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class WebSourceDetailSerializer(WebSourceSerializer):
    pages = WebPageSerializer(many=True, read_only=True)

    class Meta(WebSourceSerializer.Meta):
        fields = [*WebSourceSerializer.Meta.fields, "pages"]
        read_only_fields = fields


class WebSourceViewSet(mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TeamScopedViewSet):
    """A web source with its pages (status and reason each); delete removes its documents."""

    queryset = WebSource.objects.all()
    serializer_class = WebSourceDetailSerializer
    action_roles = {"destroy": WRITE_ROLE, "sync": WRITE_ROLE}

    def get_queryset(self) -> QuerySet[WebSource]:
        return web_sources_visible(user=self.request.user, api_key=self.api_key).prefetch_related("pages")

    def perform_destroy(self, instance: WebSource) -> None:
        web_source_delete(source=instance)

    @extend_schema(request=None, responses={202: WebSourceSerializer})
    @action(detail=True, methods=["post"])
    def sync(self, request: Request, pk: str | None = None) -> Response:
        """Sync now (a sync queued or under way already is left to finish)."""
        source = web_source_sync_request(source=self.get_object())
        return Response(WebSourceSerializer(source).data, status=status.HTTP_202_ACCEPTED)
