"""Request → gates → second-person approval → image built on the real Docker engine, pushed to the
real registry, digest recorded and verified — through the API. And the build faults."""
from __future__ import annotations

import uuid

import pytest
import requests

from registry.models import AuditEvent
from releases.models import Release

pytestmark = pytest.mark.docker


@pytest.fixture
def build_settings(settings, standin_base, registry_addr):  # type: ignore[no-untyped-def]
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
                                  "QUEUES": ["default", "gpu", "cpu", "deploy"]}}
    settings.SERVING_BASE_IMAGE = standin_base
    settings.IMAGE_REGISTRY = registry_addr
    settings.IMAGE_NAMESPACE = f"modelyard-test-{uuid.uuid4().hex[:8]}"
    settings.DOCKER_HOST = ""
    return settings


def approve(api, bob_api, release_id, capture):  # type: ignore[no-untyped-def]
    api.post(f"/api/v1/releases/{release_id}/submit/")
    with capture(execute=True):
        response = bob_api.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "ship"}, format="json")
    assert response.status_code == 200, response.content
    return Release.objects.get(pk=release_id)


def new_release(api):  # type: ignore[no-untyped-def]
    response = api.post("/api/v1/releases/", {"model": "digits", "version": 1, "environment": "production"},
                        format="json")
    assert response.status_code == 201
    return response.json()["id"]


@pytest.mark.django_db
def test_approved_release_gets_a_pushed_verified_image(api, bob_api, versions, build_settings, docker_client,
                                                       django_capture_on_commit_callbacks):
    release_id = new_release(api)
    release = approve(api, bob_api, release_id, django_capture_on_commit_callbacks)
    assert release.state == "image_ready", (release.failure_reason, release.build_log[-2000:])
    repository = f"{build_settings.IMAGE_REGISTRY}/{build_settings.IMAGE_NAMESPACE}/digits"
    assert release.image_repository == repository and release.image_tag == "1"
    assert release.image_digest.startswith("sha256:") and release.image_size > 0
    manifest = requests.get(f"http://{build_settings.IMAGE_REGISTRY}/v2/{build_settings.IMAGE_NAMESPACE}/digits/"
                            "manifests/1", headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                            timeout=10)
    assert manifest.headers["Docker-Content-Digest"] == release.image_digest
    labels = docker_client.api.inspect_image(release.image_id)["Config"]["Labels"]
    assert labels["io.modelyard.model"] == "digits" and labels["io.modelyard.version"] == "1"
    assert labels["io.modelyard.model-sha256"] == release.version.artifact_sha256
    assert labels["io.modelyard.release"] == str(release.pk)
    detail = api.get(f"/api/v1/releases/{release_id}/").json()
    assert detail["image"]["digest"] == release.image_digest and "Successfully" in detail["build_log"]
    assert [e["action"] for e in detail["audit_trail"]] == [
        "release.create", "release.submit", "release.approve", "release.build_start", "release.image_ready"]
    docker_client.api.remove_image(release.image_id, force=True)


@pytest.mark.django_db
@pytest.mark.parametrize("fault, expected, retryable", [
    ("engine", "unreachable", True),
    ("push", "5999", True),
    ("base", "MODELYARD_SERVING_BASE_IMAGE", None),
])
def test_build_faults_fail_the_release_clearly_and_change_nothing_else(
        api, bob_api, versions, build_settings, fault, expected, retryable, django_capture_on_commit_callbacks):
    if fault == "engine":
        build_settings.DOCKER_HOST = "unix:///nonexistent/docker.sock"
    elif fault == "push":
        build_settings.IMAGE_REGISTRY = "127.0.0.1:5999"  # nothing listens: the push is refused
        build_settings.IMAGE_REGISTRY_USERNAME, build_settings.IMAGE_REGISTRY_PASSWORD = "ci", "hunter2-secret"
    else:
        build_settings.SERVING_BASE_IMAGE = f"modelyard-test/no-such-base:{uuid.uuid4().hex[:6]}"
    release_id = new_release(api)
    release = approve(api, bob_api, release_id, django_capture_on_commit_callbacks)
    assert release.state == "failed" and release.failure_step == "build"
    assert expected in release.failure_reason
    if retryable is not None:
        assert release.retryable is retryable
    assert (release.image_digest, release.image_id) == ("", "")
    assert release.gates_passed is True and release.approvals.count() == 1  # nothing else changed
    assert "hunter2-secret" not in release.failure_reason + release.build_log
    body = api.get(f"/api/v1/releases/{release_id}/").json()
    assert body["failure"]["step"] == "build" and "hunter2-secret" not in str(body)
    assert AuditEvent.objects.filter(action="release.fail", object_id=str(release_id)).count() == 1


@pytest.mark.django_db
def test_a_failed_build_is_retried_through_the_api(api, bob_api, versions, build_settings,
                                                   django_capture_on_commit_callbacks):
    build_settings.DOCKER_HOST = "unix:///nonexistent/docker.sock"
    release_id = new_release(api)
    assert approve(api, bob_api, release_id, django_capture_on_commit_callbacks).state == "failed"
    build_settings.DOCKER_HOST = ""
    with django_capture_on_commit_callbacks(execute=True):
        retry = api.post(f"/api/v1/releases/{release_id}/build/")
    assert retry.status_code == 200
    release = Release.objects.get(pk=release_id)
    assert release.state == "image_ready" and release.image_digest.startswith("sha256:")
    assert release.failure_reason == ""
