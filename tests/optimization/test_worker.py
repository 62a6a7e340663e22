"""Jobs through a real `manage.py db_worker` process: success, cancellation mid-training, and a
worker killed with SIGKILL mid-job (the job must not stay `running`, and nothing is left)."""
from __future__ import annotations

import signal
import time

import pytest
from django.core.management import call_command

from optimization import services
from optimization.models import OptimizationJob
from registry.models import ModelVersion
from tests.conftest import files_under
from tests.processes import wait_for

LONG_PRUNE = {"technique": "prune", "params": {"epochs": 300, "sparsity": 0.5}}


def job_state(job_id: int) -> OptimizationJob:
    return OptimizationJob.objects.get(pk=job_id)


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_process_runs_a_job(api, digits_model, worker, storage_root):
    job_id = api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1,
                                                     "recipe": {"technique": "ptq_dynamic"}}, format="json").json()["id"]
    job = wait_for(lambda: (j := job_state(job_id)).is_finished and j, what="the job to finish")
    assert job.status == "succeeded", (job.error, job.log)
    assert job.worker.endswith(f":{worker.pid}")
    assert job.variant.format == "tflite" and job.variant.parent.number == 1
    # The worker removes its scratch directory right after it commits the result.
    wait_for(lambda: files_under(storage_root / "tmp") == [], timeout=20, what="scratch cleanup")


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_job_stops_it_at_the_next_epoch(api, digits_model, worker, storage_root):
    job_id = api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1, "recipe": LONG_PRUNE},
                      format="json").json()["id"]
    wait_for(lambda: job_state(job_id).stage.startswith("prune") and job_state(job_id).progress > 6,
             what="training to start")
    response = api.post(f"/api/v1/optimization-jobs/{job_id}/cancel/")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    job = wait_for(lambda: (j := job_state(job_id)).is_finished and j, timeout=60, what="the cancel")
    assert job.status == "cancelled" and job.variant is None
    assert job.progress < 70  # it stopped mid-training, not after 300 epochs
    assert ModelVersion.objects.count() == 1
    wait_for(lambda: files_under(storage_root / "tmp") == [], timeout=20, what="scratch cleanup")


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_does_not_leave_the_job_running(api, digits_model, worker, storage_root, settings):
    settings.OPTIMIZATION_HEARTBEAT_TIMEOUT = 3
    settings.OPTIMIZATION_MAX_ATTEMPTS = 1  # no retry: the job fails with the reason (retries: tests/test_fleet.py)
    blobs_before = set(files_under(storage_root / "blobs"))
    job_id = api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1, "recipe": LONG_PRUNE},
                      format="json").json()["id"]
    wait_for(lambda: job_state(job_id).stage.startswith("prune"), what="training to start")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    time.sleep(4)
    assert api.get(f"/api/v1/optimization-jobs/{job_id}/").json()["status"] == "running"  # reads never reap
    call_command("reap_jobs")  # what the fleet's `reap_jobs --loop` does on its schedule
    body = api.get(f"/api/v1/optimization-jobs/{job_id}/").json()
    assert body["status"] == "failed" and body["attempt"] == 1 and body["device"] == "cpu"
    assert "stopped" in body["error"] and "Nothing was registered" in body["error"]
    assert ModelVersion.objects.count() == 1
    assert files_under(storage_root / "tmp") == []  # the dead worker's scratch directory is gone
    new_blobs = set(files_under(storage_root / "blobs")) - blobs_before
    from metrics.models import VersionMetrics

    assert {b.split("/")[-1] for b in new_blobs} <= set(VersionMetrics.objects.values_list("outputs_sha256", flat=True))
    from django_tasks_db.models import DBTaskResult

    assert DBTaskResult.objects.get().status == "FAILED"  # the dead worker's task row is closed too
    assert services.jobs_reap_stale() == 0  # already reaped; reaping is idempotent
