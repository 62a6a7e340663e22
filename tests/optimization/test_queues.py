"""Jobs go to the task queue their recipe needs (the database task backend, no worker): training
to `gpu`, conversions and measuring to `cpu`; release work to `deploy`."""
from __future__ import annotations

import pytest
from django_tasks_db.models import DBTaskResult

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
