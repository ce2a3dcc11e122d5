"""Fine-tuning dataset pages: the team's datasets with a build form (members and above), a
dataset's page with its status (datasets.js follows a build under way through the REST API, as
kb.js follows documents), the filters it was built with, its cleaning report, a preview of its
first rows, the download and delete; and the review page where admins and owners write gold
answers over the assistant's (the answer itself never changes).

Who builds from whose conversations and who sees a dataset: finetune.selectors, the same rules as
the REST API (finetune.api). Another team's dataset or message is not found (404); what a service
refuses is said on the page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.functional import Promise
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from accounts.models import Role, Team, User
from accounts.selectors import has_team_role
from chat.models import Assistant, Message
from core.domain_errors import DomainError
from finetune.models import Dataset, DatasetFormat, DatasetStatus
from finetune.selectors import (
    REVIEW_FILTERS,
    answer_for_review,
    answers_to_review,
    datasets_visible,
    reviewable,
    role_in,
)
from finetune.services import (
    MAX_GOLD_CHARS,
    MAX_HOLDOUT_PERCENT,
    DatasetNotReady,
    dataset_archive_name,
    dataset_delete,
    dataset_require_ready,
    dataset_start,
    gold_answer_delete,
    gold_answer_set,
)
from kb.models import KnowledgeBase
from kb.selectors import knowledge_bases_visible
from web.teams import current_membership, team_of_form, team_switch

# As finetune.api: members build, the creator or an admin deletes, admins and owners review.
BUILD_ROLE = Role.MEMBER
DELETE_ROLE = Role.ADMIN
REVIEW_ROLE = Role.ADMIN
DATASETS_PER_PAGE = 50
ANSWERS_PER_PAGE = 50
ACTIVE_STATUSES = (DatasetStatus.QUEUED, DatasetStatus.BUILDING)
DATE_INPUT = "%Y-%m-%d"  # what <input type=date> reads, in every language (Chinese formats use /)

FEEDBACK_LABELS: dict[str, Promise] = {
    "any": gettext_lazy("Every answer not marked bad"),
    "positive": gettext_lazy("Only answers marked good (or with a gold answer)"),
}
REVIEWED_LABELS: dict[str, Promise] = {
    "any": gettext_lazy("Reviewed or not"),
    "only": gettext_lazy("Only answers with a gold answer"),
}
# The reasons finetune.building drops an answer for, and the kinds finetune.scrub replaces; a key
# not listed here is shown as it is.
DROP_LABELS: dict[str, Promise] = {
    "failed_or_stopped": gettext_lazy("Failed, stopped or unfinished answers"),
    "negative_feedback": gettext_lazy("Answers marked bad"),
    "no_feedback": gettext_lazy("Answers not marked good"),
    "not_reviewed": gettext_lazy("Answers without a gold answer"),
    "no_question": gettext_lazy("Answers without a question before them"),
    "empty": gettext_lazy("Empty answers"),
    "duplicate": gettext_lazy("Duplicates"),
    "near_duplicate": gettext_lazy("Near duplicates"),
    "unpaired": gettext_lazy("Answers with no opposite to pair with"),
    "no_citation": gettext_lazy("Answers citing no source"),
    "chunk_gone": gettext_lazy("Cited passages no longer stored"),
    "no_negative": gettext_lazy("Passages without a hard negative"),
}
SCRUB_LABELS: dict[str, Promise] = {
    "email": gettext_lazy("E-mail addresses"),
    "phone": gettext_lazy("Phone numbers"),
    "id_number": gettext_lazy("ID and card numbers"),
    "secret": gettext_lazy("API keys and secrets"),
}
REVIEW_FILTER_LABELS: dict[str, Promise] = {
    "any": gettext_lazy("All answers"),
    "up": gettext_lazy("Marked good"),
    "down": gettext_lazy("Marked bad"),
    "gold": gettext_lazy("With a gold answer"),
}


# --- the build form ---------------------------------------------------------------------------


class DatasetForm(forms.Form):
    """The build form. The assistant and the knowledge base are plain ids offered as the team's
    choices: dataset_start checks them, so another team's id is refused in the service's words."""

    team = forms.IntegerField(widget=forms.HiddenInput)
    name = forms.CharField(label=gettext_lazy("Name"), max_length=200)
    format = forms.ChoiceField(label=gettext_lazy("Format"), choices=DatasetFormat.choices)
    assistant = forms.IntegerField(label=gettext_lazy("Assistant"), required=False, widget=forms.Select)
    knowledge_base = forms.IntegerField(
        label=gettext_lazy("Answers citing the knowledge base"), required=False, widget=forms.Select
    )
    since = forms.DateField(
        label=gettext_lazy("From"), required=False, widget=forms.DateInput(attrs={"type": "date"}, format=DATE_INPUT)
    )
    until = forms.DateField(
        label=gettext_lazy("Until (that day included)"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format=DATE_INPUT),
    )
    feedback = forms.ChoiceField(label=gettext_lazy("Feedback"), choices=list(FEEDBACK_LABELS.items()), initial="any")
    reviewed = forms.ChoiceField(label=gettext_lazy("Reviewed"), choices=list(REVIEWED_LABELS.items()), initial="any")
    # No bounds here: dataset_start refuses what is out of range, in its words.
    holdout_percent = forms.IntegerField(
        label=gettext_lazy("Hold back (percent of conversations, for comparing a trained adapter)"),
        required=False,
        initial=0,
        widget=forms.NumberInput(attrs={"min": 0, "max": MAX_HOLDOUT_PERCENT, "step": 1}),
    )

    def __init__(self, *args: Any, team: Team, user: User, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {})
        kwargs["initial"].setdefault("team", team.pk)
        super().__init__(*args, **kwargs)
        everything = [("", _("All"))]
        assistants = Assistant.objects.filter(team=team).order_by("name").values_list("pk", "name")
        self.fields["assistant"].widget.choices = everything + list(assistants)
        knowledge_bases = (
            knowledge_bases_visible(user=user)
            .filter(team=team, file_conversation__isnull=True)
            .order_by("name")
            .values_list("pk", "name")
        )
        self.fields["knowledge_base"].widget.choices = everything + list(knowledge_bases)

    def filters(self) -> dict[str, Any]:
        """The cleaned fields as dataset_start's `filters`."""
        data = self.cleaned_data
        filters: dict[str, Any] = {"feedback": data["feedback"], "reviewed": data["reviewed"]}
        for key in ("assistant", "knowledge_base"):
            if data[key] is not None:
                filters[key] = data[key]
        for key in ("since", "until"):
            if isinstance(data[key], date):
                filters[key] = data[key].isoformat()
        return filters


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # every view here is login_required
    return request.user


def _has_role(request: HttpRequest, team_id: int, role: Role) -> bool:
    return has_team_role(user=_user(request), api_key=None, team_id=team_id, role=role)


def _visible(request: HttpRequest) -> QuerySet[Dataset]:
    return datasets_visible(user=_user(request)).select_related("team", "created_by")


# --- the list and the build form --------------------------------------------------------------


def _page_number(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


def _list_context(request: HttpRequest, team: Team, form: DatasetForm | None) -> dict[str, Any]:
    page = Paginator(_visible(request).filter(team=team).order_by("-pk"), DATASETS_PER_PAGE).get_page(
        _page_number(request.GET.get("page"))
    )
    can_build = _has_role(request, team.pk, BUILD_ROLE)
    if can_build and form is None:
        form = DatasetForm(team=team, user=_user(request))
    return {
        "team": team,
        "page": page,
        "datasets": [{"dataset": dataset, "active": dataset.status in ACTIVE_STATUSES} for dataset in page.object_list],
        "can_build": can_build,
        "can_review": _has_role(request, team.pk, REVIEW_ROLE),
        "form": form,
        "status_labels": DatasetStatus.choices,
    }


@login_required
def dataset_list(request: HttpRequest) -> HttpResponse:
    team = current_membership(request).team
    return render(request, "web/datasets/list.html", _list_context(request, team, None))


@login_required
@require_POST
def dataset_create_view(request: HttpRequest) -> HttpResponse:
    team = team_of_form(request)
    if not _has_role(request, team.pk, BUILD_ROLE):
        return HttpResponse(
            _("Only the team's members, admins and owners build datasets: ask an admin for the member role."),
            status=403,
        )
    form = DatasetForm(request.POST, team=team, user=_user(request))
    if form.is_valid():
        try:
            dataset = dataset_start(
                team=team,
                user=_user(request),
                name=form.cleaned_data["name"],
                format=form.cleaned_data["format"],
                filters=form.filters(),
                holdout_percent=form.cleaned_data["holdout_percent"] or 0,
            )
        except DomainError as exc:
            form.add_error(None, capfirst(str(exc)))
        else:
            messages.success(
                request,
                _("Dataset %(name)s v%(version)s is queued: this page follows its build.")
                % {"name": dataset.name, "version": dataset.version},
            )
            return redirect("web:dataset-detail", dataset.pk)
    return render(request, "web/datasets/list.html", _list_context(request, team, form), status=400)


# --- a dataset's page -------------------------------------------------------------------------


def dataset_for(request: HttpRequest, pk: int, *, switch_team: bool = False) -> Dataset:
    """The dataset `pk` if the user may see it (finetune.selectors.datasets_visible), or 404:
    another team's, or one built by a role the user does not rank above, is not found. A page
    opened from a link into another of the user's teams switches to it."""
    dataset = _visible(request).filter(pk=pk).first()
    if dataset is None:
        raise Http404(_("No such dataset."))
    if switch_team and current_membership(request).team_id != dataset.team_id:
        team_switch(request, dataset.team_id)
    return dataset


def _may_delete(request: HttpRequest, dataset: Dataset) -> bool:
    """As the API's destroy: a member of the team who built it, or an admin."""
    if not _has_role(request, dataset.team_id, BUILD_ROLE):
        return False
    return dataset.created_by_id == _user(request).pk or _has_role(request, dataset.team_id, DELETE_ROLE)


@dataclass(frozen=True)
class Count:
    key: str
    label: str
    count: int


def _counted(values: Any, labels: dict[str, Promise]) -> list[Count]:
    """A {key: n} of the report, each with its label (the raw key where none is known): the known
    keys in the labels' order, then the others by name (a JSON column keeps no order of its own)."""
    if not isinstance(values, dict):
        return []
    known = list(labels)
    order = sorted(values, key=lambda key: (known.index(key) if key in known else len(known), str(key)))
    return [Count(str(key), str(labels.get(key, key)), values[key]) for key in order]


def _moment(value: Any) -> Any:
    parsed = parse_datetime(value) if isinstance(value, str) else None
    return parsed or value


def _filters_described(dataset: Dataset) -> list[tuple[str, Any]]:
    """The filters as a person reads them: names, not ids (an object deleted since is said so)."""
    filters = dataset.filters if isinstance(dataset.filters, dict) else {}
    described: list[tuple[str, Any]] = []
    if filters.get("assistant") is not None:
        assistant = Assistant.objects.filter(pk=filters["assistant"], team=dataset.team_id).first()
        described.append((_("Assistant"), assistant.name if assistant else _("an assistant deleted since")))
    if filters.get("knowledge_base") is not None:
        kb = KnowledgeBase.objects.filter(pk=filters["knowledge_base"], team=dataset.team_id).first()
        described.append((_("Answers citing"), kb.name if kb else _("a knowledge base deleted since")))
    if filters.get("since"):
        described.append((_("Answers from"), _moment(filters["since"])))
    if filters.get("until"):
        described.append((_("Answers before"), _moment(filters["until"])))
    feedback = filters.get("feedback", "any")
    described.append((_("Feedback"), FEEDBACK_LABELS.get(feedback, feedback)))
    reviewed = filters.get("reviewed", "any")
    described.append((_("Reviewed"), REVIEWED_LABELS.get(reviewed, reviewed)))
    if dataset.holdout_percent:
        described.append(
            (_("Held back"), _("%(percent)s%% of the conversations") % {"percent": dataset.holdout_percent})
        )
    return described


def _preview_rows(preview: Any) -> list[str]:
    """Each row as pretty-printed JSON text: the template escapes it like any user text."""
    if not isinstance(preview, list):
        return []
    return [json.dumps(row, ensure_ascii=False, indent=2) for row in preview]


def dataset_context(
    request: HttpRequest, dataset: Dataset, *, adapter_forms: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a dataset's page shows, with its Adapters section (web.views.adapters; a refused form
    of that section comes back bound, in `adapter_forms`)."""
    from web.views.adapters import adapters_context  # it builds on this module's helpers

    counts = dataset.counts if isinstance(dataset.counts, dict) else {}
    ready = dataset.status == DatasetStatus.READY and bool(dataset.file)
    return {
        "dataset": dataset,
        "active": dataset.status in ACTIVE_STATUSES,
        "status_labels": DatasetStatus.choices,
        "filters": _filters_described(dataset),
        "report": {
            "messages_read": counts.get("messages_read"),
            "kept": counts.get("kept"),
            "held_back": counts.get("held_back"),
            "dropped": _counted(counts.get("dropped"), DROP_LABELS),
            "scrubbed": _counted(counts.get("scrubbed"), SCRUB_LABELS),
        }
        if counts
        else None,
        "kept_means": _("pairs written") if dataset.format == DatasetFormat.DPO else _("rows written"),
        "preview": _preview_rows(dataset.preview),
        "can_download": ready,
        "can_delete": _may_delete(request, dataset),
    } | adapters_context(request, dataset, **(adapter_forms or {}))


@login_required
def dataset_page(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = dataset_for(request, pk, switch_team=True)
    return render(request, "web/datasets/detail.html", dataset_context(request, dataset))


@login_required
def dataset_download(request: HttpRequest, pk: int) -> HttpResponse | FileResponse:
    """The zip, through the API's checks: 404 unless the user may see the dataset; until it is
    ready, its page with the reason (409)."""
    dataset = dataset_for(request, pk)
    try:
        dataset_require_ready(dataset=dataset)
    except DatasetNotReady as exc:
        messages.error(request, _("There is nothing to download yet: %(reason)s") % {"reason": exc})
        return render(request, "web/datasets/detail.html", dataset_context(request, dataset), status=409)
    response = FileResponse(
        dataset.file.open("rb"),
        as_attachment=True,
        filename=dataset_archive_name(dataset),
        content_type="application/zip",
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_POST
def dataset_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = dataset_for(request, pk)
    if not _may_delete(request, dataset):
        return HttpResponse(_("Only the dataset's creator or a team admin may delete it: ask one of them."), status=403)
    label = str(dataset)
    dataset_delete(dataset=dataset)
    messages.success(request, _("Dataset %(name)s deleted.") % {"name": label})
    return redirect("web:dataset-list")


# --- reviewing answers ------------------------------------------------------------------------


def _review_forbidden() -> HttpResponse:
    return HttpResponse(_("Only the team's admins and owners review answers: ask one of them."), status=403)


@login_required
def review_page(request: HttpRequest) -> HttpResponse:
    """The answers of the conversations the admin could build from, newest first."""
    membership = current_membership(request)
    if not membership.has_role(REVIEW_ROLE):
        return _review_forbidden()
    chosen = request.GET.get("feedback", "any")
    if chosen not in REVIEW_FILTERS:
        chosen = "any"
    answers = answers_to_review(team=membership.team, user=_user(request), role=Role(membership.role), feedback=chosen)
    page = Paginator(answers, ANSWERS_PER_PAGE).get_page(_page_number(request.GET.get("page")))
    return render(
        request,
        "web/datasets/review.html",
        {
            "team": membership.team,
            "page": page,
            # A missing reverse one-to-one raises: each answer's gold answer, or None.
            "answers": [{"answer": answer, "gold": getattr(answer, "gold_answer", None)} for answer in page],
            "chosen": chosen,
            "review_filters": list(REVIEW_FILTER_LABELS.items()),
            "back": request.get_full_path(),
            "max_gold_chars": MAX_GOLD_CHARS,
        },
    )


def _reviewable_message(request: HttpRequest, message_id: int) -> Message | HttpResponse:
    """The answer if the user may review it (the API's GoldAnswerView checks): another team's is
    not found, a non-admin is refused, a conversation the admin could not build from is not found."""
    user = _user(request)
    message = answer_for_review(user=user, api_key=None, message_id=message_id)
    if message is None:
        raise Http404(_("No such answer."))
    team_id = message.conversation.team_id
    if not _has_role(request, team_id, REVIEW_ROLE):
        return _review_forbidden()
    role = role_in(team=team_id, user=user)
    if role is None or not reviewable(message=message, user=user, role=role):
        raise Http404(_("No such answer."))
    return message


def _back_to_review(request: HttpRequest, message_id: int) -> HttpResponse:
    """Back to the review page the form was on (its filter and page), at the answer."""
    target = request.POST.get("next", "")
    if not target.startswith(reverse("web:dataset-review")) or not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}
    ):
        target = reverse("web:dataset-review")
    return redirect(f"{target}#answer-{message_id}")


@login_required
@require_POST
def gold_set_view(request: HttpRequest, message_id: int) -> HttpResponse:
    message = _reviewable_message(request, message_id)
    if isinstance(message, HttpResponse):
        return message
    try:
        gold_answer_set(message=message, reviewer=_user(request), text=request.POST.get("text", ""))
    except DomainError as exc:
        messages.error(request, _("The gold answer was not saved: %(reason)s") % {"reason": exc})
    else:
        messages.success(request, _("Gold answer saved: datasets use it instead of the answer."))
    return _back_to_review(request, message.pk)


@login_required
@require_POST
def gold_delete_view(request: HttpRequest, message_id: int) -> HttpResponse:
    message = _reviewable_message(request, message_id)
    if isinstance(message, HttpResponse):
        return message
    if gold_answer_delete(message=message):
        messages.success(request, _("Gold answer removed: datasets use the assistant's answer again."))
    else:
        messages.error(request, _("This answer has no gold answer to remove."))
    return _back_to_review(request, message.pk)
