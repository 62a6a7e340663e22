from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    """Machine access: scoped API tokens, idempotent creates, signed webhooks."""

    name = "integrations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from integrations import schema, webhooks  # noqa: F401 - the audit-event receiver, the OpenAPI scheme
