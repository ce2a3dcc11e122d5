"""Admin console: providers (API key write-only), registrations with status and the actions
Launch, Terminate, Test, their events, and team defaults."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from models_registry.models import ModelEvent, ModelRegistration, Provider, TeamModelDefaults
from models_registry.providers import client_for
from models_registry.providers.base import ProviderError
from models_registry.services import (
    RegistryError,
    provider_set_api_key,
    registration_launch,
    registration_terminate,
    registration_test,
)


class ProviderForm(forms.ModelForm):
    # Model servers usually live on a private network over plain HTTP.
    endpoint = forms.URLField(assume_scheme="http", help_text="Base URL without /v1, e.g. http://xinference:9997")
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted and never shown. Leave empty to keep the current key.",
    )

    class Meta:
        model = Provider
        fields = ["team", "name", "kind", "endpoint"]


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "team", "kind", "endpoint", "has_credentials", "is_embedded"]
    list_filter = ["kind", "team", "is_embedded"]
    search_fields = ["name", "endpoint", "team__name"]
    actions = ["test_connection"]

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("api_key"):
            provider_set_api_key(provider=obj, api_key=form.cleaned_data["api_key"])

    @admin.display(boolean=True, description="API key set")
    def has_credentials(self, provider: Provider) -> bool:
        return provider.has_credentials

    @admin.action(description="Test connection (list the models it serves)")
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            try:
                uids = [model.uid for model in client_for(provider).running_models()]
            except ProviderError as exc:
                self.message_user(request, f"{provider.name}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{provider.name}: reachable, serving {', '.join(uids) or 'no models'}")


class ModelEventInline(admin.TabularInline):
    model = ModelEvent
    extra = 0
    can_delete = False
    readonly_fields = fields = ("created_at", "kind", "message", "duration_ms")
    ordering = ["-created_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ModelRegistration)
class ModelRegistrationAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "team",
        "kind",
        "provider",
        "provider_model_uid",
        "status",
        "keep_running",
        "last_checked_at",
    ]
    list_filter = ["status", "kind", "keep_running", "team", "provider"]
    search_fields = ["name", "provider_model_uid", "provider__name", "team__name"]
    readonly_fields = ["status", "last_error", "last_checked_at", "failure_count", "next_attempt_at"]
    inlines = [ModelEventInline]
    actions = ["launch", "terminate", "test"]

    def _each(self, request: HttpRequest, queryset: QuerySet[ModelRegistration], verb: str, act: Any) -> None:
        for registration in queryset:
            try:
                outcome = act(registration)
            except (ProviderError, RegistryError) as exc:
                self.message_user(request, f"{registration.name}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{registration.name}: {verb}{outcome}")

    @admin.action(description="Launch (and keep running)")
    def launch(self, request: HttpRequest, queryset: QuerySet[ModelRegistration]) -> None:
        self._each(
            request, queryset, "launched", lambda registration: registration_launch(registration=registration) and ""
        )

    @admin.action(description="Terminate (and stop keeping running)")
    def terminate(self, request: HttpRequest, queryset: QuerySet[ModelRegistration]) -> None:
        self._each(
            request,
            queryset,
            "terminated",
            lambda registration: registration_terminate(registration=registration) and "",
        )

    @admin.action(description="Test (one real call)")
    def test(self, request: HttpRequest, queryset: QuerySet[ModelRegistration]) -> None:
        self._each(request, queryset, "ok, ", lambda registration: registration_test(registration=registration).detail)


@admin.register(ModelEvent)
class ModelEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "registration", "kind", "message", "duration_ms"]
    list_filter = ["kind", "registration__team"]
    search_fields = ["registration__name", "message"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TeamModelDefaults)
class TeamModelDefaultsAdmin(admin.ModelAdmin):
    list_display = ["team", "llm", "embedding", "rerank"]
    search_fields = ["team__name"]
