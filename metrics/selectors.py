"""Reads of recorded measurements, named for what their callers ask."""
from __future__ import annotations

from typing import Any

from metrics import harness
from metrics.models import VersionMetrics
from registry.models import Dataset, ModelVersion
from registry.serializers import drf_datetime


def reusable(version: ModelVersion, eval_dataset: Dataset) -> VersionMetrics | None:
    """The stored run of ``version`` on ``eval_dataset`` if the harness can reuse it: it kept its
    outputs and was measured by the current harness (older ones are measured again)."""
    stored = VersionMetrics.objects.filter(version=version, eval_dataset=eval_dataset).exclude(
        outputs_sha256="").first()
    if stored is None or stored.metrics.get("harness_version", 1) != harness.HARNESS_VERSION:
        return None
    return stored


def runs_by_version(ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Harness runs of these versions in one query, oldest first, each shaped as ``MetricsOutput``
    (eval dataset id, the reference's number, metrics, time): the version output's ``metrics``,
    for a whole page at once (``registry.extensions``)."""
    found: dict[int, list[dict[str, Any]]] = {}
    for version_id, eval_dataset, reference, metrics, created_at in (
            VersionMetrics.objects.filter(version_id__in=ids).order_by("pk")
            .values_list("version_id", "eval_dataset_id", "reference__number", "metrics", "created_at")):
        found.setdefault(version_id, []).append({"eval_dataset": eval_dataset, "reference": reference,
                                                 "metrics": metrics, "created_at": drf_datetime(created_at)})
    return found

