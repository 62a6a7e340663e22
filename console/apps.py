from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The web console: server-rendered pages over the registry, optimization and releases services."""

    name = "console"
    default_auto_field = "django.db.models.BigAutoField"
