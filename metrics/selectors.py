"""Reads of recorded measurements, named for what their callers ask."""
from __future__ import annotations

from metrics import harness
from metrics.models import VersionMetrics
from registry.models import Dataset, ModelVersion


def reusable(version: ModelVersion, eval_dataset: Dataset) -> VersionMetrics | None:
    """The stored run of ``version`` on ``eval_dataset`` if the harness can reuse it: it kept its
    outputs and was measured by the current harness (older ones are measured again)."""
    stored = VersionMetrics.objects.filter(version=version, eval_dataset=eval_dataset).exclude(
        outputs_sha256="").first()
    if stored is None or stored.metrics.get("harness_version", 1) != harness.HARNESS_VERSION:
        return None
    return stored
