"""/api/v1/datasets/ (build, list, poll, download, delete, register an adapter trained on one),
/api/v1/adapters/ and /api/v1/comparisons/ (an adapter against its base model), and
/api/v1/messages/{id}/gold/ (a reviewer's gold answer). Who builds from whose conversations, and who sees a dataset:
finetune.selectors."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey, Role, User
from accounts.selectors import has_team_role
from evaluation.api import EvaluationRunSerializer
from finetune.adapters import (
    DEFAULT_COMPARISON_ROWS,
    MAX_COMPARISON_ROWS,
    adapter_delete,
    adapter_register,
    comparison_start,
)
from finetune.models import Adapter, Comparison, ComparisonRun, Dataset, DatasetFormat, GoldAnswer
from finetune.selectors import (
    adapters_visible,
    answer_for_review,
    comparisons_visible,
    datasets_visible,
    reviewable,
    role_in,
)
from finetune.services import (
    FEEDBACK_CHOICES,
    MAX_GOLD_CHARS,
    REVIEWED_CHOICES,
    dataset_archive_name,
    dataset_delete,
    dataset_require_ready,
    dataset_start,
    gold_answer_delete,
    gold_answer_set,
)
from restapi.serializers import StrictFieldsMixin, validated
from restapi.viewsets import TeamScopedViewSet


class DatasetFiltersSerializer(StrictFieldsMixin, serializers.Serializer):
    """The shape of the filters; the service checks them against the team (another team's ids
    answer 400)."""

    assistant = serializers.IntegerField(required=False, allow_null=True, help_text="Only this assistant's answers.")
    knowledge_base = serializers.IntegerField(
        required=False, allow_null=True, help_text="Only answers citing this knowledge base."
    )
    since = serializers.CharField(required=False, allow_null=True, help_text="ISO date or date-time (inclusive).")
    until = serializers.CharField(required=False, allow_null=True, help_text="ISO date (inclusive) or date-time.")
    feedback = serializers.ChoiceField(
        choices=FEEDBACK_CHOICES,
        required=False,
        help_text="positive: 👍 (or reviewed) answers only; any (default): all but 👎.",
        error_messages={"invalid_choice": f"Choose one of {', '.join(FEEDBACK_CHOICES)}."},
    )
    reviewed = serializers.ChoiceField(
        choices=REVIEWED_CHOICES,
        required=False,
        help_text="only: answers with a gold answer; any (default).",
        error_messages={"invalid_choice": f"Choose one of {', '.join(REVIEWED_CHOICES)}."},
    )


class DatasetInputSerializer(StrictFieldsMixin, serializers.Serializer):
    team = serializers.IntegerField(required=False, help_text="Default: your only team (or the API key's).")
    name = serializers.CharField(max_length=200, help_text="Building a name again makes its next version.")
    format = serializers.CharField(help_text=f"One of {', '.join(DatasetFormat.values)}.")
    filters = DatasetFiltersSerializer(required=False)
    holdout = serializers.IntegerField(
        required=False,
        default=0,
        help_text="Percent of conversations (0-50) kept out of the training file, in heldout.jsonl, for comparing "
        "a trained adapter with its base model. Supervised formats only.",
    )


class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = [
            "id",
            "team",
            "name",
            "version",
            "format",
            "filters",
            "holdout_percent",
            "status",
            "progress",
            "counts",
            "error",
            "size_bytes",
            "created_by",
            "builder_role",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class DatasetDetailSerializer(DatasetSerializer):
    preview = serializers.JSONField(read_only=True, help_text="The first rows, as written in the data file.")

    class Meta(DatasetSerializer.Meta):
        fields = [*DatasetSerializer.Meta.fields, "preview"]
        read_only_fields = fields


class AdapterInputSerializer(StrictFieldsMixin, serializers.Serializer):
    name = serializers.CharField(max_length=120, help_text="The adapter's model name, e.g. support-answers-v3.")
    base_model = serializers.IntegerField(help_text="The id of the team's chat model the adapter was trained on.")
    path = serializers.CharField(
        max_length=1000,
        help_text="The adapter's folder on the model server (peft's save_pretrained output, safetensors). On the "
        "local Xinference: under FINETUNE_ADAPTER_DIR.",
    )


class AdapterSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="registration.name", read_only=True)
    status = serializers.CharField(source="registration.status", read_only=True)
    last_error = serializers.CharField(source="registration.last_error", read_only=True)

    class Meta:
        model = Adapter
        fields = [
            "id",
            "team",
            "dataset",
            "name",
            "base_model",
            "registration",
            "path",
            "status",
            "last_error",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class DatasetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TeamScopedViewSet):
    """Fine-tuning datasets: POST builds one (202; a worker builds it, poll `{id}/` for status,
    progress and counts), `{id}/download/` is the zip."""

    queryset = Dataset.objects.all()
    serializer_class = DatasetSerializer
    filterset_fields = ["name", "format", "status"]
    action_roles = {"destroy": Role.MEMBER}

    def get_queryset(self) -> QuerySet[Dataset]:
        return datasets_visible(user=self.request.user, api_key=self.api_key)

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return DatasetDetailSerializer if self.action == "retrieve" else DatasetSerializer

    @extend_schema(
        request=DatasetInputSerializer,
        responses={
            202: inline_serializer(
                "DatasetQueued", {"id": serializers.IntegerField(), "status": serializers.CharField()}
            )
        },
        description="Build a dataset from the team's conversations (members: their own; admins and owners: the "
        "team's rooms and the personal conversations of members below them). Unknown formats, and ids of "
        "another team's assistant or knowledge base in `filters`, answer 400.",
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = validated(DatasetInputSerializer, request.data)
        team = self.target_team(data.get("team"), Role.MEMBER)
        assert isinstance(request.user, User)
        dataset = dataset_start(
            team=team,
            user=request.user,
            name=data["name"],
            format=data["format"],
            filters=data.get("filters"),
            holdout_percent=data["holdout"],
        )
        return Response({"id": dataset.pk, "status": dataset.status}, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, instance: Dataset) -> None:
        if instance.created_by_id != self.request.user.pk:
            self.require_role(instance.team_id, Role.ADMIN)
        dataset_delete(dataset=instance)

    @extend_schema(methods=["GET"], request=None, responses=AdapterSerializer(many=True), description="Its adapters.")
    @extend_schema(
        methods=["POST"],
        request=AdapterInputSerializer,
        responses={201: AdapterSerializer},
        description="Register a LoRA adapter trained on this dataset on its base model (admins and owners): a "
        "model of its own in the registry, launched and kept running. The base must run on Xinference's "
        "transformers or vLLM engine.",
    )
    @action(detail=True, methods=["get", "post"])
    def adapters(self, request: Request, pk: str | None = None) -> Response:
        dataset = self.get_object()
        if request.method == "GET":
            visible = adapters_visible(user=request.user, api_key=self.api_key).filter(dataset=dataset)
            return Response(AdapterSerializer(visible, many=True).data)
        self.require_role(dataset.team_id, Role.ADMIN)
        data = validated(AdapterInputSerializer, request.data)
        assert isinstance(request.user, User)
        adapter = adapter_register(
            dataset=dataset, base_model_id=data["base_model"], name=data["name"], path=data["path"], user=request.user
        )
        return Response(AdapterSerializer(adapter).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="The zip."),
            409: OpenApiResponse(description="Not built (yet)."),
        },
        description="The zip: the data file, `dataset_info.json` for LLaMA-Factory formats, `report.json`.",
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        dataset = self.get_object()
        dataset_require_ready(dataset=dataset)
        return FileResponse(
            dataset.file.open("rb"),
            as_attachment=True,
            filename=dataset_archive_name(dataset),
            content_type="application/zip",
        )


class ComparisonInputSerializer(StrictFieldsMixin, serializers.Serializer):
    rows = serializers.IntegerField(
        required=False,
        default=DEFAULT_COMPARISON_ROWS,
        help_text=f"Held-back questions to ask both models (0-{MAX_COMPARISON_ROWS}).",
    )
    evaluation_sets = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        allow_null=True,
        default=None,
        help_text="Evaluation sets to run once per model with answer scoring. Default: the sets of the knowledge "
        "bases the dataset was built from (its knowledge-base filter, else its assistant's).",
    )


class ComparisonRunSerializer(serializers.ModelSerializer):
    evaluation_set = serializers.IntegerField(source="base_run.evaluation_set_id", read_only=True)
    base = EvaluationRunSerializer(source="base_run", read_only=True)
    adapter = EvaluationRunSerializer(source="adapter_run", read_only=True)

    class Meta:
        model = ComparisonRun
        fields = ["evaluation_set", "base", "adapter"]
        read_only_fields = fields


class ComparisonSerializer(serializers.ModelSerializer):
    class Meta:
        model = Comparison
        fields = [
            "id",
            "team",
            "adapter",
            "status",
            "progress",
            "row_limit",
            "evaluation_set_ids",
            "metrics",
            "error",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class ComparisonDetailSerializer(ComparisonSerializer):
    rows = serializers.JSONField(read_only=True, help_text="Each held-back question: both answers and their scores.")
    evaluation_runs = ComparisonRunSerializer(many=True, read_only=True)

    class Meta(ComparisonSerializer.Meta):
        fields = [*ComparisonSerializer.Meta.fields, "rows", "evaluation_runs"]
        read_only_fields = fields


class AdapterViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TeamScopedViewSet):
    """LoRA adapters registered from datasets (POST `datasets/{id}/adapters/`). Deleting one stops
    its model and removes its registration. `{id}/comparisons/` compares it with its base model."""

    queryset = Adapter.objects.all()
    serializer_class = AdapterSerializer
    filterset_fields = ["dataset", "base_model"]
    action_roles = {"destroy": Role.ADMIN, "comparisons": Role.MEMBER}

    def get_queryset(self) -> QuerySet[Adapter]:
        return adapters_visible(user=self.request.user, api_key=self.api_key)

    def perform_destroy(self, instance: Adapter) -> None:
        adapter_delete(adapter=instance)

    @extend_schema(
        methods=["GET"], request=None, responses=ComparisonSerializer(many=True), description="Its comparisons."
    )
    @extend_schema(
        methods=["POST"],
        request=ComparisonInputSerializer,
        responses={
            202: inline_serializer(
                "ComparisonQueued", {"id": serializers.IntegerField(), "status": serializers.CharField()}
            )
        },
        description="Compare with the base model (admins and owners): a worker asks both the dataset's held-back "
        "questions and runs the evaluation sets once per model. Poll `comparisons/{id}/`.",
    )
    @action(detail=True, methods=["get", "post"])
    def comparisons(self, request: Request, pk: str | None = None) -> Response:
        adapter = self.get_object()
        if request.method == "GET":
            visible = comparisons_visible(user=request.user, api_key=self.api_key).filter(adapter=adapter)
            return Response(ComparisonSerializer(visible, many=True).data)
        self.require_role(adapter.team_id, Role.ADMIN)
        if (
            adapter.dataset is None
            or not datasets_visible(user=request.user, api_key=self.api_key).filter(pk=adapter.dataset_id).exists()
        ):
            raise exceptions.NotFound(
                "The adapter's dataset is gone, or not one you may see: compare on a dataset you see."
            )
        data = validated(ComparisonInputSerializer, request.data)
        assert isinstance(request.user, User)
        comparison = comparison_start(
            adapter=adapter, user=request.user, rows=data["rows"], evaluation_sets=data["evaluation_sets"]
        )
        return Response({"id": comparison.pk, "status": comparison.status}, status=status.HTTP_202_ACCEPTED)


class ComparisonViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TeamScopedViewSet):
    """Base model against adapter: each held-back question with both answers and their scores
    against the answer people kept (token F1, ROUGE-L), the means, and the evaluation runs of
    each model side by side."""

    queryset = Comparison.objects.all()
    serializer_class = ComparisonSerializer
    filterset_fields = ["adapter", "status"]

    def get_queryset(self) -> QuerySet[Comparison]:
        queryset = comparisons_visible(user=self.request.user, api_key=self.api_key)
        if self.action == "retrieve":
            return queryset.prefetch_related("evaluation_runs__base_run", "evaluation_runs__adapter_run")
        return queryset

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return ComparisonDetailSerializer if self.action == "retrieve" else ComparisonSerializer


class GoldInputSerializer(StrictFieldsMixin, serializers.Serializer):
    text = serializers.CharField(max_length=MAX_GOLD_CHARS, trim_whitespace=False)


class GoldAnswerSerializer(serializers.ModelSerializer):
    original = serializers.CharField(source="message.content", read_only=True)

    class Meta:
        model = GoldAnswer
        fields = ["message", "text", "original", "reviewed_by", "created_at", "updated_at"]
        read_only_fields = fields


class GoldAnswerView(APIView):
    """A reviewer's gold answer for an assistant message: datasets use it instead of the answer
    (which stays as it was). Reviewers are the team's admins and owners, for the conversations they
    may build datasets from."""

    def _message(self, request: Request, pk: int) -> Any:
        api_key = request.auth if isinstance(request.auth, ApiKey) else None
        assert isinstance(request.user, User)
        message = answer_for_review(user=request.user, api_key=api_key, message_id=pk)
        if message is None:
            raise exceptions.NotFound("No such message.")
        team_id = message.conversation.team_id
        if not has_team_role(user=request.user, api_key=api_key, team_id=team_id, role=Role.ADMIN):
            raise exceptions.PermissionDenied("Only the team's admins and owners review answers: ask one of them.")
        role = role_in(team=team_id, user=request.user)
        if role is None or not reviewable(message=message, user=request.user, role=role):
            raise exceptions.NotFound("No such message.")
        return message

    @extend_schema(request=GoldInputSerializer, responses=GoldAnswerSerializer)
    def put(self, request: Request, pk: int) -> Response:
        message = self._message(request, pk)
        data = validated(GoldInputSerializer, request.data)
        assert isinstance(request.user, User)
        gold = gold_answer_set(message=message, reviewer=request.user, text=data["text"])
        return Response(GoldAnswerSerializer(gold).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        message = self._message(request, pk)
        if not gold_answer_delete(message=message):
            raise exceptions.NotFound("This answer has no gold answer.")
        return Response(status=status.HTTP_204_NO_CONTENT)
