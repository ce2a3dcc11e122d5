"""Admin console: knowledge bases, documents (stage, progress, error; actions Re-index and Retry),
chunks (read-only)."""

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

from kb.models import Chunk, Document, DocumentStatus, KnowledgeBase
from kb.services import document_reindex, documents_upload


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class UploadForm(forms.Form):
    upload = forms.FileField(
        widget=MultipleFileInput(attrs={"multiple": True}),
        help_text="One or more files; ZIP archives are expanded.",
    )


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "embedding_model", "splitter", "chunk_size", "generation", "upload_link"]
    list_filter = ["team", "splitter", "embedding_model"]
    search_fields = ["name", "description", "team__name"]
    readonly_fields = ["generation", "rebuild_settings"]

    def get_urls(self) -> list[URLPattern]:
        upload = path("<int:kb_id>/upload/", self.admin_site.admin_view(self.upload_view), name="kb_upload")
        return [upload, *super().get_urls()]

    @admin.display(description="upload")
    def upload_link(self, kb: KnowledgeBase) -> str:
        return format_html('<a href="{}">Upload files</a>', reverse("admin:kb_upload", args=[kb.pk]))

    def upload_view(self, request: HttpRequest, kb_id: int) -> HttpResponse:
        kb = get_object_or_404(KnowledgeBase, pk=kb_id)
        if not self.has_change_permission(request, kb):
            raise PermissionDenied
        if request.method == "POST":
            uploads = request.FILES.getlist("upload")
            result = documents_upload(kb=kb, uploads=[(upload, upload.name or "") for upload in uploads])
            self.message_user(request, f"{len(result.created)} queued, {len(result.duplicates)} already present.")
            for refusal in result.rejected:
                self.message_user(request, f"Refused {refusal.name}: {refusal.reason}", messages.ERROR)
            return redirect(reverse("admin:kb_document_changelist") + f"?knowledge_base__id__exact={kb.pk}")
        context = {**self.admin_site.each_context(request), "title": f"Upload to {kb.name}", "form": UploadForm(),
                   "knowledge_base": kb, "opts": self.model._meta}  # fmt: skip
        return render(request, "admin/kb/upload.html", context)


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["original_name", "knowledge_base", "status", "progress", "chunk_count", "content_type", "error",
                    "updated_at"]  # fmt: skip
    list_filter = ["status", "content_type", "knowledge_base__team", "knowledge_base"]
    search_fields = ["original_name", "sha256", "error", "knowledge_base__name"]
    readonly_fields = [field.name for field in Document._meta.fields]
    actions = ["reindex", "retry_failed"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # uploads go through a knowledge base's "Upload files" page, the API or kb_import

    @admin.action(description="Re-index the selected documents")
    def reindex(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        for document in queryset:
            document_reindex(document=document)
        self.message_user(request, f"Queued {queryset.count()} document(s) for re-indexing.")

    @admin.action(description="Retry the selected failed documents")
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        failed = queryset.filter(status=DocumentStatus.FAILED)
        count = failed.count()
        for document in failed:
            document_reindex(document=document)
        self.message_user(request, f"Queued {count} failed document(s) again.")


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

    @admin.display(description="text")
    def short_text(self, chunk: Chunk) -> str:
        return chunk.text[:120]
