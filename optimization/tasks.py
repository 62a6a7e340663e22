"""Background tasks: thin — load by id, call a service. Safe to run twice (the service claims
the job with a conditional update)."""
from __future__ import annotations

from django_tasks import task

from optimization import services


@task(queue_name="cpu")  # job_create enqueues it on the job's own queue (gpu for training)
def run_optimization_job(job_id: int) -> None:
    services.job_run(job_id=job_id)


@task(queue_name="cpu")  # for an external scheduler; the fleet runs `manage.py reap_jobs --loop`
def reap_stale_jobs() -> int:
    return services.jobs_reap_stale()
