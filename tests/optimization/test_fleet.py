"""The worker fleet with real processes on PostgreSQL (`make test`'s PostgreSQL pass): workers
serving different queues, each with its own scratch directory, sharing only the database and the
artifact store; 12 jobs across the gpu, cpu and deploy queues; the GPU host's worker is killed with
SIGKILL mid-training. Every job ends succeeded (or failed with a reason), a retried job registers
exactly one variant, and no task ran on a worker that does not serve its queue."""
from __future__ import annotations

import signal
import time

import pytest
from django.db import connection
from django_tasks_db.models import DBTaskResult

from optimization.models import OptimizationJob
from registry.models import AuditEvent, ModelVersion
from releases.tasks import check_endpoints
from tests.conftest import files_under
from tests.processes import start_manage, start_worker, stop, wait_for

VICTIM = {"technique": "prune", "params": {"epochs": 40, "sparsity": 0.5}}
GPU_JOBS = [VICTIM, {"technique": "prune", "params": {"epochs": 1, "sparsity": 0.5}},
            {"technique": "cluster", "params": {"number_of_clusters": 8, "epochs": 1}},
            {"technique": "finetune", "params": {"epochs": 1}}]
CPU_JOBS = [{"technique": "ptq_dynamic"}, {"technique": "ptq_float16"}, {"technique": "ptq_int8"},
            {"technique": "fp16"}, {"technique": "measure"}]
DEPLOY_TASKS = 3  # endpoint health checks
SERVES = {"host-a-gpu": {"gpu"}, "host-b-cpu": {"cpu", "deploy"}, "host-a-gpu-restarted": {"gpu"}}
# 10 s, not 3: on a loaded 2-core machine a live worker's heartbeat thread can miss a few seconds.
FLEET_ENV = {"MODELYARD_JOB_HEARTBEAT_TIMEOUT": "10", "MODELYARD_JOB_MAX_ATTEMPTS": "2"}


@pytest.fixture
def fleet(tmp_path, storage_root):  # type: ignore[no-untyped-def]
    """Start processes by name; every one is stopped at the end."""
    procs = {}

    def start(name: str, argv: list[str] | None = None, **env: str):  # type: ignore[no-untyped-def]
        log = tmp_path / f"{name}.log"
        if argv is None:
            scratch = tmp_path / ("scratch-" + name.split("-")[1])  # one per host
            procs[name] = start_worker(storage_root=storage_root, log_path=log, queues=",".join(SERVES[name]),
                                       worker_id=name, MODELYARD_JOB_SCRATCH_DIR=str(scratch), **FLEET_ENV, **env)
        else:
            procs[name] = start_manage(argv, storage_root=storage_root, log_path=log, **FLEET_ENV, **env)
        return procs[name]

    yield start
    for proc in procs.values():
        stop(proc)
    for name in procs:  # shown by pytest when the test failed
        lines = (tmp_path / f"{name}.log").read_text(errors="replace").splitlines()
        print(f"--- {name}.log", *[x for x in lines if not x.startswith(("I0000", "W0000"))][-40:], sep="\n")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_killed_gpu_worker_loses_no_work_and_no_job_runs_on_the_wrong_queue(
        api, digits_model, fleet, tmp_path, storage_root, django_capture_on_commit_callbacks):
    if connection.vendor != "postgresql":
        pytest.skip("the fleet runs on PostgreSQL (make test's PostgreSQL pass)")
    ids = [api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1, "recipe": recipe},
                    format="json").json()["id"] for recipe in GPU_JOBS + CPU_JOBS]
    victim = ids[0]
    for _ in range(DEPLOY_TASKS):
        check_endpoints.enqueue()
    assert DBTaskResult.objects.count() == 12
    gpu_worker = fleet("host-a-gpu")
    fleet("host-b-cpu")
    fleet("reaper", ["reap_jobs", "--loop", "1"])

    wait_for(lambda: (j := OptimizationJob.objects.get(pk=victim)).stage.startswith("prune") and j.progress > 8,
             timeout=240, what="the GPU worker to be training")
    gpu_worker.send_signal(signal.SIGKILL)
    gpu_worker.wait(10)
    assert list(files_under(tmp_path / "scratch-a")), "the killed worker left its scratch directory"

    # The CPU worker finishes its own queues and never takes the training jobs, which wait.
    wait_for(lambda: not DBTaskResult.objects.filter(queue_name__in=["cpu", "deploy"]).exclude(
        status="SUCCESSFUL").exists(), timeout=300, what="the cpu and deploy tasks")
    retried = wait_for(lambda: (j := OptimizationJob.objects.get(pk=victim)).status == "queued" and j,
                       timeout=60, what="the reaper to queue the victim again")
    assert retried.attempt == 1 and "Queued again for another gpu worker" in retried.message
    assert set(OptimizationJob.objects.filter(queue="gpu").values_list("status", flat=True)) == {"queued"}

    fleet("host-a-gpu-restarted")  # the GPU host's worker comes back (supervisor / restart policy)
    wait_for(lambda: not OptimizationJob.objects.exclude(status__in=OptimizationJob.FINISHED).exists(),
             timeout=400, what="every job to finish")

    jobs = {job.pk: job for job in OptimizationJob.objects.all()}
    failed = {pk: (job.error, job.log[-2000:]) for pk, job in jobs.items() if job.status != "succeeded"}
    assert not failed, failed
    job = jobs[victim]
    assert (job.attempt, job.device, job.worker.split(":")[0] != "") == (2, "cpu", True)
    assert AuditEvent.objects.filter(action="optimization_job.retry", object_id=str(victim)).count() == 1
    for pk, job in jobs.items():  # exactly one variant per job that registers one (measure registers none)
        produced = ModelVersion.objects.filter(metadata__optimization_job=pk)
        expected = 0 if job.recipe["technique"] == "measure" else 1
        assert produced.count() == expected and (job.variant_id is not None) == bool(expected), pk
    assert ModelVersion.objects.count() == 1 + 8

    tasks = list(DBTaskResult.objects.all())
    assert len(tasks) == 13  # the victim's second run is a task of its own
    for task in tasks:
        assert task.worker_ids and all(task.queue_name in SERVES[w] for w in task.worker_ids), (
            task.queue_name, task.worker_ids)
    assert sorted(t.status for t in tasks if t.args_kwargs["args"] == [victim]) == ["FAILED", "SUCCESSFUL"]
    assert files_under(tmp_path / "scratch-a") == []  # swept when the restarted worker took its first job
    assert files_under(tmp_path / "scratch-b") == [] and files_under(storage_root / "tmp") == []
