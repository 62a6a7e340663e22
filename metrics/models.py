"""What a version measured: one harness run per (version, eval dataset)."""
from __future__ import annotations

from django.db import models

from registry.models import Dataset, ModelVersion


class VersionMetrics(models.Model):
    """One harness run: a version measured on one eval dataset. Computed once, then reused
    (a parent's metrics serve every variant measured against it)."""

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="metrics")
    eval_dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="+")
    reference = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                  help_text="The parent the ratios/deltas/agreement compare with (null: none).")
    metrics = models.JSONField()
    samples = models.JSONField(default=dict, blank=True,
                               help_text="Sample inputs with this version's outputs, for serving checks.")
    outputs_sha256 = models.CharField(max_length=64, blank=True,
                                      help_text="Blob (.npy) of this version's outputs on the eval set.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "version metrics"
        constraints = [models.UniqueConstraint(fields=["version", "eval_dataset"], name="one_metrics_per_eval")]

    def __str__(self) -> str:
        return f"metrics of {self.version} on {self.eval_dataset.name}"
