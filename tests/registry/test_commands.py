"""The commands `make run` calls: ensure_admin and seed_demo."""
from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from registry.models import Dataset, ModelAlias, ModelVersion


@pytest.mark.django_db
def test_ensure_admin_generates_a_password_once(monkeypatch):
    monkeypatch.delenv("MODELYARD_ADMIN_PASSWORD", raising=False)
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    password = out.getvalue().split("password: ")[1].split()[0]
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    again = io.StringIO()
    call_command("ensure_admin", stdout=again)
    assert "already exists" in again.getvalue() and "password" not in again.getvalue()


@pytest.mark.django_db
def test_ensure_admin_takes_credentials_from_env(monkeypatch):
    monkeypatch.setenv("MODELYARD_ADMIN_USERNAME", "root-user")
    monkeypatch.setenv("MODELYARD_ADMIN_PASSWORD", "s3cret-pass-word")
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    assert "s3cret" not in out.getvalue()
    assert get_user_model().objects.get(username="root-user").check_password("s3cret-pass-word")


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
    from optimization.models import VersionMetrics

    measured = VersionMetrics.objects.get(version=version)  # gates and jobs have its numbers at once
    assert measured.metrics["accuracy"] > 0.9 and len(measured.samples["inputs"]) == 8
    call_command("seed_demo", stdout=io.StringIO())  # idempotent
    assert ModelVersion.objects.count() == 1
