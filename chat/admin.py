from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from chat.models import Assistant, Conversation, Message
from chat.tools import tool_specs_shown


@admin.register(Assistant)
class AssistantAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "llm", "retrieval_mode", "top_k", "created_at"]
    list_filter = ["team", "retrieval_mode", "llm"]
    search_fields = ["name", "system_prompt", "team__name"]
    filter_horizontal = ["knowledge_bases", "data_sources"]
    # Tools are changed through the API, whose service checks them and encrypts their secrets.
    exclude = ["tools"]
    readonly_fields = ["tools_shown"]

    @admin.display(description="tools (change them through the API)")
    def tools_shown(self, assistant: Assistant) -> str:
        return json.dumps(tool_specs_shown(assistant.tools), ensure_ascii=False, indent=1)


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = readonly_fields = ("created_at", "role", "author", "content", "status", "feedback", "total_ms")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "team", "owner", "assistant", "is_room", "updated_at"]
    list_filter = ["team", "is_room", "assistant"]
    search_fields = ["title", "summary", "owner__username"]
    readonly_fields = ["summary", "summarized_up_to", "file_knowledge_base"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "conversation",
        "role",
        "status",
        "feedback",
        "model_name",
        "time_to_first_token_ms",
        "total_ms",
        "created_at",
    ]
    list_filter = ["role", "status", "feedback", "conversation__team"]
    search_fields = ["content", "feedback_comment"]
    readonly_fields = [field.name for field in Message._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
