"""Promotion through the API to a real `python -m serving` process (gRPC), with rollback, canary,
health, and faults that must leave the endpoint serving what it served before."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from metrics.models import VersionMetrics
from registry.models import AuditEvent
from releases.models import Endpoint, Environment, Promotion, Release


@pytest.fixture
def server(launch_server):  # type: ignore[no-untyped-def]
    return launch_server(0)


@pytest.fixture
def ready(alice, artifacts, server, tmp_path, settings):  # type: ignore[no-untyped-def]
    """A model (unique name) with v1, v2 (different weights), an eval dataset, an endpoint on the
    server (its directory an allowed serving root), and a function making an image-ready
    production release of a version."""
    settings.SERVING_ROOTS = [str(server.root)]
    from registry import services
    from registry.uploads import StagedFile
    from tests import factories

    name = f"m{uuid.uuid4().hex[:8]}"
    model = services.model_create(name=name, owner=alice, task="classification")
    v1 = services.version_create(model=model, staged=StagedFile.from_path(artifacts["zip"]), actor=alice)
    v2 = services.version_create(model=model, staged=StagedFile.from_path(artifacts["zip2"]), actor=alice)
    path = tmp_path / "eval.npz"
    path.write_bytes(factories.npz_bytes(x=np.random.default_rng(0).normal(size=(16, 8)).astype("float32"),
                                         y=np.zeros(16, "int64")))
    services.dataset_create(model=model, staged=StagedFile.from_path(path), role="eval", actor=alice)
    endpoint = Endpoint.objects.create(name=f"ep-{name}", environment=Environment.objects.get(name="production"),
                                      kind="model_repository", grpc_target=f"127.0.0.1:{server.grpc_port}",
                                      repository_path=str(server.base_dir), config_path=str(server.config_path))

    def image_ready(version):  # type: ignore[no-untyped-def]
        # The image build is covered by test_builds (real engine); promotion starts from image_ready.
        release = Release.objects.create(version=version, environment=endpoint.environment, requester=alice,
                                         state="image_ready")
        return release

    return {"model": model, "v1": v1, "v2": v2, "endpoint": endpoint, "image_ready": image_ready, "server": server}


def stable_version(server, model_name):  # type: ignore[no-untyped-def]
    outputs, served = server.client.predict(model_name, {"features": np.ones((1, 8), np.float32)}, label="stable")
    return served


def promote(api, release, django_capture_on_commit_callbacks, **body):  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/releases/{release.pk}/promote/", body, format="json")
    release.refresh_from_db()
    return response


@pytest.mark.django_db
def test_promote_then_promote_again_then_roll_back(api, ready, immediate, django_capture_on_commit_callbacks):
    name, server = ready["model"].name, ready["server"]
    first = ready["image_ready"](ready["v1"])
    response = promote(api, first, django_capture_on_commit_callbacks)
    assert response.status_code == 200, response.content
    assert first.state == "live", (first.failure_step, first.failure_reason)
    assert stable_version(server, name) == 1
    promotion = Promotion.objects.get(release=first)
    assert promotion.state == "succeeded" and promotion.previous_version is None
    steps = [s["step"] for s in promotion.steps]
    assert steps[0] == "verify" and "validate" in steps and steps[-1] == "done"
    assert AuditEvent.objects.filter(action="release.promotion_step", object_id=str(first.pk)).count() == len(steps)

    second = ready["image_ready"](ready["v2"])
    promote(api, second, django_capture_on_commit_callbacks)
    assert second.state == "live"
    first.refresh_from_db()
    assert first.state == "superseded"
    assert stable_version(server, name) == 2
    assert Promotion.objects.get(release=second).previous_version == 1

    health = api.get(f"/api/v1/endpoints/{ready['endpoint'].name}/?refresh=1").json()
    assert health["reachable"] is True and health["route_file"] is None  # a repository endpoint needs no router
    assert health["health"][name]["labels"]["stable"] == 2
    assert health["health"][name]["versions"] == {"1": "AVAILABLE", "2": "AVAILABLE"}

    rolled = api.post(f"/api/v1/releases/{second.pk}/rollback/", {"comment": "latency spike"}, format="json")
    assert rolled.status_code == 200 and rolled.json()["state"] == "rolled_back"
    assert stable_version(server, name) == 1
    first.refresh_from_db()
    assert first.state == "live"
    assert AuditEvent.objects.get(action="release.rollback").comment == "latency spike"


@pytest.mark.django_db
def test_canary_then_complete(api, ready, immediate, django_capture_on_commit_callbacks):
    name, server = ready["model"].name, ready["server"]
    first = ready["image_ready"](ready["v1"])
    promote(api, first, django_capture_on_commit_callbacks)
    second = ready["image_ready"](ready["v2"])
    promote(api, second, django_capture_on_commit_callbacks, canary=True)
    assert second.state == "canary"
    assert stable_version(server, name) == 1
    _, served = server.client.predict(name, {"features": np.ones((1, 8), np.float32)}, label="canary")
    assert served == 2
    done = api.post(f"/api/v1/releases/{second.pk}/complete/")
    assert done.status_code == 200 and done.json()["state"] == "live"
    assert stable_version(server, name) == 2


@pytest.mark.django_db
def test_wrong_answers_fail_the_promotion_and_leave_the_endpoint_as_it_was(
        api, ready, immediate, django_capture_on_commit_callbacks):
    name, server = ready["model"].name, ready["server"]
    first = ready["image_ready"](ready["v1"])
    promote(api, first, django_capture_on_commit_callbacks)
    config_before = server.config_path.read_text()
    # Record samples for v2 that are really v1's answers: the endpoint will answer differently.
    eval_ds = ready["model"].datasets.get()
    x = np.ones((2, 8), np.float32)
    _, _ = server.client.predict(name, {"features": x}, label="stable")
    v1_out, _ = server.client.predict(name, {"features": x}, version=1)
    VersionMetrics.objects.create(version=ready["v2"], eval_dataset=eval_ds, metrics={}, samples={
        "inputs": x.tolist(), "outputs": np.asarray(next(iter(v1_out.values()))).tolist(), "input_name": "features",
        "output_name": "probs", "dtype": "float32"})
    second = ready["image_ready"](ready["v2"])
    promote(api, second, django_capture_on_commit_callbacks)
    assert second.state == "failed" and second.failure_step.endswith("validate")
    assert second.retryable is True and "answer" in second.failure_reason.lower()
    assert server.config_path.read_text() == config_before
    assert stable_version(server, name) == 1
    first.refresh_from_db()
    assert first.state == "live"
    assert not (server.base_dir / name / "2").exists()


@pytest.mark.django_db
def test_tampered_artifact_is_refused_before_anything_is_copied(api, ready, immediate,
                                                                django_capture_on_commit_callbacks):
    from registry.blobstore import artifact_store

    name, server = ready["model"].name, ready["server"]
    blob = artifact_store().blob_path(ready["v1"].artifact_sha256)
    blob.chmod(0o640)
    data = bytearray(blob.read_bytes())
    data[-200] ^= 0xFF
    blob.write_bytes(bytes(data))
    release = ready["image_ready"](ready["v1"])
    promote(api, release, django_capture_on_commit_callbacks)
    assert release.state == "failed" and "digest" in release.failure_reason
    assert release.retryable is False
    assert not (server.base_dir / name).exists()


@pytest.mark.django_db
def test_endpoint_down_fails_cleanly_and_can_be_retried(api, ready, immediate, django_capture_on_commit_callbacks):
    endpoint = ready["endpoint"]
    real_target = endpoint.grpc_target
    Endpoint.objects.filter(pk=endpoint.pk).update(grpc_target="127.0.0.1:9")  # nothing listens there
    release = ready["image_ready"](ready["v1"])
    promote(api, release, django_capture_on_commit_callbacks)
    assert release.state == "failed" and release.retryable
    assert release.failure_step.startswith(f"promote:{endpoint.name}")
    assert not (ready["server"].base_dir / ready["model"].name).exists()
    Endpoint.objects.filter(pk=endpoint.pk).update(grpc_target=real_target)
    retry = promote(api, release, django_capture_on_commit_callbacks)
    assert retry.status_code == 200 and release.state == "live"
    assert stable_version(ready["server"], ready["model"].name) == 1


@pytest.mark.django_db
def test_promote_needs_an_image_ready_release(api, ready):
    release = Release.objects.create(version=ready["v1"], environment=ready["endpoint"].environment,
                                     requester=ready["v1"].created_by)
    response = api.post(f"/api/v1/releases/{release.pk}/promote/", {}, format="json")
    assert response.status_code == 409 and "is draft" in response.json()["error"]["message"]
    assert not Promotion.objects.exists()


@pytest.mark.django_db
def test_endpoint_api_create_validates(operator_api, settings):
    bad = operator_api.post("/api/v1/endpoints/", {"name": "x", "environment": "staging", "kind": "model_repository",
                                                   "repository_path": "relative/path", "grpc_target": "h:1"},
                            format="json")
    assert bad.status_code == 400 and "absolute" in bad.json()["error"]["message"]
    repository = f"{settings.SERVING_ROOTS[0]}/staging"
    ok = operator_api.post("/api/v1/endpoints/", {"name": "local", "environment": "staging",
                                                  "kind": "model_repository", "repository_path": repository,
                                                  "grpc_target": "127.0.0.1:8500"}, format="json")
    assert ok.status_code == 201, ok.content
    assert ok.json()["serving_profile"]["batching"]["max_batch_size"] == 32
    assert ok.json()["repository_path"] == repository
    assert Endpoint.objects.get(name="local").config_path == f"{repository}/models.config"
    assert operator_api.get("/api/v1/endpoints/").json()["count"] == 1


@pytest.mark.django_db
def test_admin_promote_and_rollback_actions_call_the_same_services(client, django_user_model, ready, immediate,
                                                                   django_capture_on_commit_callbacks):
    from django.contrib.auth.models import Permission

    operator = django_user_model.objects.create_user("op", password="pw-op-12345", is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["change_release", "view_release",
                                                                           "view_endpoint"]))
    client.force_login(operator)
    release = ready["image_ready"](ready["v1"])
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/admin/releases/release/", {"action": "promote", "_selected_action": [release.pk]})
    release.refresh_from_db()
    assert release.state == "live" and stable_version(ready["server"], ready["model"].name) == 1
    response = client.post("/admin/releases/release/", {"action": "rollback", "_selected_action": [release.pk]},
                           follow=True)
    assert "nothing_to_roll_back" in response.content.decode() or "no version to roll back" in \
        response.content.decode()
    release.refresh_from_db()
    assert release.state == "live"  # a first release has nothing to roll back to: refused, unchanged
    page = client.get(f"/admin/releases/endpoint/{ready['endpoint'].pk}/change/")
    assert page.status_code == 200 and "stable→v1" in page.content.decode()


@pytest.mark.django_db
def test_a_signature_change_fails_its_gate_before_approval_and_goes_live_only_with_an_override(
        api, bob_api, ready, immediate, tmp_path, django_capture_on_commit_callbacks):
    """v3 answers 4 classes where live v1 answers 3: the approver sees the failed gate with the
    difference spelled out; approved with a reason, the promotion reports the change instead of
    refusing it, and the release warns its clients."""
    from registry import services
    from registry.uploads import StagedFile
    from tests import factories

    name, server = ready["model"].name, ready["server"]
    first = ready["image_ready"](ready["v1"])
    promote(api, first, django_capture_on_commit_callbacks)
    assert first.state == "live"
    four = factories.zip_dir(factories.save_saved_model(tmp_path / "four", factories.tiny_keras_model(classes=4)),
                             tmp_path / "four.zip")
    v3 = services.version_create(model=ready["model"], staged=StagedFile.from_path(four), actor=first.requester)

    release_id = api.post("/api/v1/releases/", {"model": name, "version": v3.number, "environment": "production"},
                          format="json").json()["id"]
    submitted = api.post(f"/api/v1/releases/{release_id}/submit/")
    assert submitted.status_code == 200, submitted.content
    gate = next(g for g in submitted.json()["gates"] if g["gate"] == "signature_compatible")
    assert gate["passed"] is False and gate["threshold"] == "v1"
    assert gate["value"] == ["output 'probs' has shape [?, 4], live v1 has [?, 3]"]
    assert "breaks clients of live v1" in gate["message"]

    refused = bob_api.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "ok"}, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "gates_failed"
    approved = bob_api.post(f"/api/v1/releases/{release_id}/approve/",
                            {"comment": "ok", "override_reason": "clients move to 4 classes on Monday"}, format="json")
    assert approved.status_code == 200, approved.content
    release = Release.objects.get(pk=release_id)
    Release.objects.filter(pk=release_id).update(state="image_ready")  # the build is test_builds' business

    assert promote(api, release, django_capture_on_commit_callbacks).status_code == 200
    assert release.state == "live", (release.failure_step, release.failure_reason)
    assert stable_version(server, name) == v3.number
    validate = next(s for s in Promotion.objects.get(release=release).steps if s["step"] == "validate")
    assert "signature change approved: output 'probs' has shape [?, 4], version 1 has [?, 3]" in validate["message"]
    detail = api.get(f"/api/v1/releases/{release_id}/").json()
    assert detail["warnings"] == ["This release changes the serving signature (approved: clients move to 4 classes "
                                  "on Monday); clients of the previous version must adapt: output 'probs' has shape "
                                  "[?, 4], live v1 has [?, 3]"]
    assert api.get(f"/api/v1/releases/{first.pk}/").json()["warnings"] == []


@pytest.mark.django_db
def test_an_endpoint_failing_a_rollback_is_a_500_with_its_message_in_the_api_and_the_admin(
        api, client, django_user_model, ready, immediate, django_capture_on_commit_callbacks):
    """An EndpointError raised inside the request (the rollback runs the driver there) is mapped by
    the one exception handler: status 500, code server_error, the endpoint's own message and the
    request id; the admin action shows the same message. Nothing changes."""
    from django.contrib.auth.models import Permission

    first, second = ready["image_ready"](ready["v1"]), ready["image_ready"](ready["v2"])
    promote(api, first, django_capture_on_commit_callbacks)
    promote(api, second, django_capture_on_commit_callbacks)
    assert second.state == "live"
    Endpoint.objects.filter(pk=ready["endpoint"].pk).update(grpc_target="127.0.0.1:9")  # nothing listens there

    response = api.post(f"/api/v1/releases/{second.pk}/rollback/", {"comment": "spike"}, format="json",
                        HTTP_X_REQUEST_ID="rollback-1")
    error = response.json()["error"]
    assert response.status_code == 500 and error["code"] == "server_error", response.content
    assert "127.0.0.1:9" in error["message"] and error["request_id"] == "rollback-1"
    assert "Quote request id rollback-1" in error["message"]

    operator = django_user_model.objects.create_user("op", password="pw-op-12345", is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["change_release", "view_release"]))
    client.force_login(operator)
    page = client.post("/admin/releases/release/", {"action": "rollback", "_selected_action": [second.pk]},
                       follow=True)
    shown = error["message"].split(" Quote request id")[0]
    assert page.status_code == 200 and f"Release {second.pk}: {shown}" in page.content.decode()
    second.refresh_from_db()
    assert second.state == "live" and stable_version(ready["server"], ready["model"].name) == 2


# --- a rollback to a version no longer on the endpoint: re-staged by the deploy worker ----------

def live_then_retired(api, ready, capture):  # type: ignore[no-untyped-def]
    """v1 live, then v2 live over it; then v1 retired from the endpoint (its directory deleted, as
    the repository engine's `retire` does): rolling v2 back needs v1 staged again."""
    from releases import promotion as service
    from releases.deploy import repository_engine as engine

    first, second = ready["image_ready"](ready["v1"]), ready["image_ready"](ready["v2"])
    promote(api, first, capture)
    promote(api, second, capture)
    first.refresh_from_db()
    assert (first.state, second.state) == ("superseded", "live")
    name, server = ready["model"].name, ready["server"]
    engine.retire(service.driver(ready["endpoint"]).repository(), name, {2}, delete_dirs=True)
    assert not (server.base_dir / name / "1").exists()
    return first, second


def rollback_queued(api, release, capture, comment="latency spike"):  # type: ignore[no-untyped-def]
    """POST rollback; the deploy task it enqueues on commit is returned, not run (webhooks, if
    any, are not sent)."""
    with capture(execute=False) as callbacks:
        response = api.post(f"/api/v1/releases/{release.pk}/rollback/", {"comment": comment}, format="json")
    assert response.status_code == 202, response.content
    (enqueue,) = [c for c in callbacks if c.__qualname__.startswith("_queue_restage")]
    return response, enqueue


@pytest.mark.django_db
def test_a_rollback_to_a_retired_version_is_accepted_then_the_deploy_worker_stages_it_again(
        api, alice, ready, immediate, settings, django_capture_on_commit_callbacks):
    from integrations import webhooks
    from integrations.models import WebhookDelivery

    name, server, endpoint = ready["model"].name, ready["server"], ready["endpoint"]
    first, second = live_then_retired(api, ready, django_capture_on_commit_callbacks)
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    webhooks.subscription_create(owner=alice, url="http://127.0.0.1:9/x",
                                 events=["release.rolling_back", "release.rolled_back"])

    response, run_task = rollback_queued(api, second, django_capture_on_commit_callbacks)
    assert response.json()["state"] == "rolling_back"
    second.refresh_from_db()
    assert second.state == "rolling_back"
    assert Promotion.objects.get(release=second).state == "rolling_back"
    asked = AuditEvent.objects.get(action="release.rollback_requested", object_id=str(second.pk))
    assert asked.actor == alice and asked.comment == "latency spike"
    assert asked.after == {"state": "rolling_back", "restage": {endpoint.name: 1}}
    # The request staged nothing: v2 still serves, v1 is still gone.
    assert stable_version(server, name) == 2 and not (server.base_dir / name / "1").exists()
    again = api.post(f"/api/v1/releases/{second.pk}/rollback/", {"comment": "twice"}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
    assert "already rolling back" in again.json()["error"]["message"]
    assert api.get(f"/api/v1/releases/{second.pk}/").json()["state"] == "rolling_back"

    run_task()  # enqueue: the immediate backend runs the deploy task here

    second.refresh_from_db()
    first.refresh_from_db()
    assert (second.state, first.state) == ("rolled_back", "live"), (second.failure_step, second.failure_reason)
    assert stable_version(server, name) == 1
    assert (server.base_dir / name / "1" / ".modelyard-manifest.json").exists()
    promotion = Promotion.objects.get(release=second)
    assert promotion.state == "rolled_back" and promotion.worker == "" and promotion.error == ""
    steps = [s["step"] for s in promotion.steps]
    assert steps[steps.index("rollback"):][:2] == ["rollback", "verify"] and steps[-1] == "done"
    done = AuditEvent.objects.get(action="release.rollback", object_id=str(second.pk))
    assert done.actor == alice and done.comment == "latency spike"
    assert done.after == {"state": "rolled_back", "to_versions": [1]}
    endpoint.refresh_from_db()
    assert endpoint.health[name]["labels"]["stable"] == 1
    assert [(d.event, d.payload["object"]["state"]) for d in WebhookDelivery.objects.order_by("pk")] == [
        ("release.rolling_back", "rolling_back"), ("release.rolled_back", "rolled_back")]
    assert api.post(f"/api/v1/releases/{second.pk}/rollback/", {}, format="json").status_code == 409
    run_task()  # the task again (a redelivery): the release is no longer rolling back, nothing changes
    assert AuditEvent.objects.filter(action="release.rollback", object_id=str(second.pk)).count() == 1


@pytest.mark.django_db
def test_a_rollback_whose_re_stage_fails_ends_failed_with_the_reason_and_can_be_rolled_back_again(
        api, client, django_user_model, ready, immediate, django_capture_on_commit_callbacks):
    """v1's stored artifact no longer matches its digest: the worker refuses it, the release fails
    at rollback:<endpoint>:prepare, v2 keeps serving. Once the artifact is whole again, rolling
    back again (here from the admin, the same service) finishes the job."""
    from django.contrib.auth.models import Permission

    from registry.blobstore import artifact_store

    name, server, endpoint = ready["model"].name, ready["server"], ready["endpoint"]
    first, second = live_then_retired(api, ready, django_capture_on_commit_callbacks)
    blob = artifact_store().blob_path(ready["v1"].artifact_sha256)
    original = blob.read_bytes()
    blob.chmod(0o640)
    blob.write_bytes(original[:-200] + bytes(b ^ 0xFF for b in original[-200:]))

    _, run_task = rollback_queued(api, second, django_capture_on_commit_callbacks)
    run_task()

    second.refresh_from_db()
    assert second.state == "failed" and second.failure_step == f"rollback:{endpoint.name}:prepare"
    assert second.failure_reason.startswith(f"Staging v1 again on {endpoint.name} failed at prepare")
    assert "digest" in second.failure_reason and second.retryable is False
    promotion = Promotion.objects.get(release=second)
    assert promotion.state == "succeeded" and promotion.worker == "" and "digest" in promotion.error
    first.refresh_from_db()
    assert first.state == "superseded" and stable_version(server, name) == 2
    assert AuditEvent.objects.filter(action="release.fail", object_id=str(second.pk)).count() == 1
    cancel = api.post(f"/api/v1/releases/{second.pk}/cancel/", {"comment": "x"}, format="json")
    assert cancel.status_code == 409 and "roll it back again" in cancel.json()["error"]["message"]
    assert api.post(f"/api/v1/releases/{second.pk}/promote/", {}, format="json").status_code == 409

    blob.write_bytes(original)
    operator = django_user_model.objects.create_user("op", password="pw-op-12345", is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["change_release", "view_release"]))
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        page = client.post("/admin/releases/release/", {"action": "rollback", "_selected_action": [second.pk]},
                           follow=True)
    assert f"Release {second.pk}: rolling back." in page.content.decode()
    detail = client.get(f"/admin/releases/release/{second.pk}/change/").content.decode()
    assert "rolling_back" in detail or "Rolling Back" in detail
    callbacks[0]()
    second.refresh_from_db()
    assert second.state == "rolled_back" and second.failure_step == "" and second.failure_reason == ""
    first.refresh_from_db()
    assert first.state == "live" and stable_version(server, name) == 1


@pytest.mark.django_db(transaction=True)  # a real deploy worker (its own process) runs the re-stage
def test_a_re_stage_whose_worker_is_killed_is_reaped_to_failed_and_rolling_back_again_finishes(
        api, ready, immediate, storage_root, tmp_path, settings, django_capture_on_commit_callbacks):
    """SIGKILL to the deploy worker once it started staging v1 again (step `verify`, while it
    unpacks and loads TensorFlow for the samples): the release stays `rolling_back` until the
    scheduled reaper (`reap_jobs`) finds the stale heartbeat; then it is `failed`, retryable, at
    `rollback:<endpoint>:<last step>`, the endpoint still on v2. Rolling back again finishes."""
    import signal
    import time

    from django.core.management import call_command
    from django_tasks_db.models import DBTaskResult

    from config import settings as project_settings
    from tests.processes import start_worker, stop, wait_for

    name, server, endpoint = ready["model"].name, ready["server"], ready["endpoint"]
    first, second = live_then_retired(api, ready, django_capture_on_commit_callbacks)
    immediate_tasks, settings.TASKS = settings.TASKS, project_settings.TASKS  # the worker process takes it
    worker = start_worker(storage_root=storage_root, log_path=tmp_path / "worker.log", queues="deploy")
    try:
        assert api.post(f"/api/v1/releases/{second.pk}/rollback/", {"comment": "retired"},
                        format="json").status_code == 202

        def verifying() -> bool:  # the steps of v2's own promotion come first
            steps = [s["step"] for s in Promotion.objects.get(release=second).steps]
            restage = steps[steps.index("rollback") + 1:] if "rollback" in steps else []
            return bool(restage) and "done" not in restage  # `verify` lasts seconds: TensorFlow loads

        wait_for(verifying, timeout=120, what=f"the re-stage to start (log: {tmp_path / 'worker.log'})")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        stop(worker)
    time.sleep(3)
    settings.OPTIMIZATION_HEARTBEAT_TIMEOUT = 2
    assert api.get(f"/api/v1/releases/{second.pk}/").json()["state"] == "rolling_back"  # reads never reap

    call_command("reap_jobs")  # what the scheduler's `reap_jobs --loop` does

    second.refresh_from_db()
    assert (second.state, second.retryable) == ("failed", True)
    promotion = Promotion.objects.get(release=second)
    last = promotion.steps[-1]["step"]  # `verify`, unless the poll came late
    assert second.failure_step == f"rollback:{endpoint.name}:{last}"
    assert f"stopped after step '{last}'" in second.failure_reason and "no heartbeat" in second.failure_reason
    assert promotion.state == "succeeded" and promotion.worker == "" and "no heartbeat" in promotion.error
    assert DBTaskResult.objects.get(task_path="releases.tasks.rollback_release").status == "FAILED"
    assert stable_version(server, name) == 2
    call_command("reap_jobs")  # reaping is idempotent
    assert AuditEvent.objects.filter(action="release.fail", object_id=str(second.pk)).count() == 1

    settings.TASKS = immediate_tasks  # rolling back again, in this process now
    api.post(f"/api/v1/releases/{second.pk}/rollback/", {"comment": "again"}, format="json")
    second.refresh_from_db()
    first.refresh_from_db()
    assert (second.state, first.state) == ("rolled_back", "live"), second.failure_reason
    assert stable_version(server, name) == 1
