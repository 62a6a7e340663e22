"""`manage.py seed_demo` (what `make run` calls after ensure_admin): the demo model, its datasets,
its alias and its measurement, once."""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from metrics.models import VersionMetrics
from registry.models import Dataset, ModelAlias, ModelVersion


@pytest.mark.django_db
def test_seed_demo_registers_a_trained_model_with_datasets(monkeypatch):
    monkeypatch.setenv("MODELYARD_ADMIN_PASSWORD", "pw-for-demo-123")
    call_command("ensure_admin", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())
    version = ModelVersion.objects.get(model__name="digits-demo")
    assert version.format == "saved_model" and version.signature["inputs"][0]["shape"] == [None, 8, 8, 1]
    assert version.metadata["train_accuracy_eval_split"] > 0.9
    assert sorted(Dataset.objects.values_list("role", flat=True)) == ["calibration", "eval", "train"]
    assert ModelAlias.objects.get(name="champion").version == version
    measured = VersionMetrics.objects.get(version=version)  # gates and jobs have its numbers at once
    assert measured.metrics["accuracy"] > 0.9 and len(measured.samples["inputs"]) == 8
    call_command("seed_demo", stdout=io.StringIO())  # idempotent
    assert ModelVersion.objects.count() == 1
