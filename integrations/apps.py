from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    """Machine access: scoped API tokens, idempotent creates, signed webhooks."""

    name = "integrations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from integrations import webhooks  # noqa: F401 - connects the audit-event receiver
