"""Admin: jobs with status and progress; cancellation calls the same service as the API."""
from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from optimization import services
from optimization.models import OptimizationJob
from registry.admin import ModelVersionAdmin, NoSaveButtonsMixin
from registry.errors import ModelyardError
from registry.models import ModelVersion


@admin.register(OptimizationJob)
class OptimizationJobAdmin(NoSaveButtonsMixin, admin.ModelAdmin):
    list_display = ["id", "source", "recipe_label", "status", "progress_bar", "stage", "variant", "created_by",
                    "created_at"]
    list_filter = ["status", "queue", "source__model"]
    list_select_related = ["source__model", "variant__model", "created_by"]
    search_fields = ["source__model__name", "message", "error"]
    actions = ["cancel_jobs"]
    fieldsets = [
        (None, {"fields": ["source", "recipe_display", "status", "progress", "stage", "message", "error"]}),
        ("Datasets", {"fields": ["train_dataset", "eval_dataset", "calibration_dataset"]}),
        ("Result", {"fields": ["variant", "candidates_display"]}),
        ("Run", {"fields": ["created_by", "created_at", "started_at", "finished_at", "heartbeat_at", "worker",
                            "queue", "device", "attempt", "cancel_requested", "log"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    @admin.display(description="Recipe")
    def recipe_label(self, job: OptimizationJob) -> str:
        return job.recipe_label

    @admin.display(description="Progress")
    def progress_bar(self, job: OptimizationJob) -> str:
        return format_html('<progress max="100" value="{}"></progress> {}%', job.progress, round(job.progress))

    @admin.display(description="Recipe")
    def recipe_display(self, job: OptimizationJob) -> str:
        return format_html("<pre>{}</pre>", json.dumps(job.recipe, indent=2))

    @admin.display(description="Candidates (auto)")
    def candidates_display(self, job: OptimizationJob) -> str:
        rows = [format_html("<li><b>{}</b>: {}</li>", c.get("label"), c.get("outcome", "")) for c in job.candidates]
        return format_html("<ul>{}</ul>", format_html("".join(rows))) if rows else "—"

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[OptimizationJob]) -> None:
        for job in queryset:
            try:
                services.job_cancel(job=job, actor=request.user)
            except ModelyardError as exc:
                self.message_user(request, f"Job {job.pk}: {exc.message}", messages.WARNING)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs start from the API or pages, through services.job_create

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# Versions get a "measure" action here rather than in registry/admin.py: the registry does not
# depend on optimization, so this app extends the registry's version admin.
admin.site.unregister(ModelVersion)


@admin.register(ModelVersion)
class MeasurableModelVersionAdmin(ModelVersionAdmin):
    actions = [*(ModelVersionAdmin.actions or []), "measure_versions"]

    @admin.action(description="Measure on the latest eval dataset (for release gates)")
    def measure_versions(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if not request.user.has_perm("optimization.add_optimizationjob"):
            self.message_user(request, "Measuring needs permission to start optimization jobs.", messages.ERROR)
            return
        for version in queryset.select_related("model"):
            try:
                job = services.job_create(source=version, recipe={"technique": services.MEASURE},
                                          actor=request.user)
            except ModelyardError as exc:
                self.message_user(request, f"{version}: {exc.message}", messages.WARNING)
            else:
                self.message_user(request, f"{version}: measurement job {job.pk} queued.", messages.SUCCESS)
