"""Runs one claimed optimization job: load the source, run the recipe's passes, measure parent
and variant with the same harness, register the variant. TensorFlow is only imported here.

Stages and their share of the progress bar: load 0-5 %, passes 5-75 %, export + measure 75-95 %,
register 95-100 %. For ``auto`` the 5-95 % span is split evenly between candidates.

Each stage is also a ``config.tracing`` span, so a caller listening around ``job_run`` (e.g.
``bench/optimization.py``) sees where a job's time goes: ``unpack source``, ``load datasets``,
``check eval vs signature``, ``parent reference``, ``load model``, ``passes``, ``export``,
``measure variant`` (with ``metrics.measure``'s own spans inside), ``register``.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import tracing
from metrics import harness, selectors as measurements
from metrics.measure import Measurement, measure_model, measure_version
from optimization import budget as budget_mod
from optimization import modelio, services
from optimization.models import OptimizationJob
from optimization.passes import parse_recipe
from optimization.passes.base import Arrays, Cancelled, ModelHandle, PassContext, PassError
from registry import archives, datasets as dataset_checks, inspection, services as registry
from registry.errors import ModelyardError
from registry.models import ModelVersion

log = logging.getLogger(__name__)


@dataclass
class Measured:
    """A variant ready to register: its artifact and its harness run."""

    artifact: Path
    run: Measurement

    @property
    def metrics(self) -> dict[str, Any]:
        return self.run.metrics


class JobRunner:
    def __init__(self, job: OptimizationJob, workdir: Path, latency_runs: int = 50) -> None:
        self.job = job
        self.workdir = workdir
        self.latency_runs = latency_runs
        self.stage = "starting"

    # -- entry ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Cancelled as exc:
            self.log(f"cancelled: {exc}")
            services.job_finish_failed(self.job, error=f"Cancelled at stage '{self.stage}'.", cancelled=True)
        except (PassError, ModelyardError, ValueError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            self.log(f"failed at {self.stage}: {message}")
            services.job_finish_failed(self.job, error=f"{self.stage}: {message}")
        except Exception as exc:  # a bug or a TensorFlow error: keep the traceback in the log
            self.log(traceback.format_exc(limit=8))
            services.job_finish_failed(self.job, error=f"{self.stage}: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        job = self.job
        self.progress(1, "loading source", f"Loading {job.source}")
        source_path = self._unpack(job.source, self.workdir / "source")
        data = self._datasets()
        self._check_eval_fits(data["eval"])
        parent = self._parent_reference(source_path, data["eval"])
        recipe = job.recipe
        if recipe.get("technique") == services.MEASURE:
            self._register(None, candidates=[], message=f"Measured {job.source} on {job.eval_dataset.name} "
                                                         f"({_summary(parent.metrics)}).")
            return
        if recipe.get("technique") == "auto":
            self._run_auto(source_path, data, parent)
            return
        steps = parse_recipe(recipe)
        handle = self._run_steps(steps, source_path, data, start=5, end=75)
        artifact, model_path, fmt = self._export(handle, self.workdir / "variant")
        self.progress(80, "measuring variant", "Measuring the variant on the eval dataset")
        measured = self._measure(artifact, model_path, fmt, data["eval"], parent, handle)
        self._register(measured, candidates=[],
                       message=f"Registered {job.recipe_label} variant ({_summary(measured.metrics)}).")

    # -- stages -----------------------------------------------------------------------------

    @tracing.traced("unpack source")
    def _unpack(self, version: ModelVersion, dest: Path) -> Path:
        unpacked = registry.version_unpack(version, dest)  # verifies the digest first
        self.source_blob = registry.artifact_store().blob_path(version.artifact_sha256)
        return unpacked

    @tracing.traced("load datasets")
    def _datasets(self) -> dict[str, Arrays | None]:
        job = self.job
        out: dict[str, Arrays | None] = {}
        for role, dataset in (("train", job.train_dataset), ("eval", job.eval_dataset),
                              ("calibration", job.calibration_dataset)):
            if dataset is None:
                out[role] = None
                continue
            self.stage = f"loading {role} dataset"
            arrays = registry.dataset_arrays(dataset)
            out[role] = Arrays(x=arrays["x"], y=arrays.get("y"))
        if out["eval"] is None:
            raise ValueError("The job has no eval dataset; metrics cannot be computed.")
        return out

    @tracing.traced("check eval vs signature")
    def _check_eval_fits(self, eval_arrays: Arrays | None) -> None:
        assert eval_arrays is not None
        self.stage = "checking datasets"
        arrays = {"x": eval_arrays.x} | ({"y": eval_arrays.y} if eval_arrays.y is not None else {})
        dataset_checks.check_against_signature(arrays, self.job.source.signature)

    @tracing.traced("parent reference")
    def _parent_reference(self, source_path: Path, eval_arrays: Arrays) -> harness.ParentReference:
        """The source's own measurement on this eval set: computed once, then reused by every job."""
        job = self.job
        if measurements.reusable(job.source, job.eval_dataset) is not None:
            self.log("reusing the parent's metrics (measured once, stored)")
        else:
            self.progress(3, "measuring parent", f"Measuring {job.source} on {job.eval_dataset.name}")
        return measure_version(job.source, job.eval_dataset, model_path=source_path, artifact_path=self.source_blob,
                               eval_x=eval_arrays.x, eval_y=eval_arrays.y, workdir=self.workdir,
                               latency_runs=self.latency_runs)

    def _context(self, data: dict[str, Arrays | None], start: float, end: float, label: str) -> PassContext:
        def progress(fraction: float, message: str) -> None:
            if services.job_progress(self.job, percent=start + (end - start) * fraction, stage=label,
                                     message=message):
                self._cancel_requested = True

        self._cancel_requested = False
        return PassContext(task=self.job.source.model.task, workdir=self.workdir, train=data["train"],
                           calibration=data["calibration"], eval=data["eval"], progress=progress, log=self.log,
                           is_cancelled=lambda: self._cancel_requested)

    def _run_steps(self, steps: list[tuple[Any, dict[str, Any]]], source_path: Path,
                   data: dict[str, Arrays | None], start: float, end: float) -> ModelHandle:
        with tracing.span("load model"):
            handle = modelio.load_handle(source_path, self.job.source.format)
        share = (end - start) / max(len(steps), 1)
        with tracing.span("passes"):
            for index, (step, params) in enumerate(steps):
                lo = start + index * share
                self.stage = f"{step.name} ({index + 1}/{len(steps)})"
                ctx = self._context(data, lo, lo + share, self.stage)
                ctx.checkpoint(0.0, f"starting {step.name}")
                self.log(f"running {step.name} with {params}")
                handle = step.run(handle, params, ctx)
                ctx.checkpoint(1.0, f"{step.name} done")
        return handle

    @tracing.traced("export")
    def _export(self, handle: ModelHandle, dest: Path) -> tuple[Path, Path, str]:
        """Write the handle as a registrable artifact; return (artifact, what load_predictor reads, format)."""
        self.stage = "exporting"
        dest.mkdir(parents=True, exist_ok=True)
        artifact, fmt = modelio.export_handle(handle, dest)
        if fmt == "saved_model":
            unpacked = dest / "unpacked"
            unpacked.mkdir()
            archives.extract(artifact, unpacked, "zip")
            return artifact, inspection.find_saved_model_root(unpacked), fmt
        return artifact, artifact, fmt

    @tracing.traced("measure variant")
    def _measure(self, artifact: Path, model_path: Path, fmt: str, eval_arrays: Arrays | None,
                 parent: harness.ParentReference, handle: ModelHandle) -> Measured:
        """Metrics, raw outputs and sample I/O of a variant, from one loaded predictor."""
        assert eval_arrays is not None
        self.stage = "measuring"
        run = measure_model(artifact_path=artifact, model_path=model_path, fmt=fmt, task=self.job.source.model.task,
                            eval_x=eval_arrays.x, eval_y=eval_arrays.y, parent=parent,
                            clusters=handle.extra.get("clusters"), latency_runs=self.latency_runs)
        run.metrics["notes"] = handle.notes
        return Measured(artifact, run)

    @tracing.traced("register")
    def _register(self, measured: Measured | None, *, candidates: list[dict[str, Any]], message: str) -> None:
        self.progress(95, "registering", "Registering the variant")
        blob = None
        if measured is not None:
            blob = self.workdir / "variant-outputs.npz"
            measured.run.reference().save(blob)
        variant = services.job_finish_succeeded(
            self.job, artifact=measured.artifact if measured else None, metrics=measured.metrics if measured else None,
            samples=measured.run.samples if measured else {}, outputs_blob=blob, candidates=candidates, message=message)
        self.log(message + (f" Variant: v{variant.number}." if variant else ""))

    # -- auto-compression ---------------------------------------------------------------------

    def _run_auto(self, source_path: Path, data: dict[str, Arrays | None],
                  parent: harness.ParentReference) -> None:
        params = self.job.recipe.get("params") or {}
        budget = budget_mod.Budget.from_params(params)
        plan = services.plan_recipe(self.job.recipe, self.job.source)
        chosen = plan.candidates or []
        self.log(f"auto: {len(chosen)} candidates, budget {budget.describe()}; parent "
                 f"{_summary(parent.metrics)}")
        results: list[dict[str, Any]] = []
        kept: dict[int, Measured] = {}
        span = 90 / max(len(chosen), 1)
        for index, cand in enumerate(chosen):
            start = 5 + index * span
            entry: dict[str, Any] = {"label": cand["label"], "recipe": cand["recipe"]}
            try:
                handle = self._run_steps(parse_recipe(cand["recipe"]), source_path, data, start,
                                         start + span * 0.8)
                artifact, model_path, fmt = self._export(handle, self.workdir / f"candidate-{index}")
                self.progress(start + span * 0.85, f"measuring {cand['label']}", "")
                kept[index] = self._measure(artifact, model_path, fmt, data["eval"], parent, handle)
                # The definitions are stored once, on the registered variant's metrics.
                entry["metrics"] = {k: v for k, v in kept[index].metrics.items() if k != "definitions"}
                self.log(f"candidate {cand['label']}: {_summary(entry['metrics'])}")
            except Cancelled:
                raise
            except (PassError, ValueError, ModelyardError) as exc:
                entry["error"] = getattr(exc, "message", None) or str(exc)
                self.log(f"candidate {cand['label']} failed: {entry['error']}")
            results.append(entry)
        winner = budget_mod.choose(budget, parent.metrics, results)
        if winner is None:
            self._register(None, candidates=results,
                           message=f"No candidate stayed within the budget ({budget.describe()}); nothing was "
                                   "registered. See the candidates for each one's numbers.")
            return
        measured = kept[winner]
        measured.metrics["auto"] = {"budget": budget.describe(), "winner": results[winner]["label"]}
        self._register(measured, candidates=results,
                       message=f"auto: {results[winner]['label']} won ({_summary(measured.metrics)}).")

    # -- reporting ------------------------------------------------------------------------------

    def progress(self, percent: float, stage: str, message: str) -> None:
        self.stage = stage
        if services.job_progress(self.job, percent=percent, stage=stage, message=message):
            raise Cancelled(f"cancel requested during {stage}")

    def log(self, line: str) -> None:
        log.info("job %s: %s", self.job.pk, line)
        services.job_log(self.job, line)


def compute_device() -> str:
    """What this worker computes on, recorded on the job: its GPUs (``GPU:0,GPU:1``) or ``cpu``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return ",".join(g.name.removeprefix("/physical_device:") for g in gpus) or "cpu"


def _summary(metrics: dict[str, Any]) -> str:
    parts = []
    if metrics.get("accuracy") is not None:
        parts.append(f"accuracy {metrics['accuracy']:.4f}")
    if metrics.get("mse") is not None:
        parts.append(f"mse {metrics['mse']:.4g}")
    if metrics.get("gzipped_ratio"):
        parts.append(f"{metrics['gzipped_ratio']:.2f}x smaller gzipped")
    if metrics.get("gzipped_bytes"):
        parts.append(f"{metrics['gzipped_bytes']} B gzipped")
    return ", ".join(parts)
