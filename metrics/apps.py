from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class MetricsConfig(AppConfig):
    """What versions measured (``VersionMetrics``) and the harness that measures them."""

    name = "metrics"

    def ready(self) -> None:
        from metrics.models import VersionMetrics
        from registry import blobrefs, extensions

        blobrefs.register(VersionMetrics, "outputs_sha256")  # each run's raw outputs (.npz)
        # The version API output shows its runs; the registry declares the field, this app fills it.
        extensions.provide_version_field("metrics", _version_metrics, prefetch=("metrics__reference",))


def _version_metrics(version: Any) -> list[dict[str, Any]]:
    from metrics.serializers import MetricsOutput

    return MetricsOutput(version.metrics.all(), many=True).data
