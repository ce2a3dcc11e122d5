"""A knowledge base's evaluation pages: its sets with their latest figures and history charts,
runs (evaluation.js follows the ones in progress), drafts to review, and the forms that create a
set, import questions, draft some with the team's model and start a run; a set's page with the
per-question diff between two runs. Questions also come from hit testing (the knowledge base's
page) and from a chat answer marked good (the conversation page).

Everything is team-scoped like the knowledge base's own page: another team's knowledge base, set,
run, item, document or message is not found (404), whichever field names it. Viewers read,
members run, admins edit sets (as in the API). What a service refuses is said on the page."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.models import Role, User
from accounts.selectors import has_team_role
from chat.models import Message
from chat.selectors import conversations_visible
from core.domain_errors import DomainError
from evaluation.api import MAX_IMPORT_BYTES, sets_with_counts
from evaluation.drafting import MAX_DRAFT_DOCUMENTS, MAX_PER_DOCUMENT, drafting_start
from evaluation.metrics import METRIC_NAMES
from evaluation.models import EvaluationItem, EvaluationRun, EvaluationSet, ItemSource, ItemStatus, RunStatus
from evaluation.services import (
    GATE_MODE,
    RERANK_SUFFIX,
    evaluation_set_create,
    item_create,
    item_delete,
    item_from_message,
    item_update,
    items_import,
    run_start,
    runs_diff,
)
from kb.models import Document, DocumentStatus, KnowledgeBase, RetrievalMode
from kb.selectors import knowledge_bases_visible
from web.evaluation_chart import ChartPoint, line_chart
from web.views.kb import has_role, knowledge_base_for

RUN_ROLE = Role.MEMBER
EDIT_ROLE = Role.ADMIN
RUNS_SHOWN = 50
DRAFTS_SHOWN = 200
ITEMS_SHOWN = 200
DOCUMENTS_SHOWN = 200  # offered for drafting
HISTORY_RUNS = 30  # points of a set's chart
DIFF_CHOICES = 100  # finished runs offered for the diff
ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
FIGURE_METRICS = METRIC_NAMES
# Column headers where the metric's name is long (the full name is the header's tooltip).
FIGURE_HEADERS = {"latency_p50_ms": "p50 ms", "latency_p95_ms": "p95 ms"}
FIGURE_COLUMNS = [(name, FIGURE_HEADERS.get(name, name)) for name in FIGURE_METRICS]
DEFAULT_TOP_K = 10
DEFAULT_PER_DOCUMENT = 2


# --- what the pages show ----------------------------------------------------------------------


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # every view here is login_required
    return request.user


def mode_label(mode: str) -> str:
    """ "Hybrid", or "Hybrid + rerank" for a mode a run also scored with its reranker."""
    base = mode.removesuffix(RERANK_SUFFIX)
    label = str(RetrievalMode(base).label) if base in RetrievalMode.values else base
    return _("%(mode)s + rerank") % {"mode": label} if mode.endswith(RERANK_SUFFIX) else label


def figure(metric: str, value: Any) -> str:
    if not isinstance(value, int | float):
        return "–"
    return f"{value:.0f}" if metric.startswith("latency") else f"{value:.3f}"


@dataclass(frozen=True)
class ModeFigures:
    mode: str
    label: str
    values: list[str]  # in FIGURE_METRICS order


def mode_figures(metrics: dict[str, Any]) -> list[ModeFigures]:
    return [
        ModeFigures(mode, mode_label(mode), [figure(name, (values or {}).get(name)) for name in FIGURE_METRICS])
        for mode, values in metrics.items()
    ]


@dataclass(frozen=True)
class RunRow:
    run: EvaluationRun
    active: bool
    figures: list[ModeFigures]


def run_rows(runs: Iterable[EvaluationRun]) -> list[RunRow]:
    return [RunRow(run, run.status in ACTIVE_STATUSES, mode_figures(run.metrics or {})) for run in runs]


def history(evaluation_set: EvaluationSet) -> list[EvaluationRun]:
    """The set's latest finished runs, oldest first."""
    latest = evaluation_set.runs.filter(status=RunStatus.DONE).order_by("-pk")[:HISTORY_RUNS]
    return list(reversed(latest))


def history_chart(evaluation_set: EvaluationSet, runs: Sequence[EvaluationRun]) -> str | None:
    """The chart of the runs that scored the default mode (hybrid), or None when none did."""
    points = [ChartPoint(f"#{run.pk}", run.metrics[GATE_MODE]) for run in runs if GATE_MODE in (run.metrics or {})]
    if not points:
        return None
    title = _("%(set)s: figures per run (%(mode)s)") % {"set": evaluation_set.name, "mode": mode_label(GATE_MODE)}
    return line_chart(title, points)


@dataclass(frozen=True)
class SetRow:
    evaluation_set: EvaluationSet
    latest: EvaluationRun | None
    recall_at_5: list[tuple[str, str]]  # (mode label, figure) of the latest run
    chart: str | None


def set_row(evaluation_set: EvaluationSet) -> SetRow:
    runs = history(evaluation_set)
    latest = runs[-1] if runs else None
    recall = [
        (mode_label(mode), figure("recall@5", (values or {}).get("recall@5")))
        for mode, values in (latest.metrics if latest else {}).items()
    ]
    return SetRow(evaluation_set, latest, recall, history_chart(evaluation_set, runs))


# --- lookups: another team's ids are not found ------------------------------------------------


def _id(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def set_of(kb: KnowledgeBase, value: str | None) -> EvaluationSet:
    """The set `value` names among this knowledge base's (select_related for the services)."""
    set_id = _id(value)
    evaluation_set = (
        None
        if set_id is None
        else EvaluationSet.objects.select_related("knowledge_base", "team").filter(knowledge_base=kb, pk=set_id).first()
    )
    if evaluation_set is None:
        raise Http404(_("No such evaluation set."))
    return evaluation_set


def item_of(kb: KnowledgeBase, item_id: int) -> EvaluationItem:
    item = (
        EvaluationItem.objects.select_related("evaluation_set__knowledge_base")
        .filter(evaluation_set__knowledge_base=kb, pk=item_id)
        .first()
    )
    if item is None:
        raise Http404(_("No such question."))
    return item


def _refused(request: HttpRequest, text: str) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": {"code": "permission_denied", "message": text}}, status=403)
    return HttpResponse(text, status=403)


def _wants_json(request: HttpRequest) -> bool:
    """kb.js posts the hit-testing form with fetch and asks for JSON; a plain form post gets a page."""
    return request.headers.get("Accept", "").startswith("application/json")


def _back(request: HttpRequest, kb: KnowledgeBase, anchor: str = "") -> HttpResponse:
    """Back to the page the form was on (a `next` of this site), else the evaluation page."""
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("web:kb-evaluation", args=[kb.pk]) + anchor
    return redirect(target)


# --- pages ------------------------------------------------------------------------------------


@login_required
def evaluation_page(request: HttpRequest, pk: int) -> HttpResponse:
    kb = knowledge_base_for(request, pk, switch_team=True)
    can_edit = has_role(request, kb, EDIT_ROLE)
    sets = list(sets_with_counts(kb.evaluation_sets.all()).order_by("name"))
    runs = EvaluationRun.objects.filter(knowledge_base=kb).select_related("evaluation_set").order_by("-pk")
    drafts = (
        EvaluationItem.objects.filter(evaluation_set__knowledge_base=kb, status=ItemStatus.DRAFT)
        .select_related("evaluation_set")
        .order_by("pk")
    )
    documents = (
        Document.objects.filter(knowledge_base=kb, status=DocumentStatus.READY).order_by("original_name")
        if can_edit
        else Document.objects.none()
    )
    return render(
        request,
        "web/evaluation/page.html",
        {
            "kb": kb,
            "sets": [set_row(evaluation_set) for evaluation_set in sets],
            "runs": run_rows(runs[:RUNS_SHOWN]),
            "figure_headers": FIGURE_COLUMNS,
            "drafts": drafts[:DRAFTS_SHOWN],
            "draft_count": drafts.count(),
            "documents": documents[:DOCUMENTS_SHOWN],
            "modes": RetrievalMode.choices,
            "run_statuses": RunStatus.choices,
            "default_top_k": DEFAULT_TOP_K,
            "default_per_document": DEFAULT_PER_DOCUMENT,
            "max_per_document": MAX_PER_DOCUMENT,
            "max_draft_documents": MAX_DRAFT_DOCUMENTS,
            "can_run": has_role(request, kb, RUN_ROLE),
            "can_edit": can_edit,
            "can_decide": can_edit,
        },
    )


def _chosen_run(
    choices: Sequence[EvaluationRun], value: str | None, default: EvaluationRun | None
) -> EvaluationRun | None:
    """The finished run of the set that `value` names (404 for any other id), else `default`."""
    if value is None:
        return default
    run_id = _id(value)
    for run in choices:
        if run.pk == run_id:
            return run
    raise Http404(_("No such run."))


@login_required
def evaluation_set_page(request: HttpRequest, pk: int, set_id: int) -> HttpResponse:
    """A set's history (chart and figures of its finished runs), the per-question diff between
    two of them (by default the latest two) and its questions."""
    kb = knowledge_base_for(request, pk, switch_team=True)
    evaluation_set = set_of(kb, str(set_id))
    done = list(evaluation_set.runs.filter(status=RunStatus.DONE).order_by("-pk")[:DIFF_CHOICES])
    after = _chosen_run(done, request.GET.get("after"), done[0] if len(done) >= 2 else None)
    before = _chosen_run(done, request.GET.get("before"), done[1] if len(done) >= 2 else None)
    diff: dict[str, Any] | None = None
    if after is not None and before is not None:
        modes = [mode for mode in after.metrics if mode in before.metrics]
        wanted = request.GET.get("mode", GATE_MODE)
        mode = wanted if wanted in modes else (GATE_MODE if GATE_MODE in modes else (modes[0] if modes else ""))
        changes = runs_diff(before=before, after=after, mode=mode) if mode and before.pk != after.pk else []
        diff = {
            "before": before,
            "after": after,
            "mode": mode,
            "modes": [(choice, mode_label(choice)) for choice in modes],
            "changes": changes,
            "worse": sum(1 for change in changes if change.worse),
        }
    runs = list(reversed(done[:HISTORY_RUNS]))
    items = evaluation_set.items.filter(status=ItemStatus.ACCEPTED).order_by("pk")
    return render(
        request,
        "web/evaluation/set.html",
        {
            "kb": kb,
            "evaluation_set": evaluation_set,
            "chart": history_chart(evaluation_set, runs),
            "runs": run_rows(reversed(runs)),
            "figure_headers": FIGURE_COLUMNS,
            "done": done,
            "diff": diff,
            "items": items[:ITEMS_SHOWN],
            "item_count": items.count(),
            "can_edit": has_role(request, kb, EDIT_ROLE),
        },
    )


# --- forms ------------------------------------------------------------------------------------


@login_required
@require_POST
def evaluation_set_create_view(request: HttpRequest, pk: int) -> HttpResponse:
    kb = knowledge_base_for(request, pk)
    if not has_role(request, kb, EDIT_ROLE):
        return _refused(request, _("Only the team's admins and owners may create evaluation sets."))
    threshold_text = request.POST.get("gate_threshold", "").strip()
    try:
        threshold = float(threshold_text) if threshold_text else None
    except ValueError:
        messages.error(request, _("The gate threshold is a number between 0 and 1, e.g. 0.02."))
        return _back(request, kb)
    try:
        evaluation_set = evaluation_set_create(
            kb=kb,
            name=request.POST.get("name", ""),
            description=request.POST.get("description", "").strip(),
            gate_threshold=threshold,
        )
    except DomainError as exc:
        messages.error(request, _("The set was not created: %(reason)s") % {"reason": exc})
        return _back(request, kb)
    messages.success(
        request, _("Evaluation set %(name)s created: import or add questions.") % {"name": evaluation_set.name}
    )
    return _back(request, kb, f"#set-{evaluation_set.pk}")


@login_required
@require_POST
def evaluation_import(request: HttpRequest, pk: int) -> HttpResponse:
    kb = knowledge_base_for(request, pk)
    evaluation_set = set_of(kb, request.POST.get("evaluation_set"))
    if not has_role(request, kb, EDIT_ROLE):
        return _refused(request, _("Only the team's admins and owners may import questions."))
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, _("Choose a JSONL or CSV file of questions to import."))
        return _back(request, kb)
    if upload.size is not None and upload.size > MAX_IMPORT_BYTES:
        messages.error(request, _("The file is larger than %(mb)s MB: split it.") % {"mb": MAX_IMPORT_BYTES // 2**20})
        return _back(request, kb)
    try:
        created = items_import(evaluation_set=evaluation_set, data=upload.read(), name=upload.name or "items")
    except DomainError as exc:
        messages.error(request, _("Nothing was imported: %(reason)s") % {"reason": exc})
        return _back(request, kb)
    messages.success(
        request,
        _("%(count)s questions imported into %(name)s.") % {"count": len(created), "name": evaluation_set.name},
    )
    return _back(request, kb, f"#set-{evaluation_set.pk}")


@login_required
@require_POST
def evaluation_run_start(request: HttpRequest, pk: int) -> HttpResponse:
    kb = knowledge_base_for(request, pk)
    evaluation_set = set_of(kb, request.POST.get("evaluation_set"))
    if not has_role(request, kb, RUN_ROLE):
        return _refused(request, _("Viewers cannot start runs: ask a team admin to make you a member."))
    top_k = _id(request.POST.get("top_k")) or DEFAULT_TOP_K
    try:
        run = run_start(
            evaluation_set=evaluation_set,
            modes=request.POST.getlist("modes"),
            top_k=top_k,
            created_by=_user(request),
        )
    except DomainError as exc:
        messages.error(request, _("The run was not started: %(reason)s") % {"reason": exc})
        return _back(request, kb)
    messages.success(request, _("Run #%(run)s of %(name)s is queued.") % {"run": run.pk, "name": evaluation_set.name})
    return _back(request, kb, "#runs")


@login_required
@require_POST
def evaluation_draft(request: HttpRequest, pk: int) -> HttpResponse:
    kb = knowledge_base_for(request, pk)
    evaluation_set = set_of(kb, request.POST.get("evaluation_set"))
    chosen = request.POST.getlist("documents")
    document_ids = [_id(value) for value in chosen]
    known = set(
        Document.objects.filter(knowledge_base=kb, pk__in=[i for i in document_ids if i]).values_list("pk", flat=True)
    )
    if any(document_id not in known for document_id in document_ids):
        raise Http404(_("No such document."))
    if not has_role(request, kb, EDIT_ROLE):
        return _refused(request, _("Only the team's admins and owners may draft questions."))
    per_document = _id(request.POST.get("per_document")) or DEFAULT_PER_DOCUMENT
    try:
        drafting_start(
            evaluation_set=evaluation_set,
            document_ids=sorted(known),
            per_document=per_document,
            user_id=_user(request).pk,
        )
    except DomainError as exc:
        messages.error(request, _("Nothing was drafted: %(reason)s") % {"reason": exc})
        return _back(request, kb)
    messages.success(
        request,
        _(
            "The team's model is drafting questions from %(count)s documents: reload this page in a "
            "moment and review them under Drafts."
        )
        % {"count": len(known)},
    )
    return _back(request, kb, "#drafts")


@login_required
@require_POST
def item_accept(request: HttpRequest, pk: int, item_id: int) -> HttpResponse:
    kb = knowledge_base_for(request, pk)
    item = item_of(kb, item_id)
    if not has_role(request, kb, EDIT_ROLE):
        return _refused(request, _("Only the team's admins and owners may accept questions."))
    try:
        item_update(item=item, data={}, status=ItemStatus.ACCEPTED)
    except DomainError as exc:
        messages.error(request, _("The question was not accepted: %(reason)s") % {"reason": exc})
    else:
        messages.success(request, _("Accepted: it counts in the next run of %(name)s.") % {"name": item.evaluation_set})
    return _back(request, kb, "#drafts")


@login_required
@require_POST
def item_remove(request: HttpRequest, pk: int, item_id: int) -> HttpResponse:
    kb = knowledge_base_for(request, pk)
    item = item_of(kb, item_id)
    if not has_role(request, kb, EDIT_ROLE):
        return _refused(request, _("Only the team's admins and owners may delete questions."))
    item_delete(item=item)
    messages.success(request, _("The question was deleted."))
    return _back(request, kb, "#drafts")


@login_required
@require_POST
def evaluation_from_hit(request: HttpRequest, pk: int) -> HttpResponse:
    """A hit-testing result as a question: the query, expecting the result's document."""
    kb = knowledge_base_for(request, pk)
    evaluation_set = set_of(kb, request.POST.get("evaluation_set"))
    if not has_role(request, kb, EDIT_ROLE):
        return _refused(request, _("Only the team's admins and owners may add questions to a set."))
    data = {"question": request.POST.get("question", ""), "expected_document": request.POST.get("expected_document")}
    try:
        item = item_create(evaluation_set=evaluation_set, data=data, source=ItemSource.HIT_TEST)
    except DomainError as exc:
        text = _("Not added: %(reason)s") % {"reason": exc}
        if _wants_json(request):
            return JsonResponse({"error": {"code": exc.code, "message": text}}, status=400)
        messages.error(request, text)
        return redirect(reverse("web:kb-detail", args=[kb.pk]) + "#hit-testing")
    text = _("Added to %(name)s.") % {"name": evaluation_set.name}
    if _wants_json(request):
        return JsonResponse({"message": text, "item": item.pk}, status=201)
    messages.success(request, text)
    return redirect(reverse("web:kb-detail", args=[kb.pk]) + "#hit-testing")


# --- from a chat answer -----------------------------------------------------------------------


def answer_evaluation_sets(*, user: User, team_id: int, answers: Iterable[Message]) -> dict[int, list[EvaluationSet]]:
    """For an admin of the conversation's team: per answer with citations, the sets of the
    knowledge bases it cites (item_from_message expects those documents). Nobody else gets any."""
    cited = {
        answer.pk: {citation.get("knowledge_base_id") for citation in answer.citations if isinstance(citation, dict)}
        for answer in answers
        if answer.role == Message.Role.ASSISTANT and answer.citations
    }
    if not cited or not has_team_role(user=user, api_key=None, team_id=team_id, role=EDIT_ROLE):
        return {}
    kb_ids = set().union(*cited.values())
    sets = list(
        EvaluationSet.objects.filter(
            team_id=team_id, knowledge_base_id__in=kb_ids, knowledge_base__in=knowledge_bases_visible(user=user)
        )
        .select_related("knowledge_base")
        .order_by("knowledge_base__name", "name")
    )
    return {
        answer_id: [evaluation_set for evaluation_set in sets if evaluation_set.knowledge_base_id in ids]
        for answer_id, ids in cited.items()
    }


@login_required
@require_POST
def message_to_evaluation(request: HttpRequest, pk: int) -> HttpResponse:
    """A chat answer marked good, as a question of a set of a knowledge base it cites."""
    user = _user(request)
    message = (
        Message.objects.filter(pk=pk, role=Message.Role.ASSISTANT, conversation__in=conversations_visible(user=user))
        .select_related("conversation")
        .first()
    )
    if message is None:
        raise Http404(_("No such message."))
    team_id = message.conversation.team_id
    set_id = _id(request.POST.get("evaluation_set"))
    evaluation_set = (
        EvaluationSet.objects.select_related("knowledge_base")
        .filter(pk=set_id, team_id=team_id, knowledge_base__in=knowledge_bases_visible(user=user))
        .first()
        if set_id is not None
        else None
    )
    if evaluation_set is None:
        raise Http404(_("No such evaluation set."))
    if not has_team_role(user=user, api_key=None, team_id=team_id, role=EDIT_ROLE):
        return HttpResponse(_("Only the team's admins and owners may add questions to a set."), status=403)
    try:
        item_from_message(evaluation_set=evaluation_set, message=message)
    except DomainError as exc:
        messages.error(request, _("Not added: %(reason)s") % {"reason": exc})
    else:
        added = _("The question behind this answer was added to %(name)s.") % {"name": evaluation_set.name}
        messages.success(request, added)
    return redirect(reverse("web:conversation", args=[message.conversation_id]) + f"#message-{message.pk}")
