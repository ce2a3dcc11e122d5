"""A dataset's adapters and their comparisons with the base model, on the dataset's page: the
LoRA adapters registered from it (each a model of its own in the registry), a register form and,
per adapter, a "compare with base" form and its comparisons (admins and owners write, as in the
API); and a comparison's page: the summary, each held-back question answered by both models side
by side, and the evaluation runs of each model.

Writes go through finetune.adapters, reads through finetune.selectors, with the API's rules: the
dataset must be one the user sees (datasets_visible), another team's adapter, comparison, model or
evaluation set is not found or refused in the service's words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from accounts.models import Role, User
from accounts.selectors import has_team_role
from core.domain_errors import DomainError
from evaluation.answers import ANSWER_METRICS_KEY
from evaluation.models import EvaluationRun, EvaluationSet, ItemStatus, RunStatus
from evaluation.services import GATE_MODE
from finetune import formats
from finetune.adapters import (
    DEFAULT_COMPARISON_ROWS,
    MAX_COMPARISON_ROWS,
    adapter_delete,
    adapter_register,
    comparison_start,
)
from finetune.models import Adapter, Comparison, ComparisonStatus, Dataset, DatasetStatus
from finetune.selectors import adapters_visible, comparisons_visible
from kb.selectors import knowledge_bases_visible
from models_registry.models import ModelKind, ModelRegistration, ModelStatus
from web.views.datasets import dataset_context, dataset_for
from web.views.evaluation import figure, mode_label

# As finetune.api: admins and owners register, delete and compare; whoever sees the dataset reads.
MANAGE_ROLE = Role.ADMIN
ACTIVE_COMPARISONS = (ComparisonStatus.QUEUED, ComparisonStatus.RUNNING)
ACTIVE_RUNS = (RunStatus.QUEUED, RunStatus.RUNNING)
RECALL_METRIC = "recall@5"
# The answer metrics of an evaluation run with answer scoring (evaluation.answers), in this order.
ANSWER_METRICS: list[tuple[str, Any]] = [
    ("answer_contains", gettext_lazy("Answer contains the expected text")),
    ("cites_expected_document", gettext_lazy("Cites the expected document")),
    ("faithfulness", gettext_lazy("Faithful to its sources (model-judged)")),
]


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # every view here is login_required
    return request.user


def _has_role(request: HttpRequest, team_id: int, role: Role) -> bool:
    return has_team_role(user=_user(request), api_key=None, team_id=team_id, role=role)


# --- the forms --------------------------------------------------------------------------------


class AdapterForm(forms.Form):
    """The register form. The base model is a plain id offered as the team's chat models: the view
    looks it up in the dataset's team, so another team's id is refused by name."""

    name = forms.CharField(label=gettext_lazy("Name"), max_length=120)
    base_model = forms.IntegerField(label=gettext_lazy("Base model"), widget=forms.Select)
    path = forms.CharField(
        label=gettext_lazy("Folder on the model server"),
        max_length=1000,
        widget=forms.TextInput(attrs={"placeholder": "/srv/adapters/support-v1"}),
    )

    def __init__(self, *args: Any, dataset: Dataset, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["base_model"].widget.choices = [(model.pk, _base_label(model)) for model in base_models(dataset)]


class ComparisonForm(forms.Form):
    """Rows only: the evaluation sets are read as given (checkbox values), and comparison_start
    says what is wrong with them."""

    rows = forms.IntegerField(
        label=gettext_lazy("Held-back questions to ask"),
        required=False,
        initial=DEFAULT_COMPARISON_ROWS,
        widget=forms.NumberInput(attrs={"min": 0, "max": MAX_COMPARISON_ROWS, "step": 1}),
    )


def base_models(dataset: Dataset) -> list[ModelRegistration]:
    """The team's chat models an adapter may go on (not adapters themselves)."""
    return list(
        ModelRegistration.objects.select_related("provider")
        .filter(team_id=dataset.team_id, kind=ModelKind.LLM, adapter__isnull=True)
        .order_by("name")
    )


def _base_label(model: ModelRegistration) -> str:
    engine = str((model.launch_spec or {}).get("model_engine") or "")
    return f"{model.name} ({engine})" if engine else model.name


def _evaluation_sets(dataset: Dataset) -> list[EvaluationSet]:
    """The team's evaluation sets with accepted questions (those a comparison may run)."""
    return list(
        EvaluationSet.objects.filter(team_id=dataset.team_id, items__status=ItemStatus.ACCEPTED)
        .select_related("knowledge_base")
        .distinct()
        .order_by("knowledge_base__name", "name")
    )


def _set_ids(values: list[str]) -> list[Any]:
    """Whole numbers as ints; anything else as given, for comparison_start to refuse in its words."""
    return [int(value) if value.strip().isdigit() else value for value in values]


# --- the section on the dataset's page ---------------------------------------------------------


@dataclass(frozen=True)
class ComparisonRow:
    comparison: Comparison
    active: bool


@dataclass(frozen=True)
class AdapterRow:
    adapter: Adapter
    failed: bool
    comparisons: list[ComparisonRow]
    compare_form: ComparisonForm
    chosen_sets: list[str]


def adapters_shown(dataset: Dataset) -> bool:
    """Adapters are trained on the supervised formats, from a built dataset."""
    return dataset.status == DatasetStatus.READY and dataset.format in formats.MULTI_TURN


def adapters_context(
    request: HttpRequest,
    dataset: Dataset,
    *,
    register_form: AdapterForm | None = None,
    compare_form: tuple[int, ComparisonForm, list[str]] | None = None,
) -> dict[str, Any]:
    """What the Adapters section of a dataset's page shows; a form that was refused comes back
    bound (what was typed stays)."""
    if not adapters_shown(dataset):
        return {"adapters_shown": False}
    user = _user(request)
    can_manage = _has_role(request, dataset.team_id, MANAGE_ROLE)
    adapters = list(adapters_visible(user=user).filter(dataset=dataset).order_by("-pk"))
    comparisons: dict[int, list[ComparisonRow]] = {}
    for comparison in comparisons_visible(user=user).filter(adapter__in=adapters).order_by("-pk"):
        comparisons.setdefault(comparison.adapter_id, []).append(
            ComparisonRow(comparison, comparison.status in ACTIVE_COMPARISONS)
        )
    rows = []
    for adapter in adapters:
        bound = compare_form if compare_form and compare_form[0] == adapter.pk else None
        rows.append(
            AdapterRow(
                adapter=adapter,
                failed=adapter.registration.status == ModelStatus.FAILED,
                comparisons=comparisons.get(adapter.pk, []),
                compare_form=bound[1] if bound else ComparisonForm(auto_id=f"id_compare_{adapter.pk}_%s"),
                chosen_sets=bound[2] if bound else [],
            )
        )
    counts = dataset.counts if isinstance(dataset.counts, dict) else {}
    return {
        "adapters_shown": True,
        "adapters": rows,
        "can_manage_adapters": can_manage,
        "register_form": (register_form or AdapterForm(dataset=dataset)) if can_manage else None,
        "has_base_models": can_manage and bool(base_models(dataset)),
        "adapter_dir": settings.FINETUNE_ADAPTER_DIR,
        "evaluation_sets": _evaluation_sets(dataset) if can_manage and adapters else [],
        "held_back": counts.get("held_back") or 0,
        "max_comparison_rows": MAX_COMPARISON_ROWS,
        "comparison_status_labels": ComparisonStatus.choices,
    }


def _dataset_page(request: HttpRequest, dataset: Dataset, status: int, **forms: Any) -> HttpResponse:
    """The dataset's page again, with the refused form as it was sent."""
    context = dataset_context(request, dataset, adapter_forms=forms)
    return render(request, "web/datasets/detail.html", context, status=status)


def _managed_dataset(request: HttpRequest, pk: int) -> Dataset | HttpResponse:
    dataset = dataset_for(request, pk)
    if not _has_role(request, dataset.team_id, MANAGE_ROLE):
        return HttpResponse(
            _("Only the team's admins and owners register, delete and compare adapters: ask one of them."),
            status=403,
        )
    return dataset


def _adapter_of(request: HttpRequest, dataset: Dataset, adapter_id: int) -> Adapter:
    adapter = adapters_visible(user=_user(request)).filter(pk=adapter_id, dataset=dataset).first()
    if adapter is None:
        raise Http404(_("No such adapter."))
    return adapter


def _back(dataset: Dataset) -> HttpResponse:
    return redirect(f"{reverse('web:dataset-detail', args=[dataset.pk])}#adapters")


@login_required
@require_POST
def adapter_register_view(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _managed_dataset(request, pk)
    if isinstance(dataset, HttpResponse):
        return dataset
    form = AdapterForm(request.POST, dataset=dataset)
    if not form.is_valid():
        messages.error(request, _("The adapter was not registered: correct the fields marked below."))
        return _dataset_page(request, dataset, 400, register_form=form)
    try:
        # The select offers the team's chat models only; the service refuses a forged id by name.
        adapter = adapter_register(
            dataset=dataset,
            base_model_id=form.cleaned_data["base_model"],
            name=form.cleaned_data["name"],
            path=form.cleaned_data["path"],
            user=_user(request),
        )
    except DomainError as exc:
        messages.error(request, _("The adapter was not registered: %(reason)s") % {"reason": exc})
        return _dataset_page(request, dataset, 400, register_form=form)
    messages.success(
        request,
        _("Adapter %(name)s is registered on %(base)s: the model server launches it.")
        % {"name": adapter.registration.name, "base": adapter.base_model.name},
    )
    return _back(dataset)


@login_required
@require_POST
def adapter_delete_view(request: HttpRequest, pk: int, adapter_id: int) -> HttpResponse:
    dataset = _managed_dataset(request, pk)
    if isinstance(dataset, HttpResponse):
        return dataset
    adapter = _adapter_of(request, dataset, adapter_id)
    name = adapter.registration.name
    try:
        adapter_delete(adapter=adapter)
    except DomainError as exc:
        messages.error(request, _("The adapter was not deleted: %(reason)s") % {"reason": exc})
        return _dataset_page(request, dataset, 409)
    messages.success(request, _("Adapter %(name)s deleted: its model is stopped.") % {"name": name})
    return _back(dataset)


@login_required
@require_POST
def comparison_start_view(request: HttpRequest, pk: int, adapter_id: int) -> HttpResponse:
    dataset = _managed_dataset(request, pk)
    if isinstance(dataset, HttpResponse):
        return dataset
    adapter = _adapter_of(request, dataset, adapter_id)
    form = ComparisonForm(request.POST, auto_id=f"id_compare_{adapter.pk}_%s")
    chosen = request.POST.getlist("evaluation_sets")
    if not form.is_valid():
        messages.error(request, _("The comparison was not started: correct the fields marked below."))
        return _dataset_page(request, dataset, 400, compare_form=(adapter.pk, form, chosen))
    rows = form.cleaned_data["rows"]
    try:
        comparison = comparison_start(
            adapter=adapter,
            user=_user(request),
            rows=DEFAULT_COMPARISON_ROWS if rows is None else rows,
            evaluation_sets=_set_ids(chosen) if chosen else None,  # none chosen: the default sets
        )
    except DomainError as exc:
        messages.error(request, _("The comparison was not started: %(reason)s") % {"reason": exc})
        return _dataset_page(request, dataset, 400, compare_form=(adapter.pk, form, chosen))
    messages.success(request, _("Comparison #%(id)s is queued: this page follows it.") % {"id": comparison.pk})
    return redirect("web:dataset-comparison", dataset.pk, comparison.pk)


# --- a comparison's page -----------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    questions: int
    base: dict[str, str]
    adapter: dict[str, str]
    adapter_better: Any
    base_better: Any
    ties: Any


def _summary(metrics: Any) -> Summary | None:
    if not isinstance(metrics, dict) or not metrics.get("questions"):
        return None
    sides = {
        side: {name: figure(name, (metrics.get(side) or {}).get(name)) for name in ("token_f1", "rouge_l")}
        for side in ("base", "adapter")
    }
    return Summary(
        questions=metrics["questions"],
        base=sides["base"],
        adapter=sides["adapter"],
        adapter_better=metrics.get("adapter_better", "–"),
        base_better=metrics.get("base_better", "–"),
        ties=metrics.get("ties", "–"),
    )


@dataclass(frozen=True)
class Side:
    text: str
    token_f1: str
    rouge_l: str
    better: bool


@dataclass(frozen=True)
class QuestionRow:
    question: str
    reference: str
    base: Side
    adapter: Side


def _side(row: dict[str, Any], side: str, other: str) -> Side:
    scores = row.get(f"{side}_scores") or {}
    mine, theirs = scores.get("token_f1"), (row.get(f"{other}_scores") or {}).get("token_f1")
    better = isinstance(mine, int | float) and isinstance(theirs, int | float) and mine > theirs
    return Side(
        text=str(row.get(side) or ""),
        token_f1=figure("token_f1", scores.get("token_f1")),
        rouge_l=figure("rouge_l", scores.get("rouge_l")),
        better=better,
    )


def _question_rows(rows: Any) -> list[QuestionRow]:
    if not isinstance(rows, list):
        return []
    return [
        QuestionRow(
            question=str(row.get("question") or ""),
            reference=str(row.get("reference") or ""),
            base=_side(row, "base", "adapter"),
            adapter=_side(row, "adapter", "base"),
        )
        for row in rows
        if isinstance(row, dict)
    ]


@dataclass(frozen=True)
class RunSide:
    run: EvaluationRun
    active: bool


@dataclass(frozen=True)
class MetricRow:
    label: Any
    base: str
    adapter: str


@dataclass(frozen=True)
class RunPair:
    evaluation_set: EvaluationSet
    link: str | None
    sides: list[RunSide]  # base, adapter
    figures: list[MetricRow]


def _run_figures(run: EvaluationRun) -> list[str]:
    """The answer metrics (ANSWER_METRICS' order), then recall@5 of the hybrid mode."""
    metrics = run.metrics if isinstance(run.metrics, dict) else {}
    answers = metrics.get(ANSWER_METRICS_KEY) or {}
    retrieval = metrics.get(GATE_MODE) or {}
    return [
        *(figure(name, answers.get(name)) for name, _label in ANSWER_METRICS),
        figure(RECALL_METRIC, retrieval.get(RECALL_METRIC)),
    ]


def _run_pairs(request: HttpRequest, comparison: Comparison) -> list[RunPair]:
    pairs = list(comparison.evaluation_runs.select_related("base_run__evaluation_set", "adapter_run").order_by("pk"))
    kb_ids = {pair.base_run.evaluation_set.knowledge_base_id for pair in pairs}
    seen = set(knowledge_bases_visible(user=_user(request)).filter(pk__in=kb_ids).values_list("pk", flat=True))
    labels = [label for _name, label in ANSWER_METRICS] + [
        _("Retrieval recall@5 (%(mode)s)") % {"mode": mode_label(GATE_MODE)}
    ]
    result = []
    for pair in pairs:
        evaluation_set = pair.base_run.evaluation_set
        kb_id = evaluation_set.knowledge_base_id
        link = reverse("web:evaluation-set", args=[kb_id, evaluation_set.pk]) if kb_id in seen else None
        figures = zip(labels, _run_figures(pair.base_run), _run_figures(pair.adapter_run), strict=True)
        result.append(
            RunPair(
                evaluation_set=evaluation_set,
                link=link,
                sides=[RunSide(run, run.status in ACTIVE_RUNS) for run in (pair.base_run, pair.adapter_run)],
                figures=[MetricRow(*row) for row in figures],
            )
        )
    return result


@login_required
def comparison_page(request: HttpRequest, pk: int, comparison_id: int) -> HttpResponse:
    """404 unless the user sees the dataset and the comparison is of one of its adapters."""
    dataset = dataset_for(request, pk, switch_team=True)
    comparison = (
        comparisons_visible(user=_user(request))
        .select_related("adapter__registration", "adapter__base_model", "created_by")
        .filter(pk=comparison_id, adapter__dataset=dataset)
        .first()
    )
    if comparison is None:
        raise Http404(_("No such comparison."))
    return render(
        request,
        "web/datasets/comparison.html",
        {
            "dataset": dataset,
            "comparison": comparison,
            "adapter": comparison.adapter,
            "active": comparison.status in ACTIVE_COMPARISONS,
            "status_labels": ComparisonStatus.choices,
            "summary": _summary(comparison.metrics),
            "rows": _question_rows(comparison.rows),
            "runs": _run_pairs(request, comparison),
        },
    )
