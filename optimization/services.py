"""Every write for optimization jobs: create (validated), run, cancel, reap dead workers.

The task (``optimization.tasks.run_optimization_job``) only calls ``job_run``. A job leaves no
trace on failure: the variant version, its blob and its metrics are written in one transaction at
the very end, and the scratch directory is removed whatever happens.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from optimization import budget as budget_mod
from config import tracing
from metrics import services as measurements
from optimization.errors import OptimizationError
from optimization.models import OptimizationJob
from registry import audit, datasets as dataset_checks, jsonlimits, services as registry
from registry.errors import Conflict, NotFound, RegistryError
from registry.heartbeat import Heartbeat, close_orphan_task_results, worker_name
from registry.models import Dataset, ModelVersion
from registry.uploads import StagedFile

log = logging.getLogger(__name__)


class JobInputError(OptimizationError):
    code = "invalid_job"


# --- create ----------------------------------------------------------------------------------

def source_kind(version: ModelVersion) -> str:
    """What a pass receives from this version: a Keras model, a plain SavedModel, or TFLite."""
    if version.format == ModelVersion.Format.SAVED_MODEL:
        return "keras" if version.framework.get("keras_saved_model") else "saved_model"
    return "keras" if version.format == ModelVersion.Format.KERAS else "tflite"


@dataclass
class Plan:
    """A validated recipe: the steps to run, or the auto budget and its candidate recipes."""

    recipe: dict[str, Any]
    steps: list[tuple[Any, dict[str, Any]]]
    auto: budget_mod.Budget | None = None
    candidates: list[dict[str, Any]] | None = None
    needs: frozenset[str] = frozenset()

    @property
    def queue(self) -> str:
        """The task queue this job needs: a step that needs a train dataset trains (prune,
        cluster, QAT, distill, fine-tune; auto when a candidate does), and training belongs on a
        GPU worker; conversions and measuring run on any CPU worker."""
        return QUEUE_GPU if "train" in self.needs else QUEUE_CPU


# Task queues by need (settings.TASKS QUEUES; deploy/README.md says which worker serves which).
QUEUE_GPU, QUEUE_CPU = "gpu", "cpu"


# Not a compression: measure the version itself on the eval dataset (a plain upload has no metrics
# until then, and release gates compare recorded metrics). Registers no variant.
MEASURE = "measure"


def plan_recipe(recipe: Any, version: ModelVersion) -> Plan:
    """Parse and check a recipe against the source version; raise JobInputError (400) if it
    cannot apply — e.g. pruning a .tflite — so the user hears it now, not from a failed job."""
    from optimization import passes

    if not isinstance(recipe, dict):
        raise JobInputError('recipe must be an object, e.g. {"technique": "ptq_int8"}.')
    jsonlimits.check(recipe, what="recipe")  # before anything walks it recursively
    kind = source_kind(version)
    if recipe.get("technique") == MEASURE:
        if set(recipe) - {"technique", "params"} or recipe.get("params"):
            raise JobInputError('"measure" takes no parameters: {"technique": "measure"}.')
        return Plan(recipe={"technique": MEASURE}, steps=[], needs=frozenset())
    try:
        if recipe.get("technique") == "auto":
            params = _auto_params(recipe)
            chosen, plans = _auto_candidates(params.get("candidates"), kind, version)
            needs = frozenset().union(*(s.needs for steps in plans for s, _ in steps))
            return Plan(recipe={"technique": "auto", "params": params}, steps=[],
                        auto=budget_mod.Budget.from_params(params), candidates=chosen, needs=needs)
        steps = passes.parse_recipe(recipe)
        passes.check_source_kind(steps, kind, version=version.number)
    except (passes.PassError, budget_mod.BudgetError) as exc:
        raise JobInputError(str(exc)) from exc
    return Plan(recipe=recipe, steps=steps, needs=frozenset().union(*(s.needs for s, _ in steps)))


AUTO_PARAMS = frozenset({"max_accuracy_drop", "relative", "objective", "candidates"})


def _auto_params(recipe: dict[str, Any]) -> dict[str, Any]:
    """An auto recipe's params: an object of known keys (an unknown one is a typo, not a no-op)."""
    extra = set(recipe) - {"technique", "params", "label"}
    if extra:
        raise JobInputError(f"unknown recipe key(s): {', '.join(sorted(extra))}")
    params = recipe.get("params") or {}
    if not isinstance(params, dict):
        raise JobInputError("auto: params must be an object.")
    unknown = set(params) - AUTO_PARAMS
    if unknown:
        raise JobInputError(f"auto: unknown parameter(s) {', '.join(sorted(map(repr, unknown)))} "
                            f"(known: {', '.join(sorted(AUTO_PARAMS))})")
    return params


def _auto_candidates(labels: Any, kind: str, version: ModelVersion) -> tuple[list[dict[str, Any]], list[Any]]:
    """The candidate recipes auto will try, most aggressive first: all that apply to this source,
    or the ones named in ``params.candidates`` (each must apply)."""
    from optimization import passes

    known = {c["label"]: c for c in passes.AUTO_CANDIDATES}
    if labels is not None:
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise JobInputError("params.candidates must be a non-empty list of candidate labels.")
        unknown = [x for x in labels if x not in known]
        if unknown:
            raise JobInputError(f"Unknown auto candidate(s) {unknown}; known: {', '.join(known)}.")
    chosen, plans = [], []
    for cand in passes.AUTO_CANDIDATES:
        if labels is not None and cand["label"] not in labels:
            continue
        steps = passes.parse_recipe(cand["recipe"])
        try:
            passes.check_source_kind(steps, kind, version=version.number)
        except passes.PassError:
            if labels is not None:
                raise
            continue  # e.g. pruning candidates for a SavedModel without Keras metadata
        chosen.append(cand)
        plans.append(steps)
    if not chosen:
        raise JobInputError(f"No auto-compression candidate applies to version {version.number} ({kind}).")
    return chosen, plans


def _pick_dataset(version: ModelVersion, role: str, given: Dataset | None, required: bool) -> Dataset | None:
    dataset = given or Dataset.objects.filter(model=version.model, role=role).order_by("-created_at").first()
    if dataset is None:
        if required:
            raise JobInputError(f"This recipe needs a {role} dataset, and model {version.model.name!r} has none. "
                                f"Upload one to /api/v1/models/{version.model.name}/datasets/ with role={role}.",
                                code="missing_dataset")
        return None
    if dataset.model_id != version.model_id:
        raise JobInputError(f"Dataset {dataset.pk} belongs to another model.", code="invalid_dataset")
    if dataset.role != role:
        raise JobInputError(f"Dataset {dataset.pk} has role {dataset.role!r}, not {role!r}.", code="invalid_dataset")
    try:
        dataset_checks.check_shape_against_signature(dataset.arrays, version.signature)
    except RegistryError as exc:
        raise JobInputError(f"The {role} dataset {dataset.name!r} does not fit version {version.number}: "
                            f"{exc.message}", code="dataset_mismatch") from exc
    return dataset


@transaction.atomic
def job_create(*, source: ModelVersion, recipe: Any, actor: AbstractBaseUser,
               datasets: dict[str, Dataset | None] | None = None) -> OptimizationJob:
    if source.status != ModelVersion.Status.READY:
        raise Conflict(f"Version {source.number} is {source.status}; only ready versions can be optimized.")
    plan = plan_recipe(recipe, source)
    given = datasets or {}
    unknown = set(given) - {"train", "eval", "calibration"}
    if unknown:
        raise JobInputError(f"Unknown dataset role(s) {sorted(unknown)}: use train, eval, calibration.")
    chosen = {role: _pick_dataset(source, role, given.get(role), required=(role == "eval" or role in plan.needs))
              for role in ("train", "eval", "calibration")}
    job = OptimizationJob.objects.create(
        source=source, recipe=plan.recipe, train_dataset=chosen["train"], eval_dataset=chosen["eval"],
        calibration_dataset=chosen["calibration"], created_by=actor, stage="queued", queue=plan.queue,
        message=f"Waiting for a {plan.queue} worker.")
    audit.record(actor=actor, action="optimization_job.create", obj=job, model=source.model, version=source,
                 after={"recipe": plan.recipe, "datasets": {r: d.pk if d else None for r, d in chosen.items()}})
    _enqueue(job)
    return job


def _enqueue(job: OptimizationJob) -> None:
    """Enqueue the job's run on its queue once the transaction commits (only workers serving that
    queue take it: a training job waits for a GPU worker instead of running on a CPU one)."""
    from optimization.tasks import run_optimization_job

    task = run_optimization_job.using(queue_name=job.queue)
    transaction.on_commit(lambda: task.enqueue(job.pk))


# --- cancel and reap -------------------------------------------------------------------------

@transaction.atomic
def job_cancel(*, job: OptimizationJob, actor: AbstractBaseUser) -> OptimizationJob:
    """A queued job is cancelled at once; a running one stops at its next epoch or stage."""
    now = timezone.now()
    if OptimizationJob.objects.filter(pk=job.pk, status=OptimizationJob.Status.QUEUED).update(
            status=OptimizationJob.Status.CANCELLED, finished_at=now, cancel_requested=True,
            message=f"Cancelled by {actor} before it started."):
        action = "optimization_job.cancel"
    elif OptimizationJob.objects.filter(pk=job.pk, status=OptimizationJob.Status.RUNNING).update(
            cancel_requested=True, message=f"Cancellation requested by {actor}; stopping at the next stage."):
        action = "optimization_job.cancel_requested"
    else:
        job.refresh_from_db()
        raise Conflict(f"Job {job.pk} is already {job.status}; there is nothing to cancel.", code="job_finished")
    audit.record(actor=actor, action=action, obj=job, model=job.source.model, version=job.source)
    job.refresh_from_db()
    return job


def jobs_reap_stale(*, older_than: timedelta | None = None) -> int:
    """Jobs whose worker stopped sending heartbeats (killed, OOM, machine lost): queue them again
    for another worker while attempts remain (settings.OPTIMIZATION_MAX_ATTEMPTS), fail them with
    the reason otherwise. Run on a schedule (``manage.py reap_jobs --loop``), never in a request.
    Returns how many jobs were reaped; safe to run from several processes at once."""
    limit = older_than or timedelta(seconds=settings.OPTIMIZATION_HEARTBEAT_TIMEOUT)
    cutoff = timezone.now() - limit
    stale = list(OptimizationJob.objects.select_related("source__model")
                 .filter(status=OptimizationJob.Status.RUNNING, heartbeat_at__lt=cutoff))
    reaped = sum(_reap_one(job, cutoff) for job in stale)
    if reaped:
        sweep_scratch()  # the dead worker's, when it used this host's scratch directory
    return reaped


@transaction.atomic
def _reap_one(job: OptimizationJob, cutoff: Any) -> bool:
    lost = (f"The worker running attempt {job.attempt} ({job.worker or 'unknown'}) stopped: no heartbeat since "
            f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC.")
    running = OptimizationJob.objects.filter(pk=job.pk, status=OptimizationJob.Status.RUNNING,
                                             attempt=job.attempt, heartbeat_at__lt=cutoff)
    if job.attempt < settings.OPTIMIZATION_MAX_ATTEMPTS:
        if not running.update(status=OptimizationJob.Status.QUEUED, heartbeat_at=None, progress=0.0,
                              stage="queued", message=f"{lost} Queued again for another {job.queue} worker.",
                              log=Concat(F("log"), Value(f"[{timezone.now():%H:%M:%S}] {lost} Retrying.\n"))):
            return False
        audit.record(actor=None, action="optimization_job.retry", obj=job, model=job.source.model,
                     version=job.source, comment=f"worker lost (no heartbeat) during attempt {job.attempt}")
        _enqueue(job)
    else:
        attempts = f"after {job.attempt} attempts" if job.attempt > 1 else "on its only attempt"
        if not running.update(status=OptimizationJob.Status.FAILED, finished_at=timezone.now(),
                              error=f"{lost} Failed {attempts}. Nothing was registered; run the job again.",
                              message="Worker lost."):
            return False
        audit.record(actor=None, action="optimization_job.fail", obj=job, model=job.source.model,
                     version=job.source, comment="worker lost (no heartbeat)")
    close_orphan_task_results("optimization.tasks.run_optimization_job", [job.pk], worker=job.worker)
    return True


# --- run -------------------------------------------------------------------------------------

def job_run(*, job_id: int) -> None:
    """Run a queued job to the end. Safe to call twice: only the caller that claims it runs it."""
    now = timezone.now()
    claimed = OptimizationJob.objects.filter(pk=job_id, status=OptimizationJob.Status.QUEUED).update(
        status=OptimizationJob.Status.RUNNING, started_at=now, heartbeat_at=now, progress=0.0,
        attempt=F("attempt") + 1, worker=worker_name(), stage="starting",
        message="Started.")
    if not claimed:
        log.info("job %s is not queued; skipping", job_id)
        return
    job = OptimizationJob.objects.select_related("source__model", "train_dataset", "eval_dataset",
                                                 "calibration_dataset", "created_by").get(pk=job_id)
    from optimization.runner import JobRunner, compute_device  # TensorFlow lives behind this import

    job.device = compute_device()
    OptimizationJob.objects.filter(pk=job_id, attempt=job.attempt).update(device=job.device)
    heartbeat = Heartbeat(lambda: OptimizationJob.objects.filter(pk=job_id, status=OptimizationJob.Status.RUNNING,
                                                                 attempt=job.attempt), name=f"job-{job_id}").start()
    sweep_scratch()  # what a worker killed earlier on this host left behind
    workdir = _make_scratch(job_id)
    try:
        JobRunner(job, workdir).run()
    finally:
        heartbeat.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _scratch_root() -> Path:
    """This host's scratch directory for jobs: MODELYARD_JOB_SCRATCH_DIR (local disk of a worker
    host), or the storage root's tmp/ by default."""
    root = Path(settings.JOB_SCRATCH_DIR or settings.FILE_UPLOAD_TEMP_DIR)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _make_scratch(job_id: int) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=_scratch_root()))


def sweep_scratch() -> int:
    """Remove scratch directories (``job-<id>-*``) of jobs that are not running: a worker killed
    mid-job cannot clean up after itself. A running job's directory is kept, whichever worker on
    this host runs it. Returns how many were removed."""
    dirs: dict[int, list[Path]] = {}
    for path in _scratch_root().glob("job-*-*"):
        job_id = path.name.split("-")[1]
        if job_id.isdigit():
            dirs.setdefault(int(job_id), []).append(path)
    running = set(OptimizationJob.objects.filter(pk__in=dirs, status=OptimizationJob.Status.RUNNING)
                  .values_list("pk", flat=True))
    removed = [path for job_id, paths in dirs.items() if job_id not in running for path in paths]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return len(removed)


# --- progress, used by the runner ------------------------------------------------------------

def job_progress(job: OptimizationJob, *, percent: float, stage: str, message: str = "") -> bool:
    """Record this run's progress; True when it must stop: cancellation was requested, or the job
    is no longer this run's (reaped and retried while this worker was stalled: its progress and
    heartbeat would otherwise pass for the new attempt's)."""
    if not _this_attempt(job).update(progress=round(min(max(percent, 0.0), 100.0), 1), stage=stage[:200],
                                     message=message[:500], heartbeat_at=timezone.now()):
        return True
    return OptimizationJob.objects.filter(pk=job.pk, cancel_requested=True).exists()


def job_log(job: OptimizationJob, line: str) -> None:
    """Append a line to the job's log, unless the job has been retried since this run started."""
    stamp = timezone.now().strftime("%H:%M:%S")
    OptimizationJob.objects.filter(pk=job.pk, attempt=job.attempt).update(
        log=Concat(F("log"), Value(f"[{stamp}] {line}\n")))


def _this_attempt(job: OptimizationJob) -> Any:
    """The job's row while this run still owns it: running, and not retried since it started."""
    return OptimizationJob.objects.filter(pk=job.pk, status=OptimizationJob.Status.RUNNING, attempt=job.attempt)


def job_finish_failed(job: OptimizationJob, *, error: str, cancelled: bool = False) -> None:
    status = OptimizationJob.Status.CANCELLED if cancelled else OptimizationJob.Status.FAILED
    with transaction.atomic():
        updated = _this_attempt(job).update(
            status=status, finished_at=timezone.now(), error="" if cancelled else error[:5000],
            message=error[:500])
        if updated:
            audit.record(actor=None, action=f"optimization_job.{'cancel' if cancelled else 'fail'}", obj=job,
                         model=job.source.model, version=job.source, comment=error[:1000])


def job_finish_succeeded(job: OptimizationJob, *, artifact: Path | None, metrics: dict[str, Any] | None,
                         samples: dict[str, Any], outputs_blob: Path | None, candidates: list[dict[str, Any]],
                         message: str) -> ModelVersion | None:
    """Register the variant, its metrics and the job's success in one transaction.

    ``artifact`` None (auto with no candidate in budget) registers nothing and says why.
    """
    store_outputs = outputs_blob is not None and artifact is not None
    outputs_staged = StagedFile.from_path(outputs_blob) if store_outputs else None
    staged = StagedFile.from_path(artifact) if artifact is not None else None
    created_blobs: list[str] = []
    try:
        with transaction.atomic():
            # Lock the job row first: only the attempt that still owns the job registers a variant
            # (a worker that was reaped and retried elsewhere must not register a second one).
            if not list(_this_attempt(job).select_for_update().values_list("pk", flat=True)):
                raise Conflict("The job was reaped or cancelled while finishing; nothing registered.")
            variant = None
            if staged is not None:
                with tracing.span("version_create"):
                    variant = registry.version_create(
                        model=job.source.model, staged=staged, actor=job.created_by, parent=job.source,
                        source=ModelVersion.Source.OPTIMIZATION,
                        description=f"{job.recipe_label} of v{job.source.number}",
                        metadata={"optimization_job": job.pk, "recipe": job.recipe}, tags=["optimized"])
                created_blobs.append(staged.sha256)
                if outputs_staged is not None and registry.artifact_store().put(outputs_staged.path,
                                                                                outputs_staged.sha256):
                    created_blobs.append(outputs_staged.sha256)
                measurements.metrics_record(
                    version=variant, eval_dataset=job.eval_dataset, reference=job.source, metrics=metrics or {},
                    samples=samples, outputs_sha256=outputs_staged.sha256 if outputs_staged else "")
            updated = _this_attempt(job).update(
                status=OptimizationJob.Status.SUCCEEDED, finished_at=timezone.now(), progress=100.0,
                stage="done", message=message[:500], variant=variant, candidates=candidates)
            if not updated:
                raise Conflict("The job was reaped or cancelled while finishing; nothing registered.")
            audit.record(actor=None, action="optimization_job.succeed", obj=job, model=job.source.model,
                         version=variant or job.source, after={"variant": variant.number if variant else None},
                         comment=message[:1000])
            return variant
    except BaseException:
        for sha in created_blobs:
            registry.discard_blob_if_unreferenced(sha)
        raise


def get_dataset(model: Any, role: str, pk: int | str) -> Dataset:
    """The dataset ``pk`` of ``model``, given as the job's ``role`` dataset (404 if not its own)."""
    found = Dataset.objects.filter(model=model, pk=pk).first()
    if found is None:
        raise NotFound(f"Model {model.name!r} has no dataset {pk} (given as the {role} dataset).",
                       code="dataset_not_found")
    return found


def get_job(job_id: int | str) -> OptimizationJob:
    try:
        return OptimizationJob.objects.select_related("source__model", "variant", "created_by").get(pk=int(job_id))
    except (OptimizationJob.DoesNotExist, ValueError):
        raise NotFound(f"No optimization job {job_id}.", code="job_not_found") from None
