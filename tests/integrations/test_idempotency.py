"""Idempotency-Key on creates: a replay returns the first answer, a different body is a 409,
and of two concurrent requests with one key only one creates."""
from __future__ import annotations

import threading

import pytest
import requests

from registry.models import IdempotencyKey
from optimization.models import OptimizationJob
from registry.models import ModelVersion, RegisteredModel
from releases.models import Release
from tests.conftest import files_under


@pytest.fixture
def model(api):  # type: ignore[no-untyped-def]
    assert api.post("/api/v1/models/", {"name": "digits", "task": "classification"}, format="json").status_code == 201


@pytest.mark.django_db
def test_the_same_upload_twice_registers_one_version_and_one_blob(api, model, artifacts, storage_root):
    key = {"HTTP_IDEMPOTENCY_KEY": "push-7f3a"}
    with open(artifacts["zip"], "rb") as fh:
        first = api.post("/api/v1/models/digits/versions/", {"artifact": fh, "tags": "nightly"}, format="multipart",
                         **key)
    assert first.status_code == 201, first.content
    with open(artifacts["zip"], "rb") as fh:
        again = api.post("/api/v1/models/digits/versions/", {"artifact": fh, "tags": "nightly"}, format="multipart",
                         **key)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotency-Replayed"] == "true" and "Idempotency-Replayed" not in first
    assert ModelVersion.objects.count() == 1
    assert len([p for p in files_under(storage_root / "blobs")]) == 1
    assert files_under(storage_root / "tmp") == []  # the replayed upload's staged copy is gone
    record = IdempotencyKey.objects.get(key="push-7f3a")
    assert record.status_code == 201 and record.response["version"] == 1


@pytest.mark.django_db
def test_the_same_key_with_another_body_is_a_conflict(api, model, artifacts, storage_root):
    key = {"HTTP_IDEMPOTENCY_KEY": "push-1"}
    with open(artifacts["zip"], "rb") as fh:
        assert api.post("/api/v1/models/digits/versions/", {"artifact": fh}, format="multipart", **key).status_code == 201
    with open(artifacts["zip2"], "rb") as fh:
        other = api.post("/api/v1/models/digits/versions/", {"artifact": fh}, format="multipart", **key)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert ModelVersion.objects.count() == 1 and len(files_under(storage_root / "blobs")) == 1
    with open(artifacts["zip"], "rb") as fh:
        same_file_other_fields = api.post("/api/v1/models/digits/versions/", {"artifact": fh, "description": "x"},
                                          format="multipart", **key)
    assert same_file_other_fields.status_code == 409


@pytest.mark.django_db
def test_a_failed_create_releases_its_key(api, model, artifacts):
    key = {"HTTP_IDEMPOTENCY_KEY": "k"}
    bad = api.post("/api/v1/models/", {"name": "digits", "task": "classification"}, format="json", **key)
    assert bad.status_code == 409  # the model exists: not stored, so a corrected retry may use the key
    assert not IdempotencyKey.objects.exists()
    ok = api.post("/api/v1/models/", {"name": "other", "task": "classification"}, format="json", **key)
    assert ok.status_code == 201
    replay = api.post("/api/v1/models/", {"name": "other", "task": "classification"}, format="json", **key)
    assert replay.status_code == 201 and replay["Idempotency-Replayed"] == "true"
    assert RegisteredModel.objects.filter(name="other").count() == 1


@pytest.mark.django_db
def test_keys_are_per_user(api, model, alice, django_user_model):
    from rest_framework.test import APIClient

    from tests.conftest import ENGINEER_PERMS, make_user

    erin = APIClient()
    erin.force_authenticate(make_user(django_user_model, "erin", ENGINEER_PERMS))
    key = {"HTTP_IDEMPOTENCY_KEY": "same"}
    assert api.post("/api/v1/models/", {"name": "a", "task": "classification"}, format="json", **key).status_code == 201
    assert erin.post("/api/v1/models/", {"name": "b", "task": "classification"}, format="json", **key).status_code == 201
    assert RegisteredModel.objects.filter(name__in=["a", "b"]).count() == 2


@pytest.mark.django_db
def test_release_and_job_creates_replay(api, versions, settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.dummy.DummyBackend", "QUEUES": settings.TASKS["default"]["QUEUES"]}}
    key = {"HTTP_IDEMPOTENCY_KEY": "rel-1"}
    body = {"model": "digits", "version": 1, "environment": "production"}
    first = api.post("/api/v1/releases/", body, format="json", **key)
    again = api.post("/api/v1/releases/", body, format="json", **key)
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    assert Release.objects.count() == 1
    job = {"model": "digits", "version": 1, "recipe": {"technique": "ptq_dynamic"}}
    j1 = api.post("/api/v1/optimization-jobs/", job, format="json", HTTP_IDEMPOTENCY_KEY="job-1")
    j2 = api.post("/api/v1/optimization-jobs/", job, format="json", HTTP_IDEMPOTENCY_KEY="job-1")
    assert j1.status_code == j2.status_code == 202 and j1.json()["id"] == j2.json()["id"]
    assert OptimizationJob.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_create_once(live_server, alice, artifacts, storage_root):
    from integrations import tokens
    from registry import services

    services.model_create(name="digits", owner=alice, task="classification")
    _, secret = tokens.token_create(actor=alice, name="ci", scopes=["registry:write", "registry:read"])
    auth = f"Bearer {secret}"
    url = f"{live_server.url}/api/v1/models/digits/versions/"
    answers: list[requests.Response] = []

    def push() -> None:
        with open(artifacts["zip"], "rb") as fh:
            answers.append(requests.post(url, files={"artifact": fh}, timeout=120,
                                         headers={"Authorization": auth, "Idempotency-Key": "race"}))

    threads = [threading.Thread(target=push) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) >= 1 and set(codes) <= {201, 409}, [r.text for r in answers]
    for r in answers:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "idempotency_key_in_progress"
        else:
            assert r.json()["version"] == 1
    assert ModelVersion.objects.count() == 1
    assert len(files_under(storage_root / "blobs")) == 1


@pytest.mark.django_db
def test_a_key_in_progress_is_a_409_until_its_request_is_abandoned(api, alice, model):
    from datetime import timedelta

    from django.utils import timezone

    running = IdempotencyKey.objects.create(user=alice, key="k", method="POST", path="/api/v1/models/")
    body = {"name": "other", "task": "classification"}
    busy = api.post("/api/v1/models/", body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "idempotency_key_in_progress"
    assert not RegisteredModel.objects.filter(name="other").exists()
    # its process died: after twice the inspection timeout the key is free again
    IdempotencyKey.objects.filter(pk=running.pk).update(created_at=timezone.now() - timedelta(hours=1))
    created = api.post("/api/v1/models/", body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert created.status_code == 201, created.content
    assert IdempotencyKey.objects.get(key="k").status_code == 201
