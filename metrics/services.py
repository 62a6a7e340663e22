"""Every write of measurements. Runs are recorded by the code that measured them: a job's
variant (``optimization``), a version measured on its own (``metrics.measure``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction

from metrics.models import VersionMetrics
from registry import audit, services as registry
from registry.models import Dataset, ModelVersion
from registry.uploads import StagedFile


def metrics_record(*, version: ModelVersion, eval_dataset: Dataset, reference: ModelVersion | None,
                   metrics: dict[str, Any], samples: dict[str, Any], outputs_sha256: str) -> VersionMetrics:
    """Record a variant's run, inside the caller's transaction (the one that registers the
    variant); ``outputs_sha256`` is a blob the caller has already stored, or ""."""
    return VersionMetrics.objects.create(version=version, eval_dataset=eval_dataset, reference=reference,
                                         metrics=metrics, samples=samples, outputs_sha256=outputs_sha256)


def metrics_store(*, version: ModelVersion, eval_dataset: Dataset, metrics: dict[str, Any],
                  samples: dict[str, Any], outputs_blob: Path | None) -> VersionMetrics:
    """Store a version's own measurement (a parent's, computed once and reused).

    A stored run from an older harness (a lower ``harness_version``) is replaced, with an audit
    event; otherwise the stored run wins (a concurrent job measured it first) and this one's
    outputs blob is dropped. Either way no blob is left that no row points at.
    """
    sha = ""
    if outputs_blob is not None:
        staged = StagedFile.from_path(outputs_blob)
        registry.artifact_store().put(staged.path, staged.sha256)
        sha = staged.sha256
    unused = sha
    try:
        with transaction.atomic():
            stored = VersionMetrics.objects.select_for_update().filter(version=version, eval_dataset=eval_dataset)
            existing = stored.first()
            if existing is None:
                try:
                    with transaction.atomic():  # a savepoint: the unique constraint decides a race
                        created = VersionMetrics.objects.create(
                            version=version, eval_dataset=eval_dataset, reference=None, metrics=metrics,
                            samples=samples, outputs_sha256=sha)
                    unused = ""
                    return created
                except IntegrityError:  # two workers measured the same parent at once (no row to lock)
                    existing = stored.get()
            before = existing.metrics.get("harness_version", 1)
            if before >= metrics.get("harness_version", 1):
                return existing
            unused = existing.outputs_sha256
            existing.metrics, existing.samples, existing.outputs_sha256 = metrics, samples, sha
            existing.save(update_fields=["metrics", "samples", "outputs_sha256"])
            audit.record(actor=None, action="version_metrics.remeasure", obj=existing, model=version.model,
                         version=version, before={"harness_version": before},
                         after={"harness_version": metrics.get("harness_version")},
                         comment=f"measured again on {eval_dataset.name}: the stored run used an older harness")
            return existing
    finally:
        if unused:  # ours when the stored run stays, the replaced run's otherwise
            registry.discard_blob_if_unreferenced(unused)
