"""The admin console's site: Django's admin plus the dashboard pages (console.dashboard).
Installed as the default admin site by console.apps.ConsoleAdminConfig, so `admin.site` and
every `@admin.register` use it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import path


class ConsoleAdminSite(admin.AdminSite):
    def get_urls(self) -> list[Any]:
        return [
            path("dashboard/", self.admin_view(self.dashboard), name="dashboard"),
            path(
                "dashboard/models/<int:pk>/<slug:action>/",
                self.admin_view(self.dashboard_model_action),
                name="dashboard_model_action",
            ),
            *super().get_urls(),
        ]

    # The dashboard module imports the model admins, which register on this site: imported when
    # a page is asked for, not while the site itself is being built.
    def dashboard(self, request: HttpRequest) -> HttpResponse:
        from console.dashboard import dashboard_view

        return dashboard_view(request, self)

    def dashboard_model_action(self, request: HttpRequest, pk: int, action: str) -> HttpResponse:
        from console.dashboard import model_action_view

        return model_action_view(request, self, pk, action)
