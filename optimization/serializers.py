from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from metrics.serializers import MetricsOutput
from optimization.models import OptimizationJob
from optimization.recipe_schema import recipe_schema
from registry.serializers import JSONObjectField, VersionOutput


@extend_schema_field(recipe_schema())
class RecipeField(JSONObjectField):
    """A recipe (optimization/passes/__init__.py); the schema is the tagged union it accepts."""


class DatasetRolesInput(serializers.Serializer):
    train = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    eval = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    calibration = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class JobCreateInput(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    version = serializers.IntegerField(min_value=1)
    recipe = RecipeField(help_text='{"technique": "ptq_int8"}, {"pipeline": [...]}, or '
                                       '{"technique": "auto", "params": {"max_accuracy_drop": 0.01}}')
    datasets = DatasetRolesInput(required=False, help_text="Dataset ids by role; default: the latest of each role.")


class JobOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="source.model.name")
    version = serializers.IntegerField(source="source.number")
    variant = serializers.IntegerField(source="variant.number", allow_null=True, default=None)
    datasets = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.get_username")
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    recipe = RecipeField(read_only=True)

    class Meta:
        model = OptimizationJob
        fields = ["id", "model", "version", "recipe", "datasets", "status", "progress", "stage", "message",
                  "error", "log", "candidates", "variant", "cancel_requested", "created_by", "created_at",
                  "started_at", "finished_at", "duration_seconds", "heartbeat_at", "worker",
                  "queue", "device", "attempt"]

    def get_datasets(self, job: OptimizationJob) -> dict[str, Any]:
        return {"train": job.train_dataset_id, "eval": job.eval_dataset_id,
                "calibration": job.calibration_dataset_id}


class VariantParentOutput(serializers.Serializer):
    version = serializers.IntegerField()
    format = serializers.CharField()
    metrics = MetricsOutput(many=True)


class VariantsOutput(serializers.Serializer):
    """A version's own metrics beside its variants' (``GET .../versions/{n}/variants/``)."""

    parent = VariantParentOutput()
    variants = VersionOutput(many=True)
