"""Optimization jobs (what a version measured lives in the metrics app)."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from registry.models import Dataset, ModelVersion


class OptimizationJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    source = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="optimization_jobs")
    recipe = models.JSONField(help_text='{"technique": "prune", "params": {...}} or {"pipeline": [...]} or auto')
    train_dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    eval_dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="+")
    calibration_dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.PROTECT,
                                            related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    progress = models.FloatField(default=0.0, help_text="Percent, 0-100.")
    stage = models.CharField(max_length=200, blank=True)
    message = models.CharField(max_length=500, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    candidates = models.JSONField(default=list, blank=True, help_text="auto: every candidate tried, with metrics.")
    variant = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                related_name="produced_by_jobs")
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True,
                                        help_text="Refreshed while a worker runs the job; stale = worker gone.")
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the worker running it.")
    # The fleet (deploy/README.md): training goes to `gpu` workers, conversions and measuring to `cpu`.
    queue = models.CharField(max_length=32, default="cpu", help_text="Task queue the job was enqueued on.")
    device = models.CharField(max_length=200, blank=True,
                              help_text="What the worker computed on: its GPUs (e.g. GPU:0), or cpu.")
    attempt = models.PositiveIntegerField(default=0, help_text="Runs started; a lost worker's job runs again.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"job {self.pk}: {self.recipe_label} on {self.source}"

    @property
    def recipe_label(self) -> str:
        recipe = self.recipe or {}
        if "pipeline" in recipe:
            steps = recipe["pipeline"]
            return " → ".join(s.get("technique", "?") for s in steps) if isinstance(steps, list) else str(steps)
        return str(recipe.get("technique", "?"))

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

