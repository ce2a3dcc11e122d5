"""A document's page: what the model sees of it. Its chunks in document order, grouped by the
section they came from (page, slide, sheet, heading path), with what a member did to them; those
who may manage documents correct a chunk's text, disable or enable it, revert it, and delete
edits that no longer apply (kb.chunk_edits, the same services as the REST API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.models import User
from core.domain_errors import DomainError
from kb.chunk_edits import (
    ChunkView,
    chunk_edit,
    chunk_edit_delete,
    chunk_edits_with_state,
    chunk_views,
    document_chunks,
)
from kb.models import Chunk, ChunkEdit, Document, KnowledgeBase
from web.views.kb import STATUS_LABELS, UPLOAD_ROLE, has_role, knowledge_base_for

# A document may have thousands of chunks: the page shows this many at a time.
CHUNKS_PER_PAGE = 100
# Who may edit chunks: those who may upload and delete documents (the API's CHUNK_EDIT_ROLE).
EDIT_ROLE = UPLOAD_ROLE


@dataclass
class SectionGroup:
    """Consecutive chunks of one section of the document."""

    places: list[str]
    chunks: list[ChunkView] = field(default_factory=list)


def section_places(metadata: dict[str, Any]) -> list[str]:
    """Where a chunk's section is in the document, as a person reads it."""
    places = []
    if metadata.get("page"):
        places.append(_("Page %(n)s") % {"n": metadata["page"]})
    if metadata.get("slide"):
        places.append(_("Slide %(n)s") % {"n": metadata["slide"]})
    if metadata.get("sheet"):
        places.append(_("Sheet %(name)s") % {"name": metadata["sheet"]})
    if metadata.get("chapter"):
        places.append(_("Chapter %(name)s") % {"name": metadata["chapter"]})
    if metadata.get("subject"):
        places.append(str(metadata["subject"]))
    path = metadata.get("heading_path")
    if isinstance(path, list) and path:
        places.append(" › ".join(str(heading) for heading in path))
    return places


def grouped(views: list[ChunkView]) -> list[SectionGroup]:
    groups: list[SectionGroup] = []
    for view in views:
        places = section_places(view.chunk.metadata or {})
        if not groups or groups[-1].places != places:
            groups.append(SectionGroup(places))
        groups[-1].chunks.append(view)
    return groups


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # every view here is login_required
    return request.user


def _document(kb: KnowledgeBase, document_id: int) -> Document:
    document = Document.objects.filter(knowledge_base=kb, pk=document_id).first()
    if document is None:
        raise Http404(_("No such document."))
    document.knowledge_base = kb
    return document


def _page_number(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


@login_required
def document_page(request: HttpRequest, pk: int, document_id: int) -> HttpResponse:
    kb = knowledge_base_for(request, pk, switch_team=True)
    document = _document(kb, document_id)
    chunks = document_chunks(document=document)
    page = Paginator(chunks, CHUNKS_PER_PAGE).get_page(_page_number(request.GET.get("page")))
    views = chunk_views(document=document, chunks=list(page.object_list))
    return render(
        request,
        "web/kb/document.html",
        {
            "kb": kb,
            "document": document,
            "status_label": STATUS_LABELS.get(document.status, document.status),
            "sections": grouped(views),
            "page": page,
            "chunk_total": page.paginator.count,
            "disabled_total": chunks.filter(disabled=True).count(),
            "applied_edits": chunk_edits_with_state(document=document, applied=True).count(),
            "stale_edits": list(chunk_edits_with_state(document=document, applied=False).order_by("pk")),
            "can_edit": has_role(request, kb, EDIT_ROLE),
        },
    )


def _unless_editor(request: HttpRequest, kb: KnowledgeBase) -> HttpResponse | None:
    """The 403 for someone who may read the document but not edit its chunks; None for an editor."""
    if has_role(request, kb, EDIT_ROLE):
        return None
    return HttpResponse(_("Only the team's members, admins and owners may edit chunks: ask one of them."), status=403)


def _back(kb: KnowledgeBase, document: Document, request: HttpRequest, anchor: str = "") -> HttpResponse:
    url = reverse("web:kb-document", args=[kb.pk, document.pk])
    page = _page_number(request.POST.get("page"))
    return redirect(f"{url}?page={page}{anchor}" if page > 1 else f"{url}{anchor}")


@login_required
@require_POST
def chunk_edit_view(request: HttpRequest, pk: int, document_id: int, chunk_id: int) -> HttpResponse:
    """One chunk's form: `action` save (with `text`), disable, enable or revert."""
    kb = knowledge_base_for(request, pk)
    document = _document(kb, document_id)
    if (refused := _unless_editor(request, kb)) is not None:
        return refused
    chunk = Chunk.objects.filter(document=document, pk=chunk_id).first()
    if chunk is None:
        messages.error(request, _("That chunk is gone (the document was rebuilt meanwhile): edit the new one."))
        return _back(kb, document, request)
    action = request.POST.get("action", "")
    choices: dict[str, dict[str, Any]] = {
        "save": {"text": request.POST.get("text", "")},
        "disable": {"disabled": True},
        "enable": {"disabled": False},
        "revert": {"revert": True},
    }
    changes = choices.get(action, {})
    if not changes:
        messages.error(request, _("Choose what to do with the chunk: save, disable, enable or revert."))
        return _back(kb, document, request)
    try:
        chunk_edit(chunk=chunk, user=_user(request), **changes)
    except DomainError as exc:
        messages.error(request, _("Nothing was changed: %(reason)s") % {"reason": exc})
    else:
        done = {
            "save": _("Chunk %(n)s saved: search finds it by its new text."),
            "disable": _("Chunk %(n)s disabled: search no longer returns it."),
            "enable": _("Chunk %(n)s enabled again."),
            "revert": _("Chunk %(n)s has its original text again."),
        }[action]
        messages.success(request, done % {"n": chunk.ordinal + 1})
    return _back(kb, document, request, f"#chunk-{chunk.pk}")


@login_required
@require_POST
def chunk_edit_delete_view(request: HttpRequest, pk: int, document_id: int, edit_id: int) -> HttpResponse:
    """Delete an edit (one that no longer applies, usually): a chunk carrying it gets its original
    text back."""
    kb = knowledge_base_for(request, pk)
    document = _document(kb, document_id)
    if (refused := _unless_editor(request, kb)) is not None:
        return refused
    edit = ChunkEdit.objects.filter(document=document, pk=edit_id).first()
    if edit is None:
        raise Http404(_("No such edit."))
    try:
        chunk_edit_delete(edit=edit)
    except DomainError as exc:
        messages.error(request, _("Nothing was deleted: %(reason)s") % {"reason": exc})
    else:
        messages.success(request, _("The edit was deleted."))
    return _back(kb, document, request, "#edits")
