"""Webhooks end to end: subscriptions through the API, events from real state changes, delivery
by a real `manage.py db_worker` to a real HTTP receiver, signatures, order, retries, redelivery."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from integrations import webhooks
from integrations.models import WebhookDelivery, WebhookSubscription
from releases import services as releases
from releases.models import Environment
from tests.integrations.conftest import verify
from tests.processes import free_port, wait_for

RELEASE_EVENTS = ["release.pending_approval", "release.approved", "release.rejected", "release.failed"]




@pytest.mark.django_db
def test_target_urls_are_checked(hooks_api, settings):
    for url, why in [("ftp://example.org/x", "http(s)"), ("http://127.0.0.1:9/x", "loopback"),
                     ("http://10.1.2.3/x", "private"), ("http://169.254.169.254/latest", "reserved")]:
        response = hooks_api.post("/api/v1/webhooks/", {"url": url, "events": ["release.approved"]}, format="json")
        assert response.status_code == 400, (url, response.content)
        assert response.json()["error"]["code"] in ("invalid_webhook_url", "validation_error")
    assert not WebhookSubscription.objects.exists()
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    ok = hooks_api.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/x", "events": ["release.approved"]},
                        format="json")
    assert ok.status_code == 201 and ok.json()["secret"].startswith("whsec_")
    assert "secret" not in hooks_api.get(f"/api/v1/webhooks/{ok.json()['id']}/").json()
    bad_event = hooks_api.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/x", "events": ["nope"]}, format="json")
    assert bad_event.status_code == 400


@pytest.mark.django_db
def test_a_rolled_back_change_queues_nothing(hooks_api, alice, versions, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    hooks_api.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/x", "events": ["release.pending_approval"]},
                   format="json")
    release = releases.release_create(version=versions[0], environment=Environment.objects.get(name="production"),
                                      requester=alice)
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        releases.release_submit(release=release, actor=alice)
        raise RuntimeError("something after the change failed")
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_signed_events_in_order_with_retries_and_redelivery(loopback_allowed, receiver, hooks_api, alice, bob,
                                                            versions, worker):
    # Created after the versions fixture: model_version.created is covered by the CLI test.
    steady = hooks_api.post("/api/v1/webhooks/", {"url": receiver.url("/steady"), "events": RELEASE_EVENTS},
                            format="json").json()
    receiver.failures["/flaky"] = 2
    flaky = hooks_api.post("/api/v1/webhooks/", {"url": receiver.url("/flaky"), "events": RELEASE_EVENTS,
                                                 "model": "digits"}, format="json").json()
    production = Environment.objects.get(name="production")
    Environment.objects.filter(pk=production.pk).update(build_image=False)
    production.refresh_from_db()
    first = releases.release_create(version=versions[0], environment=production, requester=alice)
    releases.release_submit(release=first, actor=alice)
    releases.release_approve(release=first, actor=bob, comment="fine")
    releases.release_fail(first, step="promote:test", reason="the endpoint said no", retryable=True,
                          allowed_from=["approved"])
    second = releases.release_create(version=versions[1], environment=production, requester=alice)
    releases.release_submit(release=second, actor=alice)
    releases.release_reject(release=second, actor=bob, comment="not this one")

    expected = {first.pk: ["release.pending_approval", "release.approved", "release.failed"],
                second.pk: ["release.pending_approval", "release.rejected"]}
    wait_for(lambda: len([r for r in receiver.at("/flaky") if r.status == 200]) == 5, timeout=90,
             what="every event at /flaky")
    wait_for(lambda: len(receiver.at("/steady")) == 5, timeout=30, what="every event at /steady")
    for path, secret in (("/steady", steady["secret"]), ("/flaky", flaky["secret"])):
        delivered = [verify(secret, r) for r in receiver.at(path) if r.status == 200]
        ids = [d["id"] for d in delivered]
        assert len(ids) == len(set(ids)) == 5  # every event once
        for release_id, events in expected.items():
            assert [d["event"] for d in delivered if d["object"]["id"] == release_id] == events  # in order
    for event_id in {r.json["id"] for r in receiver.at("/flaky")}:  # each event: 500, 500, then 200
        assert [r.status for r in receiver.at("/flaky") if r.json["id"] == event_id] == [500, 500, 200]
    payload = [r.json for r in receiver.at("/steady") if r.json["event"] == "release.pending_approval"][0]
    assert payload["object"]["model"] == "digits" and payload["object"]["gates_passed"] is True
    assert {g["gate"] for g in payload["object"]["gates"]} >= {"max_accuracy_drop"}
    assert payload["actor"] == "alice"

    log = hooks_api.get(f"/api/v1/webhooks/{flaky['id']}/deliveries/").json()["results"]
    assert len(log) == 5
    assert all(d["status"] == "succeeded" and d["attempts"] == 3 and d["response_code"] == 200 for d in log)
    retried = log[-1]

    redelivered = hooks_api.post(f"/api/v1/webhook-deliveries/{retried['id']}/redeliver/")
    assert redelivered.status_code == 202
    receiver.failures["/flaky"] = 0
    wait_for(lambda: len([r for r in receiver.at("/flaky") if r.status == 200]) == 6, timeout=30,
             what="the redelivery")
    again = receiver.at("/flaky")[-1]
    assert verify(flaky["secret"], again)["id"] == retried["event_id"]
    row = WebhookDelivery.objects.get(pk=retried["id"])
    assert row.attempts == 4 and row.status == "succeeded" and row.response_code == 200


def test_signature_format():
    assert webhooks.sign("s", 1700000000, b"{}") == (
        "t=1700000000,v1=" + hmac.new(b"s", b"1700000000.{}", hashlib.sha256).hexdigest())


@pytest.mark.django_db
def test_without_a_deferring_backend_a_failure_does_not_hold_back_later_events(
        receiver, settings, hooks_api, alice, bob, versions, django_capture_on_commit_callbacks):
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
                                  "QUEUES": settings.TASKS["default"]["QUEUES"]}}
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    Environment.objects.filter(name="production").update(build_image=False)
    sub = webhooks.subscription_create(owner=alice, url=receiver.url("/x"), events=RELEASE_EVENTS)
    receiver.failures["/x"] = 1
    with django_capture_on_commit_callbacks(execute=True):
        release = releases.release_create(version=versions[0], environment=Environment.objects.get(name="production"),
                                          requester=alice)
        releases.release_submit(release=release, actor=alice)
    receiver.failures["/x"] = 0
    with django_capture_on_commit_callbacks(execute=True):
        releases.release_approve(release=release, actor=bob, comment="ok")
    rows = list(WebhookDelivery.objects.order_by("pk"))
    assert [(d.event, d.status, d.attempts, d.response_code) for d in rows] == [
        ("release.pending_approval", "failed", 1, 500), ("release.approved", "succeeded", 1, 200)]
    assert "HTTP 500" in rows[0].last_error
    with django_capture_on_commit_callbacks(execute=True):
        response = hooks_api.post(f"/api/v1/webhook-deliveries/{rows[0].pk}/redeliver/")
    assert response.status_code == 202
    rows[0].refresh_from_db()
    assert (rows[0].status, rows[0].attempts, rows[0].response_code) == ("succeeded", 2, 200)
    assert [verify(sub.secret, r)["event"] for r in receiver.at("/x") if r.status == 200] == [
        "release.approved", "release.pending_approval"]


@pytest.mark.django_db
def test_an_endpoint_turning_unhealthy_is_one_event(alice, settings):
    from releases import promotion
    from releases.models import Endpoint

    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    webhooks.subscription_create(owner=alice, url="http://127.0.0.1:9/x", events=["endpoint.unhealthy"])
    endpoint = Endpoint.objects.create(name="ep", environment=Environment.objects.get(name="production"),
                                       kind="model_repository", grpc_target=f"127.0.0.1:{free_port()}",
                                       repository_path="/nonexistent", config_path="/nonexistent/models.config")
    promotion.check_endpoint_health(endpoint)
    promotion.check_endpoint_health(endpoint)  # still down: no second event
    delivery = WebhookDelivery.objects.get()
    assert delivery.event == "endpoint.unhealthy"
    assert delivery.payload["object"]["name"] == "ep" and delivery.payload["object"]["reachable"] is False
    assert "does not answer" in delivery.payload["object"]["error"]
