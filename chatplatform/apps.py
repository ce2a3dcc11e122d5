from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin with the console's site (dashboard pages) as the default site."""

    default_site = "chatplatform.admin_site.ConsoleAdminSite"


class ChatplatformConfig(AppConfig):
    """The project package as an app, for its system checks (no models)."""

    name = "chatplatform"
    verbose_name = "Platform"

    def ready(self) -> None:
        from chatplatform import checks  # noqa: F401  # registers the production check
