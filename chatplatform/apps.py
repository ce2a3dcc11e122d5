from django.apps import AppConfig


class ChatplatformConfig(AppConfig):
    """The project package as an app, for its system checks (no models)."""

    name = "chatplatform"
    verbose_name = "Platform"

    def ready(self) -> None:
        from chatplatform import checks  # noqa: F401  # registers the production check
