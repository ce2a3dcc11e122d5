"""Admin console: providers (API key write-only), registrations with status and the actions
Launch, Terminate, Test (each written to the audit log, as the dashboard's buttons are), their
events, and team defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy
from django.utils.translation import gettext_noop

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
    endpoint = forms.URLField(
        assume_scheme="http", help_text=_lazy("Base URL without /v1, e.g. http://xinference:9997")
    )
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_lazy("Stored encrypted and never shown. Leave empty to keep the current key."),
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
        if change and "endpoint" in form.changed_data and not form.cleaned_data.get("api_key"):
            # As through the API (provider_update): the stored key was for the old server.
            obj.credentials_encrypted = ""
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("api_key"):
            provider_set_api_key(provider=obj, api_key=form.cleaned_data["api_key"])

    @admin.display(boolean=True, description=_lazy("API key set"))
    def has_credentials(self, provider: Provider) -> bool:
        return provider.has_credentials

    @admin.action(description=_lazy("Test connection (list the models it serves)"))
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            try:
                uids = [model.uid for model in client_for(provider).running_models()]
            except ProviderError as exc:
                self.message_user(request, f"{provider.name}: {exc}", messages.ERROR)
                continue
            serving = ", ".join(uids) or _("no models")
            self.message_user(
                request, _("%(name)s: reachable, serving %(models)s") % {"name": provider.name, "models": serving}
            )


class ModelEventInline(admin.TabularInline):
    model = ModelEvent
    extra = 0
    can_delete = False
    readonly_fields = fields = ("created_at", "kind", "message", "duration_ms")
    ordering = ["-created_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@dataclass(frozen=True)
class LifecycleAction:
    """A registration's lifecycle step as the admin runs it, from its action list or the dashboard.
    `done` and `failed` are what the audit log (LogEntry) records: msgids, translated when shown."""

    run: Callable[[ModelRegistration], str]
    success: str
    done: str
    failed: str


def _launch(registration: ModelRegistration) -> str:
    registration_launch(registration=registration)
    return ""


def _terminate(registration: ModelRegistration) -> str:
    registration_terminate(registration=registration)
    return ""


def _test(registration: ModelRegistration) -> str:
    return registration_test(registration=registration).detail


LIFECYCLE_ACTIONS: dict[str, LifecycleAction] = {
    "launch": LifecycleAction(
        run=_launch,
        success=gettext_noop("%(name)s: launched"),
        done=gettext_noop("Launched"),
        failed=gettext_noop("Launch failed"),
    ),
    "terminate": LifecycleAction(
        run=_terminate,
        success=gettext_noop("%(name)s: terminated"),
        done=gettext_noop("Terminated"),
        failed=gettext_noop("Terminate failed"),
    ),
    "test": LifecycleAction(
        run=_test,
        success=gettext_noop("%(name)s: ok, %(outcome)s"),
        done=gettext_noop("Tested"),
        failed=gettext_noop("Test failed"),
    ),
}


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

    def run_lifecycle(self, request: HttpRequest, registration: ModelRegistration, action: str) -> bool:
        """Run one step, tell the user how it went and write it to the audit log, failures too
        (a failed launch still changed the registration's status). True when it succeeded."""
        step = LIFECYCLE_ACTIONS[action]
        try:
            outcome = step.run(registration)
        except (ProviderError, RegistryError) as exc:
            self.message_user(request, f"{registration.name}: {exc}", messages.ERROR)
            self.log_change(request, registration, step.failed)
            return False
        self.message_user(request, _(step.success) % {"name": registration.name, "outcome": outcome})
        self.log_change(request, registration, step.done)
        return True

    @admin.action(description=_lazy("Launch (and keep running)"))
    def launch(self, request: HttpRequest, queryset: QuerySet[ModelRegistration]) -> None:
        for registration in queryset:
            self.run_lifecycle(request, registration, "launch")

    @admin.action(description=_lazy("Terminate (and stop keeping running)"))
    def terminate(self, request: HttpRequest, queryset: QuerySet[ModelRegistration]) -> None:
        for registration in queryset:
            self.run_lifecycle(request, registration, "terminate")

    @admin.action(description=_lazy("Test (one real call)"))
    def test(self, request: HttpRequest, queryset: QuerySet[ModelRegistration]) -> None:
        for registration in queryset:
            self.run_lifecycle(request, registration, "test")


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
