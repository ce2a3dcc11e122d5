"""Admin console: knowledge bases (upload page; action Rebuild), documents (stage, progress, error;
actions Re-index and Retry), chunks (read-only). Each action is written to the audit log."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy
from django.utils.translation import gettext_noop, ngettext

from kb.models import Chunk, Document, DocumentStatus, KnowledgeBase
from kb.services import KnowledgeBaseError, document_reindex, documents_upload, kb_rebuild
from kb.storage import StorageQuotaExceeded


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class UploadForm(forms.Form):
    upload = forms.FileField(
        widget=MultipleFileInput(attrs={"multiple": True}),
        help_text=_lazy("One or more files; ZIP archives are expanded."),
    )


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "embedding_model", "splitter", "chunk_size", "generation", "upload_link"]
    list_filter = ["team", "splitter", "embedding_model"]
    search_fields = ["name", "description", "team__name"]
    readonly_fields = ["generation", "rebuild_settings"]
    actions = ["rebuild"]

    def get_urls(self) -> list[URLPattern]:
        upload = path("<int:kb_id>/upload/", self.admin_site.admin_view(self.upload_view), name="kb_upload")
        return [upload, *super().get_urls()]

    @admin.display(description=_lazy("upload"))
    def upload_link(self, kb: KnowledgeBase) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:kb_upload", args=[kb.pk]), _("Upload files"))

    @admin.action(description=_lazy("Rebuild (re-chunk and re-embed every document; search stays up)"))
    def rebuild(self, request: HttpRequest, queryset: QuerySet[KnowledgeBase]) -> None:
        """What `manage.py kb_rebuild` does, with the knowledge base's current settings."""
        for kb in queryset:
            try:
                kb = kb_rebuild(kb=kb)
            except KnowledgeBaseError as exc:
                self.message_user(request, f"{kb.name}: {exc}", messages.ERROR)
                continue
            self.log_change(request, kb, gettext_noop("Rebuild started"))
            count = kb.documents.count()
            self.message_user(
                request,
                ngettext(
                    "%(name)s: %(count)d document queued for the rebuild.",
                    "%(name)s: %(count)d documents queued for the rebuild.",
                    count,
                )
                % {"name": kb.name, "count": count},
            )

    def upload_view(self, request: HttpRequest, kb_id: int) -> HttpResponse:
        kb = get_object_or_404(KnowledgeBase, pk=kb_id)
        if not self.has_change_permission(request, kb):
            raise PermissionDenied
        if request.method == "POST":
            uploads = request.FILES.getlist("upload")
            try:
                result = documents_upload(kb=kb, uploads=[(upload, upload.name or "") for upload in uploads])
            except StorageQuotaExceeded as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return redirect(reverse("admin:kb_upload", args=[kb.pk]))
            self.message_user(
                request,
                _("%(queued)d queued, %(present)d already present.")
                % {"queued": len(result.created), "present": len(result.duplicates)},
            )
            for refusal in result.rejected:
                self.message_user(
                    request,
                    _("Refused %(name)s: %(reason)s") % {"name": refusal.name, "reason": refusal.reason},
                    messages.ERROR,
                )
            return redirect(reverse("admin:kb_document_changelist") + f"?knowledge_base__id__exact={kb.pk}")
        context = {
            **self.admin_site.each_context(request),
            "title": _("Upload to %(name)s") % {"name": kb.name},
            "form": UploadForm(),
            "knowledge_base": kb,
            "opts": self.model._meta,
        }
        return render(request, "admin/kb/upload.html", context)


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = [
        "original_name",
        "knowledge_base",
        "status",
        "progress",
        "chunk_count",
        "content_type",
        "error",
        "updated_at",
    ]
    list_filter = ["status", "content_type", "knowledge_base__team", "knowledge_base"]
    search_fields = ["original_name", "sha256", "error", "knowledge_base__name"]
    readonly_fields = [field.name for field in Document._meta.fields]
    actions = ["reindex", "retry_failed"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # uploads go through a knowledge base's "Upload files" page, the API or kb_import

    @admin.action(description=_lazy("Re-index the selected documents"))
    def reindex(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        documents = list(queryset)
        for document in documents:
            document_reindex(document=document)
            self.log_change(request, document, gettext_noop("Re-indexed"))
        self.message_user(
            request,
            ngettext(
                "Queued %(count)d document for re-indexing.",
                "Queued %(count)d documents for re-indexing.",
                len(documents),
            )
            % {"count": len(documents)},
        )

    @admin.action(description=_lazy("Retry the selected failed documents"))
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        # Only failed ones: retrying a document that is being ingested would start it twice.
        failed = list(queryset.filter(status=DocumentStatus.FAILED))
        for document in failed:
            document_reindex(document=document)
            self.log_change(request, document, gettext_noop("Retried"))
        self.message_user(
            request,
            ngettext("Queued %(count)d failed document again.", "Queued %(count)d failed documents again.", len(failed))
            % {"count": len(failed)},
        )


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ["id", "document", "ordinal", "generation", "dims", "short_text"]
    list_filter = ["knowledge_base__team", "knowledge_base", "generation"]
    search_fields = ["text", "document__original_name"]
    exclude = ["embedding", "search_vector"]
    readonly_fields = ["knowledge_base", "document", "generation", "ordinal", "text", "metadata", "dims"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_lazy("text"))
    def short_text(self, chunk: Chunk) -> str:
        return chunk.text[:120]
