"""/api/v1/knowledge-bases/ (with documents/, search/, rebuild/), /api/v1/documents/ (with
chunks/, chunk-edits/), /api/v1/chunks/ and /api/v1/chunk-edits/.

Viewers read and search; members upload, delete and re-index documents and edit their chunks;
admins create, change, rebuild and delete knowledge bases."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import ApiKey, Role, User
from accounts.selectors import team_scoped
from evaluation.api import EvaluationSetSerializer, sets_with_counts
from evaluation.services import evaluation_set_create
from kb.chunk_edits import (
    chunk_edit,
    chunk_edit_delete,
    chunk_edits_with_state,
    chunk_view,
    chunk_views,
    document_chunks,
)
from kb.models import (
    DEFAULT_CHUNK_HEADERS,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SPLITTER,
    Chunk,
    ChunkEdit,
    Document,
    KnowledgeBase,
    RetrievalMode,
    Splitter,
)
from kb.retrieval import SearchRequest, kb_search
from kb.selectors import chunk_edits_visible, chunks_visible, documents_visible, knowledge_bases_visible
from kb.services import (
    document_delete,
    document_reindex,
    documents_upload,
    kb_create,
    kb_delete,
    kb_rebuild,
    kb_rebuild_decide,
    kb_update,
)
from kb.web_api import WRITE_ROLE as WEB_SOURCE_WRITE_ROLE
from kb.web_api import WebSourceInputSerializer, WebSourceSerializer
from kb.web_sources import web_source_create
from models_registry.models import ModelKind, ModelRegistration
from models_registry.selectors import team_default_model
from restapi.pagination import IdCursorPagination
from restapi.serializers import StrictFieldsMixin, validated
from restapi.viewsets import TeamScopedModelViewSet, TeamScopedViewSet


class KnowledgeBaseSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id", required=False, help_text="Defaults to your only team.")
    embedding_model = serializers.PrimaryKeyRelatedField(
        queryset=ModelRegistration.objects.none(),  # the caller's teams' models: set per request
        required=False,
        help_text="Defaults to the team's default embedding model.",
    )
    document_count = serializers.SerializerMethodField()
    rebuilding = serializers.BooleanField(read_only=True)

    class Meta:
        model = KnowledgeBase
        fields = [
            "id",
            "team",
            "name",
            "description",
            "embedding_model",
            "splitter",
            "chunk_size",
            "chunk_overlap",
            "chunk_headers",
            "generation",
            "rebuilding",
            "rebuild_gate",
            "rebuild_gate_reason",
            "vector_index",
            "document_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "generation",
            "rebuild_gate",
            "rebuild_gate_reason",
            "vector_index",
            "created_at",
            "updated_at",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            api_key = request.auth if isinstance(request.auth, ApiKey) else None
            self.fields["embedding_model"].queryset = team_scoped(
                ModelRegistration.objects.all(), user=request.user, api_key=api_key
            )

    def get_document_count(self, kb: KnowledgeBase) -> int:
        # Counted in the viewset's query (knowledge_bases_with_counts); a knowledge base just
        # created or changed comes from a service instead.
        counted = getattr(kb, "document_count", None)
        return counted if counted is not None else kb.documents.count()


def knowledge_bases_with_counts(queryset: QuerySet[KnowledgeBase]) -> QuerySet[KnowledgeBase]:
    """Each knowledge base's documents counted in the same query (a list was one query per row)."""
    return queryset.annotate(document_count=Count("documents"))


class DocumentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Document
        fields = [
            "id",
            "knowledge_base",
            "original_name",
            "sha256",
            "size_bytes",
            "content_type",
            "status",
            "progress",
            "stage_timings",
            "error",
            "notice",
            "chunk_count",
            "attempts",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class SearchInputSerializer(StrictFieldsMixin, serializers.Serializer):
    query = serializers.CharField(max_length=2000)
    top_k = serializers.IntegerField(min_value=1, max_value=100, default=5)
    mode = serializers.ChoiceField(choices=RetrievalMode.choices, default=RetrievalMode.HYBRID)
    score_threshold = serializers.FloatField(required=False, allow_null=True, default=None)
    document_ids = serializers.ListField(child=serializers.IntegerField(), required=False, allow_empty=True)
    mmr = serializers.BooleanField(default=False)
    mmr_lambda = serializers.FloatField(min_value=0, max_value=1, default=0.5)
    rerank_model = serializers.IntegerField(required=False, allow_null=True, help_text="A rerank registration id.")

    def to_internal_value(self, data: Any) -> Any:
        if hasattr(data, "keys"):
            unknown = set(data.keys()) - set(self.fields)
            if unknown:
                raise ValidationError({"detail": f"unknown fields: {', '.join(sorted(unknown))}"})
        return super().to_internal_value(data)


class HitSerializer(serializers.Serializer):
    chunk_id = serializers.IntegerField()
    document_id = serializers.IntegerField()
    document_name = serializers.CharField()
    text = serializers.CharField()
    score = serializers.FloatField()
    metadata = serializers.DictField()


class UploadResultSerializer(serializers.Serializer):
    documents = DocumentSerializer(many=True)
    duplicates = DocumentSerializer(many=True)
    rejected = serializers.ListField(child=serializers.DictField())


ADMIN_ACTIONS = {
    action: Role.ADMIN for action in ("update", "partial_update", "destroy", "rebuild", "rebuild_decision")
}


class KnowledgeBaseViewSet(TeamScopedModelViewSet):
    queryset = KnowledgeBase.objects.select_related("embedding_model__provider")
    serializer_class = KnowledgeBaseSerializer
    action_roles = {**ADMIN_ACTIONS}
    filterset_fields = ["team"]
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet[KnowledgeBase]:
        visible = knowledge_bases_visible(user=self.request.user, api_key=self.api_key).select_related(
            "embedding_model__provider"
        )
        # Only the answers that show the count pay for it (not a search or an upload's lookup).
        return knowledge_bases_with_counts(visible) if self.action in ("list", "retrieve") else visible

    def perform_create(self, serializer: serializers.BaseSerializer[KnowledgeBase]) -> None:
        data = serializer.validated_data
        team = self.target_team(data.get("team_id"), Role.ADMIN)
        model = data.get("embedding_model") or team_default_model(team=team, kind=ModelKind.EMBEDDING)
        if model is None:
            raise ValidationError({"embedding_model": "The team has no default embedding model: name one."})
        serializer.instance = kb_create(
            team=team,
            name=data["name"],
            description=data.get("description", ""),
            embedding_model=model,
            splitter=data.get("splitter", DEFAULT_SPLITTER),
            chunk_size=data.get("chunk_size", DEFAULT_CHUNK_SIZE),
            chunk_overlap=data.get("chunk_overlap", DEFAULT_CHUNK_OVERLAP),
            chunk_headers=data.get("chunk_headers", DEFAULT_CHUNK_HEADERS),
        )

    def perform_update(self, serializer: serializers.BaseSerializer[KnowledgeBase]) -> None:
        changes = dict(serializer.validated_data)
        kb = serializer.instance
        assert kb is not None
        if changes.pop("team_id", kb.team_id) != kb.team_id:
            raise ValidationError({"team": "A knowledge base cannot move to another team."})
        serializer.instance = kb_update(kb=kb, **changes)

    def perform_destroy(self, instance: KnowledgeBase) -> None:
        kb_delete(kb=instance)

    @extend_schema(
        methods=["GET"], responses=DocumentSerializer(many=True), description="The knowledge base's documents."
    )
    @extend_schema(
        methods=["POST"],
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        responses={201: UploadResultSerializer},
        description="Upload one or more files (field `file`, repeated); ZIP archives are expanded.",
    )
    @action(detail=True, methods=["get", "post"], parser_classes=[MultiPartParser, FormParser])
    def documents(self, request: Request, pk: str | None = None) -> Response:
        kb = self.get_object()
        if request.method == "GET":
            documents = Document.objects.filter(knowledge_base=kb)
            paginator = IdCursorPagination()
            page = paginator.paginate_queryset(documents, request, view=self)
            return paginator.get_paginated_response(DocumentSerializer(page, many=True).data)
        self.require_role(kb.team_id, Role.MEMBER)
        uploads = request.FILES.getlist("file")
        if not uploads:
            raise ValidationError({"file": "Attach one or more files in the multipart field `file`."})
        result = documents_upload(kb=kb, uploads=[(upload, upload.name or "") for upload in uploads])
        body = {
            "documents": DocumentSerializer(result.created, many=True).data,
            "duplicates": DocumentSerializer(result.duplicates, many=True).data,
            "rejected": [{"name": item.name, "reason": item.reason} for item in result.rejected],
        }
        if not result.created and not result.duplicates:
            reasons = "; ".join(f"{item.name}: {item.reason}" for item in result.rejected)
            return Response(
                {"error": {"code": "upload_rejected", "message": f"No file was accepted. {reasons}", "details": body}},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=SearchInputSerializer,
        responses=inline_serializer("SearchResults", {"results": HitSerializer(many=True)}),
    )
    @action(detail=True, methods=["post"])
    def search(self, request: Request, pk: str | None = None) -> Response:
        """Hit testing: the chunks and scores a query retrieves, in the mode asked for."""
        kb = self.get_object()
        data = validated(SearchInputSerializer, request.data)
        rerank_model = None
        if data.get("rerank_model") is not None:
            rerank_model = (
                ModelRegistration.objects.filter(pk=data["rerank_model"], team_id=kb.team_id, kind=ModelKind.RERANK)
                .select_related("provider")
                .first()
            )
            if rerank_model is None:
                raise ValidationError({"rerank_model": "No rerank model with this id in the team."})
        hits = kb_search(
            knowledge_bases=[kb],
            request=SearchRequest(
                query=data["query"],
                top_k=data["top_k"],
                mode=data["mode"],
                score_threshold=data.get("score_threshold"),
                document_ids=data.get("document_ids") or None,
                mmr=data["mmr"],
                mmr_lambda=data["mmr_lambda"],
                rerank_model=rerank_model,
            ),
        )
        return Response({"results": HitSerializer(hits, many=True).data})

    @extend_schema(
        request=inline_serializer(
            "RebuildInput",
            {
                "embedding_model": serializers.IntegerField(required=False),
                "splitter": serializers.ChoiceField(choices=Splitter.choices, required=False),
                "chunk_size": serializers.IntegerField(required=False),
                "chunk_overlap": serializers.IntegerField(required=False),
                "chunk_headers": serializers.BooleanField(required=False),
            },
        ),
        responses=KnowledgeBaseSerializer,
    )
    @action(detail=True, methods=["post"])
    def rebuild(self, request: Request, pk: str | None = None) -> Response:
        """Re-chunk and re-embed every document beside the live index, then swap (no downtime)."""
        kb = self.get_object()
        data = request.data if isinstance(request.data, dict) else {}
        model = None
        model_id = _optional_int(data, "embedding_model")
        if model_id is not None:
            model = ModelRegistration.objects.filter(pk=model_id, team_id=kb.team_id, kind=ModelKind.EMBEDDING).first()
            if model is None:
                raise ValidationError({"embedding_model": "No embedding model with this id in the team."})
        kb = kb_rebuild(
            kb=kb,
            embedding_model=model,
            splitter=data.get("splitter"),
            chunk_size=_optional_int(data, "chunk_size"),
            chunk_overlap=_optional_int(data, "chunk_overlap"),
            chunk_headers=_optional_bool(data, "chunk_headers"),
        )
        return Response(self.get_serializer(kb).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=inline_serializer("RebuildDecision", {"decision": serializers.ChoiceField(choices=["swap", "keep"])}),
        responses=KnowledgeBaseSerializer,
        description="For a rebuild held by its evaluation gate: `swap` to it anyway, or `keep` the live generation.",
    )
    @action(detail=True, methods=["post"], url_path="rebuild-decision")
    def rebuild_decision(self, request: Request, pk: str | None = None) -> Response:
        kb = self.get_object()
        decision = request.data.get("decision") if isinstance(request.data, dict) else None
        if decision not in ("swap", "keep"):
            raise ValidationError({"decision": "Say `swap` (use the held rebuild) or `keep` (the live generation)."})
        kb = kb_rebuild_decide(kb=kb, swap=decision == "swap")
        return Response(self.get_serializer(kb).data)

    @extend_schema(methods=["GET"], responses=EvaluationSetSerializer(many=True), description="Evaluation sets.")
    @extend_schema(
        methods=["POST"],
        request=EvaluationSetSerializer,
        responses={201: EvaluationSetSerializer},
        description="A new evaluation set (admins).",
    )
    @action(detail=True, methods=["get", "post"], url_path="evaluation-sets")
    def evaluation_sets(self, request: Request, pk: str | None = None) -> Response:
        kb = self.get_object()
        if request.method == "GET":
            sets = sets_with_counts(kb.evaluation_sets.all())
            return Response(EvaluationSetSerializer(sets, many=True).data)
        self.require_role(kb.team_id, Role.ADMIN)
        data = validated(EvaluationSetSerializer, request.data)
        evaluation_set = evaluation_set_create(
            kb=kb,
            name=data.get("name", ""),
            description=data.get("description", ""),
            gate_threshold=data.get("gate_threshold"),
        )
        created = sets_with_counts(kb.evaluation_sets.filter(pk=evaluation_set.pk)).get()
        return Response(EvaluationSetSerializer(created).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["GET"], responses=WebSourceSerializer(many=True), description="Web sources.")
    @extend_schema(
        methods=["POST"],
        request=WebSourceInputSerializer,
        responses={202: WebSourceSerializer},
        description="Add a page or sitemap (members); its first sync is queued. An address the server may not "
        "reach is 400 `unsafe_url`.",
    )
    @action(detail=True, methods=["get", "post"], url_path="web-sources")
    def web_sources(self, request: Request, pk: str | None = None) -> Response:
        kb = self.get_object()
        if request.method == "GET":
            return Response(WebSourceSerializer(kb.web_sources.all(), many=True).data)
        self.require_role(kb.team_id, WEB_SOURCE_WRITE_ROLE)
        data = validated(WebSourceInputSerializer, request.data)
        source = web_source_create(
            kb=kb,
            url=data["url"],
            kind=data["kind"],
            max_pages=data.get("max_pages"),
            sync_interval_hours=data["sync_interval_hours"],
            created_by=request.user if isinstance(request.user, User) else None,
        )
        return Response(WebSourceSerializer(source).data, status=status.HTTP_202_ACCEPTED)


def _optional_bool(data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise ValidationError({key: "Must be true or false."})


def _optional_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError({key: "Must be a whole number."})
    return value


# Who may correct or disable chunks: those who may upload, reindex and delete documents.
CHUNK_EDIT_ROLE = Role.MEMBER


class ChunkPagination(IdCursorPagination):
    ordering = "ordinal"
    page_size = 100


class ChunkSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="chunk.pk")
    document = serializers.IntegerField(source="chunk.document_id")
    ordinal = serializers.IntegerField(source="chunk.ordinal")
    text = serializers.CharField(source="chunk.text")
    metadata = serializers.DictField(source="chunk.metadata", help_text="page, heading_path, ocr, sheet, ...")
    disabled = serializers.BooleanField(source="chunk.disabled", help_text="Kept and shown, never retrieved.")
    edited = serializers.BooleanField(help_text="`text` is a member's correction.")
    original_text = serializers.CharField(allow_null=True, help_text="What the splitter produced, when edited.")


class ChunkChangeSerializer(StrictFieldsMixin, serializers.Serializer):
    text = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="The corrected text (re-embedded); the original text again removes the correction.",
    )
    disabled = serializers.BooleanField(required=False, help_text="Off: kept and shown, never retrieved.")
    revert = serializers.BooleanField(required=False, default=False, help_text="Back to the original text.")


class ChunkEditSerializer(serializers.ModelSerializer):
    applied = serializers.BooleanField(read_only=True, help_text="A chunk of the live generation carries it.")
    edited_by = serializers.CharField(source="edited_by.username", allow_null=True, read_only=True)

    class Meta:
        model = ChunkEdit
        fields = [
            "id",
            "document",
            "original_text",
            "text",
            "disabled",
            "applied",
            "edited_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class DocumentViewSet(mixins.RetrieveModelMixin, mixins.DestroyModelMixin, mixins.ListModelMixin, TeamScopedViewSet):
    """A document's status (queued, parsing, embedding, ready, failed), progress 0-100 and error."""

    queryset = Document.objects.all()
    serializer_class = DocumentSerializer
    action_roles = {"destroy": Role.MEMBER, "reindex": Role.MEMBER}
    filterset_fields = ["knowledge_base", "status"]

    def get_queryset(self) -> QuerySet[Document]:
        return documents_visible(user=self.request.user, api_key=self.api_key)

    def perform_destroy(self, instance: Document) -> None:
        document_delete(document=instance)

    @extend_schema(request=None, responses=DocumentSerializer)
    @action(detail=True, methods=["post"])
    def reindex(self, request: Request, pk: str | None = None) -> Response:
        document = document_reindex(document=self.get_object())
        return Response(self.get_serializer(document).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        responses=ChunkSerializer(many=True),
        description="The chunks search reads of this document (the live generation), in document order, "
        "disabled ones included; `page_size` up to 200.",
    )
    @action(detail=True, methods=["get"])
    def chunks(self, request: Request, pk: str | None = None) -> Response:
        document = self.get_object()
        paginator = ChunkPagination()
        page = paginator.paginate_queryset(document_chunks(document=document), request, view=self)
        views = chunk_views(document=document, chunks=list(page or []))
        return paginator.get_paginated_response(ChunkSerializer(views, many=True).data)

    @extend_schema(
        responses=ChunkEditSerializer(many=True),
        description="Members' edits of this document's chunks, each `applied` or not (its original text no longer "
        "comes out of the splitter: delete it, or edit the new chunk).",
    )
    @action(detail=True, methods=["get"], url_path="chunk-edits")
    def chunk_edits(self, request: Request, pk: str | None = None) -> Response:
        document = self.get_object()
        paginator = IdCursorPagination()
        page = paginator.paginate_queryset(chunk_edits_with_state(document=document), request, view=self)
        return paginator.get_paginated_response(ChunkEditSerializer(page, many=True).data)


class ChunkViewSet(TeamScopedViewSet):
    """One chunk, and a member's correction of it: PATCH `text` (re-embedded with the knowledge
    base's model; 503 and nothing changed when it does not answer), `disabled`, or `revert`."""

    queryset = Chunk.objects.all()
    serializer_class = ChunkSerializer

    def get_queryset(self) -> QuerySet[Chunk]:
        return chunks_visible(user=self.request.user, api_key=self.api_key).select_related("document")

    @extend_schema(responses=ChunkSerializer)
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return Response(ChunkSerializer(chunk_view(self.get_object())).data)

    @extend_schema(request=ChunkChangeSerializer, responses=ChunkSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        chunk = self.get_object()
        self.require_role(chunk.document.team_id, CHUNK_EDIT_ROLE)
        data = validated(ChunkChangeSerializer, request.data)
        chunk = chunk_edit(
            chunk=chunk,
            user=request.user if isinstance(request.user, User) else None,
            text=data.get("text"),
            disabled=data.get("disabled"),
            revert=data["revert"],
        )
        return Response(ChunkSerializer(chunk_view(chunk)).data)


class ChunkEditViewSet(mixins.DestroyModelMixin, TeamScopedViewSet):
    """DELETE forgets an edit: the chunks carrying it get their original text back (re-embedded)
    and are enabled again."""

    queryset = ChunkEdit.objects.all()
    serializer_class = ChunkEditSerializer
    action_roles = {"destroy": CHUNK_EDIT_ROLE}

    def get_queryset(self) -> QuerySet[ChunkEdit]:
        return chunk_edits_visible(user=self.request.user, api_key=self.api_key)

    def perform_destroy(self, instance: ChunkEdit) -> None:
        chunk_edit_delete(edit=instance)
