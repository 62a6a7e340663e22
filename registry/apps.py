from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        from registry import blobrefs, checks  # noqa: F401  (checks registers system checks)
        from registry.models import Dataset, ModelVersion

        blobrefs.register(ModelVersion, "artifact_sha256")
        blobrefs.register(Dataset, "sha256")
