from __future__ import annotations

from django.apps import AppConfig


class MetricsConfig(AppConfig):
    """What versions measured (``VersionMetrics``) and the harness that measures them."""

    name = "metrics"

    def ready(self) -> None:
        from metrics.models import VersionMetrics
        from metrics.selectors import runs_by_version
        from registry import blobrefs, extensions

        blobrefs.register(VersionMetrics, "outputs_sha256")  # each run's raw outputs (.npz)
        # The version API output shows its runs; the registry declares the field, this app loads it.
        extensions.provide_version_field("metrics", runs_by_version)
