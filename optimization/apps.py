from django.apps import AppConfig


class OptimizationConfig(AppConfig):
    name = "optimization"
    # `manage.py reap_jobs` runs every app's reapers: {what it reaps: the service}
    stale_work_reapers = {"job": "optimization.services.jobs_reap_stale"}

    def ready(self) -> None:
        from optimization.models import VersionMetrics
        from registry import blobrefs

        blobrefs.register(VersionMetrics, "outputs_sha256")  # each metrics run's raw outputs (.npz)
