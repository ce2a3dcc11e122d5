"""Admin console: webhooks (the secret never shown; created through the API, where it is shown
once) with a Ping action, and their deliveries (read-only) with a Deliver again action."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from integrations.models import Webhook, WebhookDelivery
from integrations.services import webhook_ping, webhook_redeliver


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ["url", "team", "events", "is_active", "created_at"]
    list_filter = ["is_active", "team"]
    search_fields = ["url", "description", "team__name"]
    fields = ["team", "url", "description", "events", "is_active", "created_by", "created_at", "updated_at"]
    # The URL passed the SSRF guard when it was set through the API; change it there.
    readonly_fields = ["team", "url", "events", "created_by", "created_at", "updated_at"]
    actions = ["ping"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Send a ping event")
    def ping(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        for webhook in queryset:
            webhook_ping(webhook=webhook)
        self.message_user(request, f"{queryset.count()} ping(s) queued; see the deliveries.")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["pk", "event", "webhook", "status", "attempts", "response_status", "created_at", "delivered_at"]
    list_filter = ["status", "event"]
    search_fields = ["webhook__url", "last_error"]
    list_select_related = ["webhook"]
    actions = ["deliver_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    @admin.action(description="Deliver again")
    def deliver_again(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        for delivery in queryset:
            webhook_redeliver(delivery=delivery)
        self.message_user(request, f"{queryset.count()} delivery(ies) queued again.")
