"""Knowledge-base pages: the team's list with a create form, and a knowledge base's page where
kb.js uploads files, follows their ingestion and runs hit tests, all through the REST API; the
page also shows a rebuild held by its evaluation gate, for an admin to swap or keep."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.functional import Promise
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from accounts.models import Role, Team, User
from accounts.selectors import has_team_role
from kb.models import (
    DEFAULT_CHUNK_HEADERS,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SPLITTER,
    Document,
    DocumentStatus,
    KnowledgeBase,
    RetrievalMode,
    Splitter,
)
from kb.selectors import knowledge_bases_visible
from kb.services import KnowledgeBaseError, kb_create, kb_rebuild_decide
from models_registry.models import ModelKind, ModelRegistration
from models_registry.selectors import team_default_model
from web.teams import current_membership, team_of_form, team_switch

# The page renders the newest documents; kb.js keeps those (and any added later) up to date.
DOCUMENTS_SHOWN = 200
# KnowledgeBaseViewSet.perform_create asks for this role: the page allows no more than the API.
CREATE_ROLE = Role.ADMIN
UPLOAD_ROLE = Role.MEMBER
DECIDE_ROLE = Role.ADMIN  # a held rebuild, as the API's rebuild-decision

STATUS_LABELS: dict[str, Promise] = {
    DocumentStatus.QUEUED: gettext_lazy("Queued"),
    DocumentStatus.PARSING: gettext_lazy("Parsing"),
    DocumentStatus.EMBEDDING: gettext_lazy("Embedding"),
    DocumentStatus.READY: gettext_lazy("Ready"),
    DocumentStatus.FAILED: gettext_lazy("Failed"),
}
SPLITTER_LABELS = {
    Splitter.RECURSIVE: gettext_lazy("Recursive characters (knows Chinese punctuation)"),
    Splitter.TOKENS: gettext_lazy("Token count (the embedding model's tokenizer)"),
    Splitter.HEADINGS: gettext_lazy("Heading-aware (Markdown and HTML), then recursive"),
}
SEARCH_MODES = [*RetrievalMode.choices, ("all", gettext_lazy("All three, side by side"))]


class EmbeddingModelField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelRegistration) -> str:
        return f"{obj.name} ({obj.dimensions})" if obj.dimensions else obj.name


class KnowledgeBaseForm(forms.Form):
    team = forms.IntegerField(widget=forms.HiddenInput)
    name = forms.CharField(label=gettext_lazy("Name"), max_length=200)
    description = forms.CharField(
        label=gettext_lazy("Description"), required=False, widget=forms.Textarea(attrs={"rows": 3})
    )
    embedding_model = EmbeddingModelField(
        label=gettext_lazy("Embedding model"), queryset=ModelRegistration.objects.none(), empty_label=None
    )
    splitter = forms.ChoiceField(label=gettext_lazy("Splitter"), choices=list(SPLITTER_LABELS.items()))
    chunk_size = forms.IntegerField(
        label=gettext_lazy("Chunk size"), min_value=20, max_value=8000, initial=DEFAULT_CHUNK_SIZE
    )
    chunk_overlap = forms.IntegerField(label=gettext_lazy("Chunk overlap"), min_value=0, initial=DEFAULT_CHUNK_OVERLAP)
    chunk_headers = forms.BooleanField(
        label=gettext_lazy("Start each chunk with its page title and headings"),
        required=False,
        initial=DEFAULT_CHUNK_HEADERS,
    )

    def __init__(self, *args: Any, team: Team, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {})
        kwargs["initial"].setdefault("team", team.pk)
        kwargs["initial"].setdefault("splitter", DEFAULT_SPLITTER)
        default = team_default_model(team=team, kind=ModelKind.EMBEDDING)
        if default is not None:
            kwargs["initial"].setdefault("embedding_model", default.pk)
        super().__init__(*args, **kwargs)
        # Only the team's own embedding models: an id from another team is simply not a choice.
        field = self.fields["embedding_model"]
        assert isinstance(field, EmbeddingModelField)
        field.queryset = ModelRegistration.objects.filter(team=team, kind=ModelKind.EMBEDDING).order_by("name")


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # every view here is login_required
    return request.user


def _knowledge_bases(request: HttpRequest) -> QuerySet[KnowledgeBase]:
    """The user's teams' knowledge bases, less those holding files dropped into a conversation:
    they belong to the conversation (and may be private to its owner)."""
    return knowledge_bases_visible(user=_user(request)).filter(file_conversation__isnull=True)


def _list_context(request: HttpRequest, team: Team, form: KnowledgeBaseForm | None) -> dict[str, Any]:
    knowledge_bases = (
        _knowledge_bases(request)
        .filter(team=team)
        .select_related("embedding_model")
        .annotate(
            document_count=Count("documents"),
            ready_count=Count("documents", filter=Q(documents__status=DocumentStatus.READY)),
            failed_count=Count("documents", filter=Q(documents__status=DocumentStatus.FAILED)),
        )
        .order_by("name")
    )
    can_create = has_team_role(user=_user(request), api_key=None, team_id=team.pk, role=CREATE_ROLE)
    if can_create and form is None:
        form = KnowledgeBaseForm(team=team)
    return {"team": team, "knowledge_bases": knowledge_bases, "can_create": can_create, "form": form}


@login_required
def kb_list(request: HttpRequest) -> HttpResponse:
    team = current_membership(request).team
    return render(request, "web/kb/list.html", _list_context(request, team, None))


@login_required
@require_POST
def kb_create_view(request: HttpRequest) -> HttpResponse:
    team = team_of_form(request)
    if not has_team_role(user=_user(request), api_key=None, team_id=team.pk, role=CREATE_ROLE):
        return HttpResponse(
            _("Only the team's admins and owners may create knowledge bases: ask one of them."), status=403
        )
    form = KnowledgeBaseForm(request.POST, team=team)
    if form.is_valid():
        data = form.cleaned_data
        try:
            kb = kb_create(
                team=team,
                name=data["name"].strip(),
                description=data["description"],
                embedding_model=data["embedding_model"],
                splitter=data["splitter"],
                chunk_size=data["chunk_size"],
                chunk_overlap=data["chunk_overlap"],
                chunk_headers=data["chunk_headers"],
            )
        except KnowledgeBaseError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Knowledge base %(name)s created: add documents to it.") % {"name": kb.name})
            return redirect("web:kb-detail", kb.pk)
    return render(request, "web/kb/list.html", _list_context(request, team, form), status=400)


def knowledge_base_for(request: HttpRequest, pk: int, *, switch_team: bool = False) -> KnowledgeBase:
    """The knowledge base `pk` of the user's teams, or 404 (another team's is not found, never
    forbidden). A page opened from a link into another of the user's teams switches to it."""
    kb = _knowledge_bases(request).select_related("embedding_model", "team").filter(pk=pk).first()
    if kb is None:
        raise Http404(_("No such knowledge base."))
    if switch_team and current_membership(request).team_id != kb.team_id:
        team_switch(request, kb.team_id)
    return kb


def has_role(request: HttpRequest, kb: KnowledgeBase, role: Role) -> bool:
    return has_team_role(user=_user(request), api_key=None, team_id=kb.team_id, role=role)


@login_required
def kb_detail(request: HttpRequest, pk: int) -> HttpResponse:
    from web.views.kb_web_sources import web_sources_context  # it builds on this module's helpers

    kb = knowledge_base_for(request, pk, switch_team=True)
    documents = list(Document.objects.filter(knowledge_base=kb).order_by("-pk")[:DOCUMENTS_SHOWN])
    counts = Document.objects.filter(knowledge_base=kb).aggregate(
        total=Count("pk"),
        ready=Count("pk", filter=Q(status=DocumentStatus.READY)),
        failed=Count("pk", filter=Q(status=DocumentStatus.FAILED)),
    )
    can_decide = has_role(request, kb, DECIDE_ROLE)
    return render(
        request,
        "web/kb/detail.html",
        {
            "kb": kb,
            "rows": [{"document": document, "status_label": STATUS_LABELS[document.status]} for document in documents],
            "counts": counts,
            "more_documents": max(counts["total"] - len(documents), 0),
            "can_upload": has_role(request, kb, UPLOAD_ROLE),
            "can_decide": can_decide,
            # Hit-testing results may become questions of a set (admins edit sets, as in the API).
            "hit_sets": list(kb.evaluation_sets.order_by("name")) if can_decide else [],
            "status_labels": STATUS_LABELS,
            "search_modes": SEARCH_MODES,
            **web_sources_context(request, kb),
        },
    )


@login_required
@require_POST
def kb_rebuild_decision(request: HttpRequest, pk: int) -> HttpResponse:
    """An admin's answer to a rebuild its evaluation gate held: swap to it anyway, or keep the live
    generation (kb.services.kb_rebuild_decide; the API's rebuild-decision does the same)."""
    kb = knowledge_base_for(request, pk)
    if not has_role(request, kb, DECIDE_ROLE):
        return HttpResponse(_("Only the team's admins and owners may decide on a held rebuild."), status=403)
    # Back to the page the banner was on (the knowledge base's or its evaluation page).
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("web:kb-detail", args=[kb.pk])
    back = redirect(target)
    decision = request.POST.get("decision")
    if decision not in ("swap", "keep"):
        messages.error(request, _("Choose to swap to the rebuild or to keep the live generation."))
        return back
    try:
        kb_rebuild_decide(kb=kb, swap=decision == "swap")
    except KnowledgeBaseError as exc:
        messages.error(request, _("Nothing was decided: %(reason)s") % {"reason": exc})
    else:
        if decision == "swap":
            messages.success(request, _("The rebuild goes live once every document is built."))
        else:
            messages.success(request, _("The live generation stays; the rebuild was dropped."))
    return back
