"""The "Web sources" section of a knowledge base's page: add a URL or sitemap, sync one now,
delete one. Plain form posts that redirect back to the page, where each source shows its status,
pages done of the sync's pages, when it last synced and what went wrong; every write goes
through kb.web_sources, and a refusal (an unsafe address, a duplicate) is shown as it words it.
Roles as in the API: members write, viewers see. A source queued or syncing is followed live by
kb.js (its status and pages through GET /api/v1/web-sources/{id}/; the page reloads when it ends)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from accounts.models import User
from core.domain_errors import DomainError
from kb.models import KnowledgeBase, WebSource, WebSourceKind, WebSourceStatus
from kb.web_api import WRITE_ROLE
from kb.web_sources import DEFAULT_SYNC_INTERVAL_HOURS, web_source_create, web_source_delete, web_source_sync_request
from web.views.kb import has_role, knowledge_base_for

KIND_LABELS: dict[str, Promise] = {
    WebSourceKind.AUTO: gettext_lazy("Decide by content"),
    WebSourceKind.PAGE: gettext_lazy("One page"),
    WebSourceKind.SITEMAP: gettext_lazy("Sitemap (its pages)"),
}
STATUS_LABELS: dict[str, Promise] = {
    WebSourceStatus.QUEUED: gettext_lazy("Queued"),
    WebSourceStatus.SYNCING: gettext_lazy("Syncing"),
    WebSourceStatus.SYNCED: gettext_lazy("Synced"),
    WebSourceStatus.FAILED: gettext_lazy("Failed"),
}


class WebSourceForm(forms.Form):
    url = forms.CharField(
        label=gettext_lazy("Page or sitemap URL"),
        max_length=2000,
        widget=forms.URLInput(attrs={"placeholder": "https://docs.example.com/sitemap.xml"}),
    )
    kind = forms.ChoiceField(label=gettext_lazy("Kind"), choices=list(KIND_LABELS.items()), initial=WebSourceKind.AUTO)
    max_pages = forms.IntegerField(label=gettext_lazy("Pages at most"), min_value=1, required=False)
    sync_interval_hours = forms.IntegerField(
        label=gettext_lazy("Sync every (hours, 0: only on request)"), min_value=0, initial=DEFAULT_SYNC_INTERVAL_HOURS
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["max_pages"]
        assert isinstance(field, forms.IntegerField)
        limit = settings.KB_WEB_MAX_PAGES
        field.max_value = limit
        field.widget.attrs.update({"max": limit, "placeholder": str(limit)})


def web_sources_context(request: HttpRequest, kb: KnowledgeBase) -> dict[str, Any]:
    """What the knowledge base's page shows of its web sources."""
    sources = list(WebSource.objects.filter(knowledge_base=kb).order_by("pk"))
    return {
        "web_sources": [
            {"source": source, "status_label": STATUS_LABELS[source.status], "kind_label": KIND_LABELS[source.kind]}
            for source in sources
        ],
        "web_source_status_labels": STATUS_LABELS,  # kb.js follows a sync under way with them
        "can_add_web_sources": has_role(request, kb, WRITE_ROLE),
        "web_source_form": WebSourceForm(),
    }


def _back(kb: KnowledgeBase) -> HttpResponse:
    return redirect(reverse("web:kb-detail", args=[kb.pk]) + "#web-sources")


def _writable(request: HttpRequest, pk: int) -> KnowledgeBase | HttpResponse:
    kb = knowledge_base_for(request, pk)
    if not has_role(request, kb, WRITE_ROLE):
        return HttpResponse(_("Only the team's members may change web sources: ask one of them."), status=403)
    return kb


def _source_of(kb: KnowledgeBase, source_id: int) -> WebSource:
    source = WebSource.objects.filter(knowledge_base=kb, pk=source_id).first()
    if source is None:
        raise Http404(_("No such web source."))
    return source


@login_required
@require_POST
def web_source_add(request: HttpRequest, pk: int) -> HttpResponse:
    kb = _writable(request, pk)
    if isinstance(kb, HttpResponse):
        return kb
    form = WebSourceForm(request.POST)
    if not form.is_valid():
        problems = "; ".join(
            f"{form.fields[name].label}: {' '.join(str(error) for error in errors)}"
            for name, errors in form.errors.items()
        )
        messages.error(request, _("The web source was not added: %(reason)s") % {"reason": problems})
        return _back(kb)
    data = form.cleaned_data
    try:
        source = web_source_create(
            kb=kb,
            url=data["url"],
            kind=data["kind"],
            max_pages=data["max_pages"],
            sync_interval_hours=data["sync_interval_hours"],
            created_by=request.user if isinstance(request.user, User) else None,
        )
    except DomainError as exc:
        messages.error(request, _("The web source was not added: %(reason)s") % {"reason": exc})
    else:
        messages.success(
            request, _("%(url)s was added: its pages are fetched in the background.") % {"url": source.url}
        )
    return _back(kb)


@login_required
@require_POST
def web_source_sync(request: HttpRequest, pk: int, source_id: int) -> HttpResponse:
    kb = _writable(request, pk)
    if isinstance(kb, HttpResponse):
        return kb
    source = web_source_sync_request(source=_source_of(kb, source_id))
    messages.success(request, _("A sync of %(url)s is under way.") % {"url": source.url})
    return _back(kb)


@login_required
@require_POST
def web_source_remove(request: HttpRequest, pk: int, source_id: int) -> HttpResponse:
    kb = _writable(request, pk)
    if isinstance(kb, HttpResponse):
        return kb
    source = _source_of(kb, source_id)
    web_source_delete(source=source)
    messages.success(request, _("%(url)s and its documents were removed.") % {"url": source.url})
    return _back(kb)
