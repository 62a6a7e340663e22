"""Jobs go to the task queue their recipe needs (the database task backend, no worker): training
to `gpu`, conversions and measuring to `cpu`; release work to `deploy`. And a run reports only
for its own attempt of a job."""
from __future__ import annotations

import pytest
from django_tasks_db.models import DBTaskResult

from optimization import services
from optimization.models import OptimizationJob

RECIPES = [
    ({"technique": "prune", "params": {"epochs": 1}}, "gpu"),
    ({"technique": "finetune", "params": {"epochs": 1}}, "gpu"),
    ({"pipeline": "prune_int8"}, "gpu"),  # a pipeline with any training step trains
    ({"technique": "auto", "params": {"max_accuracy_drop": 0.05}}, "gpu"),  # its candidates prune
    ({"technique": "auto", "params": {"candidates": ["int8", "float16"]}}, "cpu"),
    ({"technique": "ptq_int8"}, "cpu"),
    ({"technique": "ptq_dynamic"}, "cpu"),
    ({"technique": "fp16"}, "cpu"),
    ({"technique": "measure"}, "cpu"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("recipe", "queue"), RECIPES)
def test_a_job_is_enqueued_on_the_queue_its_recipe_needs(api, digits_model, recipe, queue,
                                                         django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1, "recipe": recipe},
                            format="json")
    assert response.status_code == 202, response.content
    assert response.json()["queue"] == queue and response.json()["message"] == f"Waiting for a {queue} worker."
    job = OptimizationJob.objects.get(pk=response.json()["id"])
    assert job.queue == queue and job.attempt == 0 and job.device == ""
    task = DBTaskResult.objects.get()
    assert (task.queue_name, task.task_path, task.args_kwargs["args"]) == (
        queue, "optimization.tasks.run_optimization_job", [job.pk])


def test_release_tasks_use_the_deploy_queue():
    from releases import tasks

    assert {t.queue_name for t in (tasks.build_release_image, tasks.promote_release, tasks.check_endpoints)} == {
        "deploy"}


@pytest.mark.django_db
def test_a_stalled_attempt_neither_reports_progress_nor_logs_into_its_retry(api, digits_model):
    """A worker that stalled past its heartbeat, was reaped and whose job was claimed again must
    not pass its progress, heartbeat or log lines off as the new attempt's: it is told to stop."""
    response = api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1,
                                                        "recipe": {"technique": "ptq_dynamic"}}, format="json")
    job = OptimizationJob.objects.get(pk=response.json()["id"])
    OptimizationJob.objects.filter(pk=job.pk).update(status="running", attempt=1, progress=5.0, stage="loading")
    stalled = OptimizationJob.objects.get(pk=job.pk)  # what attempt 1's runner holds
    assert services.job_progress(stalled, percent=10, stage="converting") is False  # its own: recorded
    services.job_log(stalled, "attempt 1 line")
    OptimizationJob.objects.filter(pk=job.pk).update(attempt=2, progress=1.0, stage="starting", log="")  # retried

    assert services.job_progress(stalled, percent=90, stage="measuring", message="late") is True  # stop
    services.job_log(stalled, "attempt 1, too late")
    job.refresh_from_db()
    assert (job.attempt, job.progress, job.stage, job.log) == (2, 1.0, "starting", "")
    current = OptimizationJob.objects.get(pk=job.pk)
    assert services.job_progress(current, percent=20, stage="converting") is False
    services.job_log(current, "attempt 2 line")
    job.refresh_from_db()
    assert (job.progress, job.stage) == (20.0, "converting") and job.log.endswith("attempt 2 line\n")
