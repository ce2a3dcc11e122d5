"""Admin console: knowledge bases, documents (stage, progress, error; actions Re-index and Retry),
chunks (read-only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from kb.models import Chunk, Document, DocumentStatus, KnowledgeBase
from kb.services import document_reindex


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "embedding_model", "splitter", "chunk_size", "generation", "created_at"]
    list_filter = ["team", "splitter", "embedding_model"]
    search_fields = ["name", "description", "team__name"]
    readonly_fields = ["generation", "rebuild_settings"]


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["original_name", "knowledge_base", "status", "progress", "chunk_count", "content_type", "error",
                    "updated_at"]  # fmt: skip
    list_filter = ["status", "content_type", "knowledge_base__team", "knowledge_base"]
    search_fields = ["original_name", "sha256", "error", "knowledge_base__name"]
    readonly_fields = [field.name for field in Document._meta.fields]
    actions = ["reindex", "retry_failed"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # uploads go through the API, the web app or `manage.py kb_import`

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
