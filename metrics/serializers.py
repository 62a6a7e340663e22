"""API output of a recorded harness run (shown in a version's ``metrics`` and beside variants)."""
from __future__ import annotations

from rest_framework import serializers

from metrics.models import VersionMetrics


class MetricsOutput(serializers.ModelSerializer):
    eval_dataset = serializers.IntegerField(source="eval_dataset_id")
    reference = serializers.IntegerField(source="reference.number", allow_null=True, default=None)

    class Meta:
        model = VersionMetrics
        fields = ["eval_dataset", "reference", "metrics", "created_at"]
