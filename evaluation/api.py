"""/api/v1/evaluation-sets/, /api/v1/evaluation-items/ and /api/v1/evaluation-runs/ (a knowledge
base's sets are listed and created under knowledge-bases/{id}/evaluation-sets/, kb.api).

Viewers read; members run; admins edit sets and their items."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role
from chat.models import Message
from chat.selectors import messages_visible
from evaluation.drafting import drafting_start
from evaluation.models import EvaluationItem, EvaluationResult, EvaluationRun, EvaluationSet, ItemSource, ItemStatus
from evaluation.services import (
    evaluation_set_update,
    item_create,
    item_delete,
    item_from_message,
    item_update,
    items_import,
    run_start,
    runs_diff,
)
from kb.models import RetrievalMode
from models_registry.models import ModelKind, ModelRegistration
from restapi.pagination import IdCursorPagination
from restapi.serializers import StrictFieldsMixin, validated
from restapi.viewsets import TeamScopedViewSet

MAX_IMPORT_BYTES = 20 * 1024 * 1024


class EvaluationSetSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    item_count = serializers.IntegerField(read_only=True, help_text="Accepted questions.")
    draft_count = serializers.IntegerField(read_only=True, help_text="Drafts waiting for a person.")

    class Meta:
        model = EvaluationSet
        fields = [
            "id",
            "knowledge_base",
            "name",
            "description",
            "gate_threshold",
            "item_count",
            "draft_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["knowledge_base", "created_at", "updated_at"]


class EvaluationItemSerializer(serializers.ModelSerializer):
    expected_document = serializers.ListField(source="expected_documents", child=serializers.CharField())

    class Meta:
        model = EvaluationItem
        fields = ["id", "evaluation_set", "question", "expected_document", "expected_answer", "status", "source"]
        read_only_fields = fields


class ItemInputSerializer(StrictFieldsMixin, serializers.Serializer):
    """One item; `expected_document` is a file name or a list of them (checked by the service)."""

    question = serializers.CharField(required=False)
    expected_document = serializers.JSONField(required=False, help_text="A file name, or a list of file names.")
    expected_answer = serializers.CharField(required=False, allow_blank=True)
    status = serializers.ChoiceField(choices=ItemStatus.choices, required=False, help_text="Accept a draft.")


class RunInputSerializer(StrictFieldsMixin, serializers.Serializer):
    modes = serializers.ListField(
        child=serializers.ChoiceField(choices=RetrievalMode.choices),
        default=[RetrievalMode.HYBRID, RetrievalMode.VECTOR, RetrievalMode.FULLTEXT],
        allow_empty=False,
    )
    top_k = serializers.IntegerField(min_value=1, max_value=100, default=10)
    rerank_model = serializers.IntegerField(required=False, allow_null=True, help_text="Also score with this reranker.")
    answer_scoring = serializers.BooleanField(
        default=False, help_text="The team's chat model also answers each question and judges it (model-judged)."
    )


class EvaluationRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = EvaluationRun
        fields = [
            "id",
            "evaluation_set",
            "knowledge_base",
            "status",
            "progress",
            "trigger",
            "modes",
            "top_k",
            "rerank_model",
            "answer_scoring",
            "answer_model",
            "generation",
            "candidate_generation",
            "metrics",
            "baseline_metrics",
            "regressed",
            "regression",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class ResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = EvaluationResult
        fields = [
            "question",
            "expected_documents",
            "expected_answer",
            "ranks",
            "answer_found",
            "latencies_ms",
            "answer",
        ]
        read_only_fields = fields


class RunDetailSerializer(EvaluationRunSerializer):
    items = ResultSerializer(source="results", many=True, read_only=True)

    class Meta(EvaluationRunSerializer.Meta):
        fields = [*EvaluationRunSerializer.Meta.fields, "items"]
        read_only_fields = fields


def sets_with_counts(queryset: QuerySet[EvaluationSet]) -> QuerySet[EvaluationSet]:
    return queryset.annotate(
        item_count=Count("items", filter=Q(items__status=ItemStatus.ACCEPTED)),
        draft_count=Count("items", filter=Q(items__status=ItemStatus.DRAFT)),
    )


class EvaluationSetViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    TeamScopedViewSet,
):
    """A knowledge base's evaluation set: its questions (`items/`), its runs (`runs/`), drafting
    (`draft/`) and adding a good chat answer (`from-message/`)."""

    queryset = EvaluationSet.objects.all()
    serializer_class = EvaluationSetSerializer
    action_roles = {
        "update": Role.ADMIN,
        "partial_update": Role.ADMIN,
        "destroy": Role.ADMIN,
        "draft": Role.ADMIN,
        "from_message": Role.ADMIN,
    }
    filterset_fields = ["knowledge_base"]
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet[EvaluationSet]:
        return sets_with_counts(super().get_queryset())

    @extend_schema(request=EvaluationSetSerializer, responses=EvaluationSetSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        evaluation_set = self.get_object()
        serializer = self.get_serializer(evaluation_set, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        evaluation_set_update(evaluation_set=evaluation_set, **serializer.validated_data)
        return Response(self.get_serializer(self.get_queryset().get(pk=evaluation_set.pk)).data)

    @extend_schema(request=EvaluationSetSerializer, responses=EvaluationSetSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, **kwargs)

    @extend_schema(methods=["GET"], responses=EvaluationItemSerializer(many=True), description="The set's questions.")
    @extend_schema(
        methods=["POST"],
        request={
            "application/json": ItemInputSerializer,
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
            },
        },
        responses={201: EvaluationItemSerializer(many=True)},
        description="One item as JSON, or a JSONL or CSV file (field `file`) of items: all or nothing; "
        "a line that does not parse or check answers 400 naming the line.",
    )
    @action(detail=True, methods=["get", "post"])
    def items(self, request: Request, pk: str | None = None) -> Response:
        evaluation_set = self.get_object()
        if request.method == "GET":
            paginator = IdCursorPagination()
            items = EvaluationItem.objects.filter(evaluation_set=evaluation_set)
            page = paginator.paginate_queryset(items, request, view=self)
            return paginator.get_paginated_response(EvaluationItemSerializer(page, many=True).data)
        self.require_role(evaluation_set.team_id, Role.ADMIN)
        upload = request.FILES.get("file")
        if upload is not None:
            if upload.size is not None and upload.size > MAX_IMPORT_BYTES:
                raise ValidationError({"file": f"Larger than {MAX_IMPORT_BYTES // 2**20} MB: split it."})
            created = items_import(evaluation_set=evaluation_set, data=upload.read(), name=upload.name or "items")
        else:
            data = request.data if isinstance(request.data, dict) else None
            if data is None or "file" in data:
                raise ValidationError({"detail": "Send one item as JSON, or a JSONL/CSV file in the field `file`."})
            created = [item_create(evaluation_set=evaluation_set, data=dict(data), source=ItemSource.MANUAL)]
        return Response(EvaluationItemSerializer(created, many=True).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["GET"], responses=EvaluationRunSerializer(many=True), description="The set's runs.")
    @extend_schema(
        methods=["POST"],
        request=RunInputSerializer,
        responses={202: EvaluationRunSerializer},
        description="Score the set's accepted questions in each mode (a worker runs it; poll the run).",
    )
    @action(detail=True, methods=["get", "post"])
    def runs(self, request: Request, pk: str | None = None) -> Response:
        evaluation_set = self.get_object()
        if request.method == "GET":
            paginator = IdCursorPagination()
            runs = EvaluationRun.objects.filter(evaluation_set=evaluation_set)
            page = paginator.paginate_queryset(runs, request, view=self)
            return paginator.get_paginated_response(EvaluationRunSerializer(page, many=True).data)
        self.require_role(evaluation_set.team_id, Role.MEMBER)
        data = validated(RunInputSerializer, request.data)
        rerank_model = None
        if data.get("rerank_model") is not None:
            rerank_model = ModelRegistration.objects.filter(
                pk=data["rerank_model"], team_id=evaluation_set.team_id, kind=ModelKind.RERANK
            ).first()
            if rerank_model is None:
                raise ValidationError({"rerank_model": "No rerank model with this id in the team."})
        run = run_start(
            evaluation_set=evaluation_set,
            modes=data["modes"],
            top_k=data["top_k"],
            rerank_model=rerank_model,
            created_by=request.user if request.user.is_authenticated else None,
            answer_scoring=data["answer_scoring"],
        )
        return Response(EvaluationRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=inline_serializer(
            "DraftInput",
            {
                "documents": serializers.ListField(child=serializers.IntegerField()),
                "per_document": serializers.IntegerField(default=2),
            },
        ),
        responses={202: inline_serializer("DraftQueued", {"documents": serializers.ListField()})},
        description="The team's chat model drafts questions from these documents; they arrive as "
        "drafts (status `draft`) that count once a person accepts them (PATCH the item).",
    )
    @action(detail=True, methods=["post"])
    def draft(self, request: Request, pk: str | None = None) -> Response:
        evaluation_set = self.get_object()
        data = request.data if isinstance(request.data, dict) else {}
        unknown = sorted(set(data) - {"documents", "per_document"})
        if unknown:
            raise ValidationError({name: "Unknown field: remove it." for name in unknown})
        documents = data.get("documents")
        per_document = data.get("per_document", 2)
        if not isinstance(documents, list) or not all(type(value) is int for value in documents):
            raise ValidationError({"documents": "A list of document ids."})
        if type(per_document) is not int:
            raise ValidationError({"per_document": "A whole number."})
        assert request.user.pk is not None  # authenticated: a session user, or an API key's owner
        chosen = drafting_start(
            evaluation_set=evaluation_set,
            document_ids=documents,
            per_document=per_document,
            user_id=request.user.pk,
        )
        return Response({"documents": chosen}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=inline_serializer("FromMessageInput", {"message": serializers.IntegerField()}),
        responses={201: EvaluationItemSerializer},
        description="Add the question behind a chat answer marked good (thumbs up), expecting the "
        "documents of this knowledge base that the answer cites.",
    )
    @action(detail=True, methods=["post"], url_path="from-message")
    def from_message(self, request: Request, pk: str | None = None) -> Response:
        evaluation_set = self.get_object()
        data = request.data if isinstance(request.data, dict) else {}
        if set(data) != {"message"} or type(data["message"]) is not int:
            raise ValidationError({"message": 'Send {"message": <the assistant message\'s id>} only.'})
        message = (
            messages_visible(user=request.user, api_key=self.api_key)
            .filter(pk=data["message"], role=Message.Role.ASSISTANT)
            .select_related("conversation")
            .first()
        )
        if message is None or message.conversation.team_id != evaluation_set.team_id:
            raise ValidationError({"message": "No answer with this id in the set's team."})
        item = item_from_message(evaluation_set=evaluation_set, message=message)
        return Response(EvaluationItemSerializer(item).data, status=status.HTTP_201_CREATED)


class EvaluationItemViewSet(
    mixins.RetrieveModelMixin, mixins.UpdateModelMixin, mixins.DestroyModelMixin, TeamScopedViewSet
):
    """One question: edit it, accept a draft (`status: accepted`), or delete it."""

    queryset = EvaluationItem.objects.select_related("evaluation_set__knowledge_base")
    serializer_class = EvaluationItemSerializer
    action_roles = {"update": Role.ADMIN, "partial_update": Role.ADMIN, "destroy": Role.ADMIN}

    @extend_schema(request=ItemInputSerializer, responses=EvaluationItemSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        item = self.get_object()
        data = validated(ItemInputSerializer, request.data)
        changes = {key: value for key, value in data.items() if key != "status"}
        if "status" in data:
            item = item_update(item=item, data=changes, status=data["status"])
        else:
            item = item_update(item=item, data=changes)
        return Response(self.get_serializer(item).data)

    @extend_schema(request=ItemInputSerializer, responses=EvaluationItemSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, **kwargs)

    def perform_destroy(self, instance: EvaluationItem) -> None:
        item_delete(item=instance)


class EvaluationRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TeamScopedViewSet):
    """A run's status, progress, metrics per mode and, in detail, each question's ranks."""

    queryset = EvaluationRun.objects.all()
    serializer_class = EvaluationRunSerializer
    filterset_fields = ["evaluation_set", "knowledge_base", "status"]

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return RunDetailSerializer if self.action == "retrieve" else EvaluationRunSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("against", int, required=True, description="The earlier run."),
            OpenApiParameter("mode", str, required=False, description="Default: hybrid."),
        ],
        responses=inline_serializer("RunDiff", {"changes": serializers.ListField(child=serializers.DictField())}),
        description="The questions whose rank changed between an earlier run and this one, worse first, "
        "with the chunks each run returned.",
    )
    @action(detail=True, methods=["get"])
    def diff(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        against = request.query_params.get("against", "")
        if not against.isdigit():
            raise ValidationError({"against": "Give the id of the earlier run: ?against=<id>."})
        before = self.get_queryset().filter(pk=int(against), evaluation_set_id=run.evaluation_set_id).first()
        if before is None:
            raise ValidationError({"against": "No run with this id in the same set."})
        mode = request.query_params.get("mode", RetrievalMode.HYBRID)
        changes = runs_diff(before=before, after=run, mode=mode)
        return Response(
            {
                "changes": [
                    {
                        "question": change.question,
                        "expected_documents": change.expected_documents,
                        "rank_before": change.rank_before,
                        "rank_after": change.rank_after,
                        "worse": change.worse,
                        "retrieved_before": change.retrieved_before,
                        "retrieved_after": change.retrieved_after,
                    }
                    for change in changes
                ]
            }
        )
