from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin with the console's site (dashboard pages) as the default site."""

    default_site = "console.site.ConsoleAdminSite"
