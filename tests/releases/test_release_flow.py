"""The release state machine through the API: gates, four-eyes approval, conflicts, audit."""
from __future__ import annotations

import threading

import pytest
from django.db import connection

from registry.models import AuditEvent
from releases import services
from releases.models import Approval, Environment, Release, ReleasePolicy


def create(api, version=1, environment="production", notes="ship it"):  # type: ignore[no-untyped-def]
    return api.post("/api/v1/releases/", {"model": "digits", "version": version, "environment": environment,
                                          "notes": notes}, format="json")


@pytest.fixture
def no_builds(settings):  # type: ignore[no-untyped-def]
    """Approval enqueues an image build; these tests stop at `approved` (builds are in test_builds)."""
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.dummy.DummyBackend",
                                  "QUEUES": ["default", "gpu", "cpu", "deploy"]}}


@pytest.mark.django_db
def test_request_submit_approve_by_a_second_person(api, bob_api, versions, no_builds):
    created = create(api)
    assert created.status_code == 201, created.content
    release_id = created.json()["id"]
    assert created.json()["state"] == "draft"
    submitted = api.post(f"/api/v1/releases/{release_id}/submit/")
    assert submitted.status_code == 200 and submitted.json()["state"] == "pending_approval"
    body = submitted.json()
    assert body["gates_passed"] is True and body["baseline"] is None  # a first release has no baseline
    assert {g["gate"] for g in body["gates"]} == {"required_datasets", "max_accuracy_drop"}
    approved = bob_api.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "metrics look right"},
                            format="json")
    assert approved.status_code == 200, approved.content
    assert approved.json()["state"] == "approved"
    release = Release.objects.get(pk=release_id)
    assert release.decided_at is not None
    approval = Approval.objects.get(release=release)
    assert (approval.actor.username, approval.decision, approval.comment) == ("bob", "approve", "metrics look right")
    trail = [e["action"] for e in approved.json()["audit_trail"]]
    assert trail == ["release.create", "release.submit", "release.approve"]
    assert AuditEvent.objects.filter(object_type="releases.release", object_id=str(release_id)).count() == 3
    assert api.get(f"/api/v1/audit-events/?release={release_id}").json()["count"] == 3


@pytest.mark.django_db
def test_requester_cannot_approve_their_own_production_release(alice, versions, no_builds):
    from django.contrib.auth.models import Permission

    alice.user_permissions.add(Permission.objects.get(codename="approve_release"))
    alice = type(alice).objects.get(pk=alice.pk)  # drop the permission cache
    release = services.release_create(version=versions[0], environment=Environment.objects.get(name="production"),
                                      requester=alice)
    services.release_submit(release=release, actor=alice)
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(alice)
    response = client.post(f"/api/v1/releases/{release.pk}/approve/", {"comment": "lgtm"}, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "four_eyes"
    assert Release.objects.get(pk=release.pk).state == "pending_approval"
    assert not Approval.objects.exists()


@pytest.mark.django_db
def test_staging_lets_the_requester_approve_when_four_eyes_is_off(alice, versions, no_builds):
    from django.contrib.auth.models import Permission

    alice.user_permissions.add(Permission.objects.get(codename="approve_release"))
    alice = type(alice).objects.get(pk=alice.pk)
    release = services.release_create(version=versions[0], environment=Environment.objects.get(name="staging"),
                                      requester=alice)
    services.release_submit(release=release, actor=alice)
    assert services.release_approve(release=release, actor=alice, comment="self-serve staging").state == "approved"


@pytest.mark.django_db
def test_approving_needs_the_permission(api, versions, no_builds):
    release_id = create(api).json()["id"]
    api.post(f"/api/v1/releases/{release_id}/submit/")
    response = api.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "x"}, format="json")
    assert response.status_code == 403 and "approve_release" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_failing_gate_blocks_approval_unless_overridden_with_a_reason(api, bob_api, versions, no_builds):
    v1, v2 = versions
    # v2 lost 1.5 points against its parent; production allows 1.
    release_id = create(api, version=2).json()["id"]
    body = api.post(f"/api/v1/releases/{release_id}/submit/").json()
    assert body["gates_passed"] is False and body["baseline"] == 1
    [acc] = [g for g in body["gates"] if g["gate"] == "max_accuracy_drop"]
    assert acc["passed"] is False and acc["value"] == pytest.approx(0.015) and acc["threshold"] == 0.01
    assert "1.50 pt" in acc["message"]
    blocked = bob_api.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "ok"}, format="json")
    assert blocked.status_code == 409 and blocked.json()["error"]["code"] == "gates_failed"
    assert Release.objects.get(pk=release_id).state == "pending_approval"
    overridden = bob_api.post(f"/api/v1/releases/{release_id}/approve/",
                              {"comment": "ok", "override_reason": "5x smaller is worth 1.5 pt here"}, format="json")
    assert overridden.status_code == 200 and overridden.json()["state"] == "approved"
    assert overridden.json()["override_reason"] == "5x smaller is worth 1.5 pt here"
    assert Approval.objects.get().override_reason == "5x smaller is worth 1.5 pt here"
    event = AuditEvent.objects.get(action="release.approve")
    assert event.after["override_reason"] == "5x smaller is worth 1.5 pt here"


@pytest.mark.django_db
def test_gates_use_the_live_version_and_per_model_policy(api, versions, no_builds):
    v1, v2 = versions
    production = Environment.objects.get(name="production")
    live = services.release_create(version=v1, environment=production, requester=v1.created_by)
    Release.objects.filter(pk=live.pk).update(state="live")
    ReleasePolicy.objects.create(model=v1.model, environment=production, max_accuracy_drop=0.02,
                                 max_p95_latency_ms=0.5, min_size_reduction=4.0)
    release_id = create(api, version=2).json()["id"]
    gates = {g["gate"]: g for g in api.post(f"/api/v1/releases/{release_id}/submit/").json()["gates"]}
    assert gates["max_accuracy_drop"]["passed"] and gates["max_accuracy_drop"]["threshold"] == 0.02
    assert "for v1" in gates["max_accuracy_drop"]["message"]
    assert gates["max_p95_latency_ms"] == {"gate": "max_p95_latency_ms", "passed": True, "threshold": 0.5,
                                           "value": 0.3, "message": gates["max_p95_latency_ms"]["message"]}
    assert gates["min_size_reduction"]["passed"] and gates["min_size_reduction"]["value"] == 5.0
    assert Release.objects.get(pk=release_id).baseline == v1


@pytest.mark.django_db
def test_staging_auto_approves_when_every_gate_passes(api, versions, no_builds):
    Environment.objects.filter(name="staging").update(auto_approve=True)
    release_id = create(api, environment="staging").json()["id"]
    body = api.post(f"/api/v1/releases/{release_id}/submit/").json()
    assert body["state"] == "approved"
    assert [e["action"] for e in body["audit_trail"]][-1] == "release.approve"
    assert body["audit_trail"][-1]["actor"] is None and "Auto-approved" in body["audit_trail"][-1]["comment"]


@pytest.mark.django_db
def test_reject_needs_a_comment_and_is_final(api, bob_api, versions, no_builds):
    release_id = create(api).json()["id"]
    api.post(f"/api/v1/releases/{release_id}/submit/")
    assert bob_api.post(f"/api/v1/releases/{release_id}/reject/", {}, format="json").status_code == 400
    rejected = bob_api.post(f"/api/v1/releases/{release_id}/reject/", {"comment": "latency regression"},
                            format="json")
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    again = bob_api.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "changed my mind"}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["message"].startswith(f"Release {release_id} is rejected")
    assert again.json()["error"]["details"]["state"] == "rejected"


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["approve", "build"])
def test_invalid_transitions_are_409_naming_the_state(api, bob_api, versions, action, no_builds):
    release_id = create(api).json()["id"]
    client = bob_api if action == "approve" else api
    response = client.post(f"/api/v1/releases/{release_id}/{action}/", {"comment": "x"}, format="json")
    assert response.status_code == 409
    assert "is draft" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_keras_and_tflite_versions_are_not_servable(api, alice, artifacts, versions):
    from registry import services as registry
    from registry.uploads import StagedFile

    model = versions[0].model
    registry.version_create(model=model, staged=StagedFile.from_path(artifacts["keras"]), actor=alice)
    registry.version_create(model=model, staged=StagedFile.from_path(artifacts["tflite"]), actor=alice)
    keras = create(api, version=3)
    assert keras.status_code == 400 and "cannot serve" in keras.json()["error"]["message"]
    tflite = create(api, version=4)
    assert tflite.status_code == 400 and "prefer_tflite" in tflite.json()["error"]["message"]
    Environment.objects.filter(name="production").update(prefer_tflite=True)
    assert create(api, version=4).status_code == 201
    assert Release.objects.count() == 1


@pytest.mark.django_db
def test_unknown_environment_and_release_are_404(api, versions):
    response = create(api, environment="moon")
    assert response.status_code == 404 and "staging" in response.json()["error"]["message"]
    assert api.get("/api/v1/releases/999/").status_code == 404


@pytest.mark.django_db
def test_cancel_from_pending(api, versions, no_builds):
    release_id = create(api).json()["id"]
    api.post(f"/api/v1/releases/{release_id}/submit/")
    assert api.post(f"/api/v1/releases/{release_id}/cancel/", {"comment": "superseded"},
                    format="json").json()["state"] == "cancelled"
    assert api.post(f"/api/v1/releases/{release_id}/cancel/").status_code == 409


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_approvals_cannot_both_win(bob, versions, django_user_model, no_builds):
    from tests.conftest import make_user

    dave = make_user(django_user_model, "dave", ["releases.approve_release"])
    release = services.release_create(version=versions[0], environment=Environment.objects.get(name="production"),
                                      requester=versions[0].created_by)
    services.release_submit(release=release, actor=versions[0].created_by)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def decide(user, how):  # type: ignore[no-untyped-def]
        try:
            barrier.wait()
            target = Release.objects.get(pk=release.pk)
            if how == "approve":
                services.release_approve(release=target, actor=user, comment="yes")
            else:
                services.release_reject(release=target, actor=user, comment="no")
            outcomes.append(how)
        except services.InvalidTransition:
            outcomes.append("409")
        finally:
            connection.close()

    threads = [threading.Thread(target=decide, args=(bob, "approve")),
               threading.Thread(target=decide, args=(dave, "reject"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) in (["409", "approve"], ["409", "reject"])
    final = Release.objects.get(pk=release.pk)
    assert final.state in ("approved", "rejected")
    assert Approval.objects.count() == 1
    assert AuditEvent.objects.filter(action__in=["release.approve", "release.reject"]).count() == 1


@pytest.mark.django_db
def test_admin_approve_action_respects_four_eyes(client, django_user_model, versions, no_builds):
    from django.contrib.auth.models import Permission

    boss = django_user_model.objects.create_user("boss", password="pw-boss-123", is_staff=True)
    boss.user_permissions.add(*Permission.objects.filter(codename__in=["approve_release", "view_release",
                                                                        "change_release"]))
    client.force_login(boss)
    mine = services.release_create(version=versions[0], environment=Environment.objects.get(name="production"),
                                   requester=boss)
    theirs = services.release_create(version=versions[0], environment=Environment.objects.get(name="production"),
                                     requester=versions[0].created_by)
    for r in (mine, theirs):
        services.release_submit(release=r, actor=r.requester)
    response = client.post("/admin/releases/release/", {"action": "approve", "_selected_action": [mine.pk, theirs.pk],
                                                        "apply": "1", "comment": "reviewed"}, follow=True)
    assert response.status_code == 200
    assert Release.objects.get(pk=mine.pk).state == "pending_approval"
    assert Release.objects.get(pk=theirs.pk).state == "approved"
    assert "Four-eyes" in response.content.decode()
