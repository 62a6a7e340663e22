"""`/metrics` in Prometheus text format.

Two sources, chosen so that several web processes (gunicorn workers, web hosts behind a load
balancer) report correct numbers:

* Request latency by route is measured in-process by ``PrometheusMiddleware``. With several
  gunicorn workers set ``PROMETHEUS_MULTIPROC_DIR`` (``bin/run`` does): each worker writes its
  samples there and a scrape merges them (prometheus-client's multiprocess mode). It is per web
  host: scrape every web host.
* Everything about work and releases — jobs by queue and state and their durations, task queue
  depth and oldest waiting task, image builds, promotions and rollbacks by outcome, endpoint
  health — is computed from the database at scrape time (``DatabaseCollector``), so any web
  process gives the same, fleet-wide answer (aggregate those with ``max``, not ``sum``).

Access: from the addresses in ``MODELYARD_METRICS_ALLOW`` (default loopback), or with
``Authorization: Bearer <MODELYARD_METRICS_TOKEN>`` when a token is set.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import time
from datetime import timedelta
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

REQUEST_LATENCY = Histogram("modelyard_http_request_duration_seconds",
                            "Time to answer an HTTP request, by resolved route (URL name).",
                            ["route", "method", "status"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)


class PrometheusMiddleware:
    """Observe each request's latency, labelled by the URL pattern's name, never the raw path
    (a path per model version would make a series per version)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.view_name or match.route) if match else "unresolved"
        REQUEST_LATENCY.labels(route=route, method=request.method, status=str(response.status_code)).observe(
            time.perf_counter() - started)
        return response


class DatabaseCollector(Collector):
    """Fleet-wide numbers read from the database at every scrape."""

    def collect(self) -> Iterator[Any]:
        yield from job_metrics()
        yield from queue_metrics()
        yield from release_metrics()
        yield from endpoint_metrics()


def job_metrics() -> Iterator[Any]:
    from optimization.models import OptimizationJob

    jobs = GaugeMetricFamily("modelyard_optimization_jobs", "Optimization jobs by queue and status.",
                             labels=["queue", "status"])
    for row in OptimizationJob.objects.values("queue", "status").annotate(n=Count("id")).order_by():
        jobs.add_metric([row["queue"], row["status"]], row["n"])
    yield jobs
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    finished = OptimizationJob.objects.filter(status__in=[OptimizationJob.Status.SUCCEEDED,
                                                          OptimizationJob.Status.FAILED],
                                              started_at__isnull=False, finished_at__isnull=False)
    hist = HistogramMetricFamily("modelyard_optimization_job_duration_seconds",
                                 "Run time of finished optimization jobs (last attempt).", labels=["queue", "status"])
    buckets = {f"le_{i}": Count("id", filter=Q(d__lte=timedelta(seconds=b)))
               for i, b in enumerate(JOB_DURATION_BUCKETS)}
    rows = finished.annotate(d=duration).values("queue", "status").annotate(n=Count("id"), total=Sum("d"), **buckets)
    for row in rows.order_by():
        counts = [(str(float(b)), row[f"le_{i}"]) for i, b in enumerate(JOB_DURATION_BUCKETS)]
        hist.add_metric([row["queue"], row["status"]], counts + [("+Inf", row["n"])],
                        row["total"].total_seconds() if row["total"] else 0.0)
    yield hist


def queue_metrics() -> Iterator[Any]:
    from django_tasks_db.models import DBTaskResult

    depth = GaugeMetricFamily("modelyard_task_queue_depth", "Tasks waiting for a worker, by queue.",
                              labels=["queue"])
    oldest = GaugeMetricFamily("modelyard_task_queue_oldest_age_seconds",
                               "Age of the oldest task waiting for a worker, by queue (0: none waiting).",
                               labels=["queue"])
    waiting = {row["queue_name"]: row for row in DBTaskResult.objects.ready().values("queue_name")
               .annotate(n=Count("id"), oldest=Min("enqueued_at")).order_by()}
    now = timezone.now()
    for queue in settings.TASKS["default"].get("QUEUES", ["default"]):
        row = waiting.get(queue)
        depth.add_metric([queue], row["n"] if row else 0)
        oldest.add_metric([queue], (now - row["oldest"]).total_seconds() if row else 0.0)
    yield depth
    yield oldest


def release_metrics() -> Iterator[Any]:
    """From the append-only audit log, so these only ever grow, as counters must."""
    from registry.models import AuditEvent

    counts = AuditEvent.objects.aggregate(
        build_ok=Count("id", filter=Q(action="release.image_ready")),
        build_failed=Count("id", filter=Q(action="release.fail", after__step="build")),
        promote_ok=Count("id", filter=Q(action__in=["release.live", "release.canary"])),
        promote_failed=Count("id", filter=Q(action="release.fail", after__step__startswith="promote")),
        rollbacks=Count("id", filter=Q(action="release.rollback")))
    builds = CounterMetricFamily("modelyard_image_builds", "Release image builds by outcome.", labels=["outcome"])
    builds.add_metric(["succeeded"], counts["build_ok"])
    builds.add_metric(["failed"], counts["build_failed"])
    promotions = CounterMetricFamily("modelyard_promotions", "Promotions by outcome.", labels=["outcome"])
    promotions.add_metric(["succeeded"], counts["promote_ok"])
    promotions.add_metric(["failed"], counts["promote_failed"])
    yield builds
    yield promotions
    yield CounterMetricFamily("modelyard_rollbacks", "Release rollbacks.", value=counts["rollbacks"])


def endpoint_metrics() -> Iterator[Any]:
    from releases.models import Endpoint

    up = GaugeMetricFamily("modelyard_endpoint_up", "1 if the endpoint answered its last health check.",
                           labels=["endpoint", "environment"])
    checked = GaugeMetricFamily("modelyard_endpoint_health_checked_timestamp_seconds",
                                "When the endpoint's health was last checked (Unix time).", labels=["endpoint"])
    for endpoint in Endpoint.objects.select_related("environment").order_by("name"):
        if endpoint.reachable is not None:
            up.add_metric([endpoint.name, endpoint.environment.name], 1.0 if endpoint.reachable else 0.0)
        if endpoint.health_checked_at is not None:
            checked.add_metric([endpoint.name], endpoint.health_checked_at.timestamp())
    yield up
    yield checked


def allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        return given.startswith("Bearer ") and secrets.compare_digest(given[7:].encode(), token.encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in settings.METRICS_ALLOW)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return HttpResponse('{"error": {"code": "forbidden", "message": "Metrics are available from the addresses '
                            'in MODELYARD_METRICS_ALLOW, or with the bearer token MODELYARD_METRICS_TOKEN."}}',
                            status=403, content_type="application/json")
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # every gunicorn worker's request samples, merged
    else:
        registry.register(_ProcessLocal())
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _ProcessLocal(Collector):
    """This process's own metrics (one web process: `runserver`, tests)."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()
