"""Admin: recorded harness runs, read-only (they are written by the harness, never by hand)."""
from __future__ import annotations

from typing import Any

from django.contrib import admin

from metrics.models import VersionMetrics
from registry.admin import ReadOnlyAdmin


@admin.register(VersionMetrics)
class VersionMetricsAdmin(ReadOnlyAdmin):
    list_display = ["version", "eval_dataset", "reference", "accuracy", "gzipped", "created_at"]
    list_select_related = ["version__model", "eval_dataset", "reference__model"]

    @admin.display(description="Accuracy")
    def accuracy(self, m: VersionMetrics) -> Any:
        return m.metrics.get("accuracy")

    @admin.display(description="Gzipped bytes")
    def gzipped(self, m: VersionMetrics) -> Any:
        return m.metrics.get("gzipped_bytes")
