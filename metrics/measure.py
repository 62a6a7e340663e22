"""Measuring a model with the harness, and a registered version once for all: the TensorFlow side
of the metrics app (imported by workers and commands, never by a web process).

- ``measure_model`` — one harness run of a model on disk: metrics, raw outputs, sample I/O, from
  one loaded predictor. Optimization jobs measure each variant with it.
- ``measure_version`` — a version's own run on an eval dataset, stored once (``VersionMetrics``
  with its outputs blob) and reused by every job and release gate afterwards.
- ``measure_stored_version`` — the same for a registered version outside a job (the demo seed).

Stages are marked with ``config.tracing`` spans (``load predictor``, ``harness``, ``sample_io``).
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from config import tracing
from metrics import harness, selectors, services
from metrics.models import VersionMetrics
from metrics.predictors import load_predictor
from registry import services as registry
from registry.models import Dataset, ModelVersion


@dataclass
class Measurement:
    """One harness run: ``metrics`` (see ``metrics.harness``), the raw ``outputs`` on the eval
    set, and ``samples`` (a few inputs with their outputs, replayed against serving endpoints)."""

    metrics: dict[str, Any]
    outputs: np.ndarray
    samples: dict[str, Any]

    def reference(self) -> harness.ParentReference:
        return harness.parent_reference(self.metrics, self.outputs)


def measure_model(*, artifact_path: Path, model_path: Path, fmt: str, task: str, eval_x: Any, eval_y: Any,
                  parent: harness.ParentReference | None, clusters: int | None = None,
                  latency_runs: int = 50) -> Measurement:
    """Measure the model at ``model_path`` (what ``load_predictor`` reads: a SavedModel directory
    or the file) registered as ``artifact_path``, against ``parent`` when given."""
    with tracing.span("load predictor"):
        predictor = load_predictor(model_path, fmt)
    with tracing.span("harness"):
        metrics, outputs = harness.measure(
            artifact_path=artifact_path, model_dir_or_file=model_path, fmt=fmt, task=task, eval_x=eval_x,
            eval_y=eval_y, parent=parent, clusters=clusters, latency_runs=latency_runs, predictor=predictor)
    with tracing.span("sample_io"):
        samples = harness.sample_io(predictor, eval_x)
    return Measurement(metrics, outputs, samples)


def measure_version(version: ModelVersion, eval_dataset: Dataset, *, model_path: Path, artifact_path: Path,
                    eval_x: Any, eval_y: Any, workdir: Path, latency_runs: int = 50) -> harness.ParentReference:
    """A version's own harness run on an eval dataset, stored once (metrics, samples, outputs) and
    reused afterwards by every job and release gate."""
    stored = selectors.reusable(version, eval_dataset)
    if stored is not None:
        return harness.ParentReference.load(registry.artifact_store().verify(stored.outputs_sha256))
    measured = measure_model(artifact_path=artifact_path, model_path=model_path, fmt=version.format,
                             task=version.model.task, eval_x=eval_x, eval_y=eval_y, parent=None,
                             latency_runs=latency_runs)
    reference = measured.reference()
    blob = workdir / f"reference-{version.pk}.npz"
    reference.save(blob)
    services.metrics_store(version=version, eval_dataset=eval_dataset, metrics=measured.metrics,
                           samples=measured.samples, outputs_blob=blob)
    return reference


def measure_stored_version(version: ModelVersion, eval_dataset: Dataset) -> VersionMetrics:
    """Measure a registered version outside a job (the demo seed, a first release's gates)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"measure-{version.pk}-", dir=settings.FILE_UPLOAD_TEMP_DIR))
    try:
        model_path = registry.version_unpack(version, workdir / "model")
        arrays = registry.dataset_arrays(eval_dataset)
        measure_version(version, eval_dataset, model_path=model_path,
                        artifact_path=registry.artifact_store().blob_path(version.artifact_sha256),
                        eval_x=arrays["x"], eval_y=arrays.get("y"), workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return VersionMetrics.objects.get(version=version, eval_dataset=eval_dataset)
