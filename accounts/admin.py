"""Admin console: users, teams, memberships, API keys (revoke), usage, quotas; the two audit
logs, read-only (admin actions as Django's LogEntry rows, and every request an API key made);
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy
from django.utils.translation import gettext_noop, ngettext

from accounts.models import ApiKey, ApiKeyUse, Membership, Quota, Team, Usage, User
from accounts.services import api_key_revoke


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_filter = [*DjangoUserAdmin.list_filter, "memberships__team"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "user__email", "team__name", "team__slug"]
    autocomplete_fields = ["user", "team"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created with `manage.py create_api_key` or the API, where the secret is shown once;
    the admin lists and revokes them and never sees a secret or a hash."""

    list_display = [
        "name",
        "prefix",
        "user",
        "team",
        "scopes",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["team", ("revoked_at", admin.EmptyFieldListFilter), "expires_at"]
    search_fields = ["name", "prefix", "user__username", "team__slug"]
    exclude = ["key_hash"]
    readonly_fields = ["user", "team", "prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description=_lazy("Revoke the selected keys"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        keys = list(queryset)
        for key in keys:
            api_key_revoke(key=key)
            self.log_change(request, key, gettext_noop("Revoked"))
        self.message_user(
            request, ngettext("Revoked %(count)d key.", "Revoked %(count)d keys.", len(keys)) % {"count": len(keys)}
        )


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    list_display = ["day", "team", "user", "model_name", "requests", "tokens_in", "tokens_out"]
    list_filter = ["team", "model_name", "day"]
    search_fields = ["user__username", "team__name", "model_name"]
    date_hierarchy = "day"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["team", "user", "daily_tokens"]
    list_filter = ["team"]
    search_fields = ["team__name", "user__username"]
    autocomplete_fields = ["team", "user"]


# --- audit logs -------------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """An audit log is only read: nobody adds, edits or deletes its rows through the console."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StatusClassFilter(admin.SimpleListFilter):
    title = _lazy("status")
    parameter_name = "status_class"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("2", _("2xx success")),
            ("3", _("3xx redirect")),
            ("4", _("4xx client error")),
            ("5", _("5xx server error")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKeyUse]) -> QuerySet[ApiKeyUse]:
        if self.value() in {"2", "3", "4", "5"}:
            first = int(self.value() or 0) * 100
            return queryset.filter(status_code__gte=first, status_code__lt=first + 100)
        return queryset


@admin.register(ApiKeyUse)
class ApiKeyUseAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "key_prefix", "key", "team", "user", "method", "path", "status_code", "client_ip"]
    list_filter = [StatusClassFilter, "team", "key", "method", "created_at"]
    search_fields = ["path"]
    list_select_related = ["key", "team", "user"]
    # The table grows with every API request: skip the unfiltered count(*) on each page.
    show_full_result_count = False


@admin.register(LogEntry)
class AuditLogAdmin(ReadOnlyAdmin):
    """Who did what to which object in the console: Django's own adds, changes and deletions, and
    the custom actions (launch, terminate, test, re-index, retry, rebuild, revoke)."""

    list_display = ["action_time", "user", "object_link", "action", "details"]
    list_filter = [
        "action_flag",
        ("user", admin.RelatedOnlyFieldListFilter),
        ("content_type", admin.RelatedOnlyFieldListFilter),
        "action_time",
    ]
    search_fields = ["object_repr", "change_message", "user__username"]
    list_select_related = ["user", "content_type"]
    date_hierarchy = "action_time"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": _("Audit log"), **(extra_context or {})})

    @admin.display(description=_lazy("object"), ordering="object_repr")
    def object_link(self, entry: LogEntry) -> str:
        kind = entry.content_type.name if entry.content_type else ""
        url = None if entry.is_deletion() else entry.get_admin_url()
        if url:
            return format_html('<a href="{}">{}</a><br><span class="quiet">{}</span>', url, entry.object_repr, kind)
        return format_html('{}<br><span class="quiet">{}</span>', entry.object_repr, kind)

    @admin.display(description=_lazy("action"), ordering="action_flag")
    def action(self, entry: LogEntry) -> str:
        return entry.get_action_flag_display()

    @admin.display(description=_lazy("details"))
    def details(self, entry: LogEntry) -> str:
        # Custom actions store an English msgid (see models_registry.admin.LifecycleAction): shown
        # translated here. Django's own structured messages come back translated already.
        return _(entry.get_change_message())
