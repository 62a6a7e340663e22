"""A release promoted to a `docker` endpoint on the real engine, end to end through the API:
request → approval → image build+push → container beside the old one → verified through the
official gRPC client → rolled back.

TEST HARNESS: the image's base is `harness_base` (tests/releases/container_fixtures.py), which
runs our `serving` module with the host's Python bind-mounted read-only, standing in for the TF
Serving GPU image that production uses. Everything else is the product path."""
from __future__ import annotations

import json
import random
import time
import uuid

import numpy as np
import pytest
from django.db import connection  # noqa: F401

from releases.promotion import route_path
from releases.deploy.containers import LABEL_ENDPOINT, port_free
from releases.models import Endpoint, Environment, Release
from releases.router import serve
from releases.tfserving import TFServingClient
from tests.releases.container_fixtures import harness_mounts
from releases.traffic import Traffic

pytestmark = pytest.mark.docker


def free_base() -> int:
    while True:
        base = random.randrange(20000, 40000, 4)
        if all(port_free(base + i) for i in range(4)):
            return base


@pytest.fixture
def docker_endpoint(settings, harness_base, docker_client):  # type: ignore[no-untyped-def]
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
                                  "QUEUES": ["default", "gpu", "cpu", "deploy"]}}
    settings.SERVING_BASE_IMAGE = harness_base
    settings.IMAGE_REGISTRY = "127.0.0.1:5000"
    settings.IMAGE_NAMESPACE = f"modelyard-test-{uuid.uuid4().hex[:8]}"
    settings.PROMOTION_DEADLINE = 180
    mounts = [{"source": m["Source"], "target": m["Target"], "read_only": True} for m in harness_mounts()]
    endpoint = Endpoint.objects.create(
        name=f"gpu-{uuid.uuid4().hex[:6]}", environment=Environment.objects.get(name="production"), kind="docker",
        grpc_port_base=free_base(), profile={"gpu": False, "mounts": mounts})
    yield endpoint
    for container in docker_client.containers.list(all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint.name}"}):
        container.remove(force=True)


def ship(api, bob_api, version, capture, override=""):  # type: ignore[no-untyped-def]
    release_id = api.post("/api/v1/releases/", {"model": "digits", "version": version, "environment": "production"},
                          format="json").json()["id"]
    api.post(f"/api/v1/releases/{release_id}/submit/")
    with capture(execute=True):
        bob_api.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "ok", "override_reason": override},
                     format="json")
    release = Release.objects.get(pk=release_id)
    assert release.state == "image_ready", (release.failure_reason, release.build_log[-1500:])
    with capture(execute=True):
        response = api.post(f"/api/v1/releases/{release_id}/promote/", {}, format="json")
    assert response.status_code == 200
    release.refresh_from_db()
    assert release.state == "live", (release.failure_step, release.failure_reason)
    return release


def served(endpoint: Endpoint) -> int:
    endpoint.refresh_from_db()
    with TFServingClient(endpoint.grpc_target, timeout=10) as client:
        _, version = client.predict("digits", {"features": np.ones((1, 8), np.float32)}, label="stable")
    return version


def route_of(endpoint: Endpoint) -> dict:
    return json.loads(route_path(endpoint.name).read_text())


@pytest.mark.django_db
def test_release_runs_as_a_container_verified_and_rolled_back(api, bob_api, versions, docker_endpoint,
                                                              docker_client, django_capture_on_commit_callbacks):
    first = ship(api, bob_api, 1, django_capture_on_commit_callbacks)
    assert served(docker_endpoint) == 1
    v1_container = docker_endpoint.active_container_id
    labels = docker_client.containers.get(v1_container).labels
    assert labels["io.modelyard.release"] == str(first.pk) and labels["io.modelyard.version"] == "1"
    detail = api.get(f"/api/v1/endpoints/{docker_endpoint.name}/").json()
    assert detail["route_file"] == str(route_path(docker_endpoint.name))
    assert route_of(docker_endpoint) == {"grpc_target": docker_endpoint.grpc_target, "rest_url": docker_endpoint.rest_url,
                                         "container_id": v1_container, "version": 1,
                                         "active_container_id": v1_container, "previous_container_id": ""}

    # Clients of the router's one fixed address follow the switch and the rollback, error-free.
    router, handler = serve("127.0.0.1:0", route_path(docker_endpoint.name))
    x = np.ones((1, 8), np.float32)
    try:
        with Traffic(f"127.0.0.1:{router.port}", "digits", x, input_name="features") as traffic:
            second = ship(api, bob_api, 2, django_capture_on_commit_callbacks, override="smaller wins")
            assert served(docker_endpoint) == 2
            v2_container = docker_endpoint.active_container_id
            assert docker_endpoint.previous_container_id == v1_container
            assert docker_client.containers.get(v1_container).status == "running"  # kept for rollback
            traffic.first_seen(2, after=0, timeout=10)
            rolled = api.post(f"/api/v1/releases/{second.pk}/rollback/", {"comment": "bad canary"}, format="json")
            switched_back = time.monotonic()
            traffic.first_seen(1, after=switched_back, timeout=10)
    finally:
        router.stop(grace=None)
        handler.close()
    assert traffic.failures() == [] and len(traffic.log) > 20
    served_versions = [version for _, version, _ in traffic.log]
    assert [b for a, b in zip(served_versions, served_versions[1:]) if a != b] == [2, 1]

    first.refresh_from_db()
    assert first.state == "live"  # superseded by v2, live again after the rollback
    assert rolled.status_code == 200 and rolled.json()["state"] == "rolled_back"
    assert served(docker_endpoint) == 1
    assert (docker_endpoint.active_container_id, docker_endpoint.previous_container_id) == (v1_container, v2_container)
    assert route_of(docker_endpoint)["container_id"] == v1_container and route_of(docker_endpoint)["version"] == 1
