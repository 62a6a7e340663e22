from django.apps import AppConfig


class OptimizationConfig(AppConfig):
    name = "optimization"
    # `manage.py reap_jobs` runs every app's reapers: {what it reaps: the service}
    stale_work_reapers = {"job": "optimization.services.jobs_reap_stale"}
