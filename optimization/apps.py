from django.apps import AppConfig


class OptimizationConfig(AppConfig):
    name = "optimization"

    def ready(self) -> None:
        from optimization.models import VersionMetrics
        from registry import blobrefs

        blobrefs.register(VersionMetrics, "outputs_sha256")  # each metrics run's raw outputs (.npz)
