"""/metrics: Prometheus text with request latency by route and fleet numbers from the database;
only from allowed addresses or with the bearer token."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from registry import audit
from tests.prometheus_text import sample as series


@pytest.mark.django_db
def test_metrics_report_routes_jobs_queues_and_release_outcomes(api, digits_model, alice,
                                                                django_capture_on_commit_callbacks):
    source, _ = digits_model
    with django_capture_on_commit_callbacks(execute=True):
        for recipe in ({"technique": "prune"}, {"technique": "ptq_dynamic"}, {"technique": "measure"}):
            assert api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1, "recipe": recipe},
                            format="json").status_code == 202
    from optimization.models import OptimizationJob

    done = OptimizationJob.objects.filter(queue="cpu").first()
    now = timezone.now()
    OptimizationJob.objects.filter(pk=done.pk).update(status="succeeded", started_at=now - timedelta(seconds=20),
                                                      finished_at=now)
    audit.record(actor=alice, action="release.rollback", obj=source, model=source.model, version=source)
    assert api.get("/api/v1/models/digits/versions/1/").status_code == 200

    response = Client().get("/metrics")  # the test client comes from 127.0.0.1
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert series(text, "modelyard_http_request_duration_seconds_count", route="version-detail", method="GET",
                  status="200") >= 1
    assert "/api/v1/models/digits" not in text  # routes, never raw paths
    assert series(text, "modelyard_optimization_jobs", queue="gpu", status="queued") == 1
    assert series(text, "modelyard_optimization_jobs", queue="cpu", status="queued") == 1
    assert series(text, "modelyard_optimization_jobs", queue="cpu", status="succeeded") == 1
    assert series(text, "modelyard_optimization_job_duration_seconds_bucket", queue="cpu", status="succeeded",
                  le="15.0") == 0
    assert series(text, "modelyard_optimization_job_duration_seconds_bucket", queue="cpu", status="succeeded",
                  le="30.0") == 1
    assert series(text, "modelyard_optimization_job_duration_seconds_sum", queue="cpu", status="succeeded") == 20
    assert series(text, "modelyard_task_queue_depth", queue="gpu") == 1
    assert series(text, "modelyard_task_queue_depth", queue="cpu") == 2
    assert series(text, "modelyard_task_queue_depth", queue="deploy") == 0
    assert series(text, "modelyard_task_queue_oldest_age_seconds", queue="cpu") >= 0
    assert series(text, "modelyard_rollbacks_total") == 1
    assert series(text, "modelyard_promotions_total", outcome="succeeded") == 0
    assert series(text, "modelyard_image_builds_total", outcome="failed") == 0


@pytest.mark.django_db
def test_metrics_are_refused_from_other_addresses_and_need_the_token_when_one_is_set(settings):
    response = Client(REMOTE_ADDR="10.1.2.3").get("/metrics")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    settings.METRICS_ALLOW = ["10.0.0.0/8"]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    settings.METRICS_TOKEN = "s3cret-token"
    assert Client().get("/metrics").status_code == 403  # a token replaces the address rule
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert Client(REMOTE_ADDR="192.0.2.9").get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
