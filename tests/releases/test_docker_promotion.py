"""A release promoted to a `docker` endpoint on the real engine, end to end through the API:
request → approval → image build+push → container beside the old one → verified through the
official gRPC client → rolled back; and a 10 % canary through the API, counted by a gRPC and a
REST client at the router's fixed address (`manage.py route_endpoint`), completed or rolled back,
then the endpoint's next release.

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
from releases.models import Endpoint, Environment, Promotion, Release
from releases.router import serve
from releases.tfserving import TFServingClient
from releases.deploy.standin_image import harness_mount_specs
from releases.traffic import RestTraffic, Traffic

pytestmark = pytest.mark.docker


def free_base() -> int:
    while True:
        base = random.randrange(20000, 40000, 6)
        if all(port_free(base + i) for i in range(6)):
            return base


@pytest.fixture
def docker_endpoint(settings, harness_base, docker_client):  # type: ignore[no-untyped-def]
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
                                  "QUEUES": ["default", "gpu", "cpu", "deploy"]}}
    settings.SERVING_BASE_IMAGE = harness_base
    settings.IMAGE_REGISTRY = "127.0.0.1:5000"
    settings.IMAGE_NAMESPACE = f"modelyard-test-{uuid.uuid4().hex[:8]}"
    settings.PROMOTION_DEADLINE = 180
    endpoint = Endpoint.objects.create(
        name=f"gpu-{uuid.uuid4().hex[:6]}", environment=Environment.objects.get(name="production"), kind="docker",
        grpc_port_base=free_base(), profile={"gpu": False, "mounts": harness_mount_specs()})
    yield endpoint
    for container in docker_client.containers.list(all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint.name}"}):
        container.remove(force=True)
    prefix = f"{settings.IMAGE_REGISTRY}/{settings.IMAGE_NAMESPACE}/"  # this test's release images
    for image in docker_client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix):
                docker_client.images.remove(tag, force=True)


def image_ready(api, bob_api, version, capture, override=""):  # type: ignore[no-untyped-def]
    """Request, submit, approve (builds and pushes the image) through the API: the release."""
    release_id = api.post("/api/v1/releases/", {"model": "digits", "version": version, "environment": "production"},
                          format="json").json()["id"]
    api.post(f"/api/v1/releases/{release_id}/submit/")
    with capture(execute=True):
        bob_api.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "ok", "override_reason": override},
                     format="json")
    release = Release.objects.get(pk=release_id)
    assert release.state == "image_ready", (release.failure_reason, release.build_log[-1500:])
    return release


def ship(api, bob_api, version, capture, override="", canary_weight=None):  # type: ignore[no-untyped-def]
    """``image_ready``, then promote through the API. With ``canary_weight`` the promotion is
    ``{"canary": true, "weight": canary_weight}``."""
    release = image_ready(api, bob_api, version, capture, override)
    release_id = release.pk
    with capture(execute=True):
        response = api.post(f"/api/v1/releases/{release_id}/promote/",
                            {"canary": True, "weight": canary_weight} if canary_weight else {}, format="json")
    assert response.status_code == 200
    release.refresh_from_db()
    assert release.state == ("canary" if canary_weight else "live"), (release.failure_step, release.failure_reason)
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


def registered_answers(version, x: np.ndarray, workdir) -> np.ndarray:  # type: ignore[no-untyped-def]
    """What ``version``'s registered SavedModel answers to ``x`` (REST predict answers name no
    version, so the REST client tells versions apart by these)."""
    import tensorflow as tf

    from registry import services as registry

    path = registry.version_unpack(version, workdir / f"v{version.number}")
    outputs = tf.saved_model.load(str(path)).signatures["serving_default"](features=tf.constant(x))
    return next(iter(outputs.values())).numpy()


def start_router(endpoint: Endpoint, storage_root, log_path):  # type: ignore[no-untyped-def]
    """``manage.py route_endpoint`` as its own process, as deployed: the endpoint's fixed gRPC and
    REST addresses."""
    from tests.processes import free_port, start_manage, wait_for

    grpc_address, rest_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = start_manage(["route_endpoint", endpoint.name, "--listen", grpc_address, "--rest-listen", rest_address],
                           storage_root=storage_root, log_path=log_path)

    def answers() -> bool:
        with TFServingClient(grpc_address, timeout=2) as client:
            return client.reachable()

    wait_for(answers, timeout=60, what=f"the router on {grpc_address} (log: {log_path})")
    return process, grpc_address, f"http://{rest_address}"


@pytest.mark.django_db(transaction=True)  # the router is a process of its own: it reads the committed endpoint
@pytest.mark.parametrize("ending", ["complete", "rollback"])
def test_a_canary_at_10_percent_splits_the_fixed_address_then_completes_or_rolls_back_without_a_failed_call(
        ending, api, bob_api, versions, docker_endpoint, storage_root, tmp_path, django_capture_on_commit_callbacks):
    """``{"canary": true, "weight": 10}`` through the API on real containers: a gRPC and a REST
    client at the router's fixed addresses count where their calls went before, during and after.

    Tolerance: the router's split is deterministic per protocol (the n-th canary-routed request goes
    to the canary when floor(n * 10 / 100) grows), so of k consecutive calls, floor(k/10) or
    ceil(k/10) reach v2. The window is cut on the client's send times: calls sent after the promote
    call returned (the route file was already rewritten) and before the complete/rollback call
    started; each client has one call in flight, so at most one call at the far edge may have been
    routed by the next route. Hence |calls to v2 - k/10| <= 2."""
    from tests.processes import stop

    capture = django_capture_on_commit_callbacks
    first = ship(api, bob_api, 1, capture)
    health = api.get(f"/api/v1/endpoints/{docker_endpoint.name}/").json()  # checked after the switch, on v1's container
    assert (health["reachable"], health["health_error"]) == (True, ""), health
    x = np.ones((1, 8), np.float32)
    answers = {v.number: registered_answers(v, x, tmp_path) for v in versions}
    assert not np.allclose(answers[1], answers[2], rtol=1e-4, atol=1e-5)  # distinguishable by their answers

    def identify(predictions) -> int | None:  # type: ignore[no-untyped-def]
        return next((n for n, a in answers.items() if np.allclose(predictions, a, rtol=1e-4, atol=1e-5)), None)

    router, grpc_address, rest_url = start_router(docker_endpoint, storage_root, tmp_path / "router.log")
    try:
        with Traffic(grpc_address, "digits", x, input_name="features") as grpc_calls, \
                RestTraffic(rest_url, "digits", x, identify=identify) as rest_calls:
            clients = {"gRPC": grpc_calls, "REST": rest_calls}
            started = time.monotonic()
            for calls in clients.values():
                calls.wait_calls(20, since=started)
            promoting = time.monotonic()
            second = ship(api, bob_api, 2, capture, override="smaller wins", canary_weight=10)
            promoted = time.monotonic()
            for calls in clients.values():
                calls.wait_calls(300, since=promoted)
            ending_at = time.monotonic()
            ended_response = api.post(f"/api/v1/releases/{second.pk}/{ending}/", {"comment": "canary verdict"},
                                      format="json")
            ended = time.monotonic()
            for calls in clients.values():
                calls.wait_calls(100, since=ended)
    finally:
        stop(router)

    after_version = 2 if ending == "complete" else 1
    for protocol, calls in clients.items():
        assert calls.failures() == [], (protocol, calls.failures()[:5])
        assert set(calls.served(until=promoting)) == {1}, protocol
        assert set(calls.served(promoting, promoted)) <= {1, 2}, protocol  # a build, a container start, a switch
        during = calls.served(promoted, ending_at)
        to_canary = during.count(2)
        print(f"{ending}: {protocol} {to_canary}/{len(during)} calls to the 10 % canary, "
              f"{len(calls.log)} calls in all, 0 failed")
        assert during.count(1) + to_canary == len(during) and abs(to_canary - len(during) / 10) <= 2, \
            (protocol, to_canary, len(during))
        assert set(calls.served(ended)) == {after_version}, (protocol, ending)

    # What the API, the rows and the route file say.
    promotion = api.get(f"/api/v1/releases/{second.pk}/").json()["promotions"][0]
    assert (promotion["canary"], promotion["canary_weight"], promotion["previous_version"]) == (True, 10, 1)
    assert ended_response.status_code == 200
    assert ended_response.json()["state"] == ("live" if ending == "complete" else "rolled_back")
    first.refresh_from_db()
    assert first.state == ("superseded" if ending == "complete" else "live")
    route = route_of(docker_endpoint)
    assert "canary" not in route and route["version"] == after_version
    assert served(docker_endpoint) == after_version

    # The endpoint takes the next release: its new container needs ports that neither the active
    # container nor the one kept for rollback holds.
    other = 3 - after_version
    ship(api, bob_api, other, capture, override="next release")
    assert served(docker_endpoint) == other


@pytest.mark.django_db(transaction=True)  # a real deploy worker (its own process) runs the promotion
def test_a_promotion_whose_worker_is_killed_mid_start_is_reaped_back_to_what_served_before(
        api, bob_api, versions, docker_endpoint, docker_client, storage_root, tmp_path, settings,
        django_capture_on_commit_callbacks):
    """SIGKILL to the deploy worker while the new container boots (step `start` done, `available`
    waiting): the promotion stays `running`, the route on v1. The scheduled reaper (`reap_jobs`)
    finds it by its stale heartbeat, removes the dead promotion's container, fails the release,
    retryable, with the reason; a retry then promotes it."""
    import signal

    from django.core.management import call_command
    from django_tasks_db.models import DBTaskResult

    from config import settings as project_settings
    from registry.models import AuditEvent
    from releases.deploy.containers import LABEL_RELEASE
    from tests.processes import start_worker, stop, wait_for

    capture = django_capture_on_commit_callbacks
    ship(api, bob_api, 1, capture)
    docker_endpoint.refresh_from_db()
    v1_container = docker_endpoint.active_container_id
    second = image_ready(api, bob_api, 2, capture, override="smaller wins")

    settings.TASKS = project_settings.TASKS  # the database backend: the worker process takes the task
    worker = start_worker(storage_root=storage_root, log_path=tmp_path / "worker.log", queues="deploy")
    try:
        assert api.post(f"/api/v1/releases/{second.pk}/promote/", {}, format="json").status_code == 200
        def booting() -> Promotion | None:
            promotion = Promotion.objects.filter(release=second).first()
            return promotion if promotion and any(s["step"] == "start" for s in promotion.steps) else None

        promotion = wait_for(booting, timeout=120, what=f"the new container to start (log: {tmp_path / 'worker.log'})")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        stop(worker)
    labelled = {"label": f"{LABEL_RELEASE}={second.pk}"}
    assert len(docker_client.containers.list(all=True, filters=labelled)) == 1  # left booting by the dead worker
    time.sleep(3)
    settings.OPTIMIZATION_HEARTBEAT_TIMEOUT = 2
    assert api.get(f"/api/v1/releases/{second.pk}/").json()["state"] == "promoting"  # reads never reap

    call_command("reap_jobs")  # what the scheduler's `reap_jobs --loop` does

    second.refresh_from_db()
    assert (second.state, second.retryable) == ("failed", True)
    assert second.failure_step == f"promote:{docker_endpoint.name}:start"
    assert "stopped after step 'start'" in second.failure_reason
    assert "serves what it served before" in second.failure_reason
    promotion.refresh_from_db()
    assert promotion.state == "failed" and promotion.steps[-1]["step"] == "restore"
    assert docker_client.containers.list(all=True, filters=labelled) == []
    assert route_of(docker_endpoint)["container_id"] == v1_container and served(docker_endpoint) == 1
    assert AuditEvent.objects.filter(action="release.fail", object_id=str(second.pk),
                                     comment__contains="no heartbeat").count() == 1
    assert DBTaskResult.objects.get(task_path="releases.tasks.promote_release").status == "FAILED"
    assert Promotion.objects.filter(state="running").count() == 0
    call_command("reap_jobs")  # reaping is idempotent
    assert AuditEvent.objects.filter(action="release.fail", object_id=str(second.pk)).count() == 1

    # Retryable: promoting again (in this process now) puts v2 live beside v1.
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
                                  "QUEUES": project_settings.TASKS["default"]["QUEUES"]}}
    with capture(execute=True):
        retried = api.post(f"/api/v1/releases/{second.pk}/promote/", {}, format="json")
    assert retried.status_code == 200 and retried.json()["state"] == "live", retried.json()
    assert served(docker_endpoint) == 2
