"""A real Prometheus (Debian's `prometheus`) scrapes the app's /metrics and a `python -m serving`
endpoint's TF Serving metrics; the test asks Prometheus's HTTP API for the job, promotion and
predict series."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import requests
from django.db import transaction

from registry import audit
from tests import factories
from tests.conftest import missing
from tests.processes import ROOT, free_port, stop, wait_for



@pytest.fixture(autouse=True)
def _needs_prometheus() -> None:
    if shutil.which("prometheus") is None:
        missing("Debian's prometheus is not installed")




@pytest.fixture
def serving(tmp_path):  # type: ignore[no-untyped-def]
    """`python -m serving` with one model and --monitoring_config_file; yields its REST address."""
    factories.save_saved_model(tmp_path / "models" / "tiny" / "1", factories.tiny_keras_model())
    (tmp_path / "monitoring.config").write_text(
        'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    rest = free_port()
    log = open(tmp_path / "serving.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "serving", f"--port={free_port()}", f"--rest_api_port={rest}",
                             "--model_name=tiny", f"--model_base_path={tmp_path / 'models' / 'tiny'}",
                             f"--monitoring_config_file={tmp_path / 'monitoring.config'}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{rest}"
    wait_for(lambda: _answers(f"http://{address}/v1/models/tiny"), timeout=120, what="the serving endpoint")
    yield address
    stop(proc)
    log.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def prometheus(tmp_path):  # type: ignore[no-untyped-def]
    """Start Prometheus with the given scrape targets; yields a function that queries its API."""
    procs = []

    def start(targets: dict[str, tuple[str, str]]):  # type: ignore[no-untyped-def]
        jobs = "".join(f"  - job_name: {name}\n    metrics_path: {path}\n    static_configs:\n"
                       f"      - targets: ['{address}']\n" for name, (address, path) in targets.items())
        config = tmp_path / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}")
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(["prometheus", f"--config.file={config}",
                                       f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{port}"], stdout=log,
                                      stderr=subprocess.STDOUT))
        api = f"http://127.0.0.1:{port}/api/v1/query"
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/-/ready"), timeout=60, what="Prometheus")

        def query(promql: str) -> list[dict]:
            body = requests.get(api, params={"query": promql}, timeout=10).json()
            assert body["status"] == "success", body
            return body["data"]["result"]

        return query

    yield start
    for proc in procs:
        stop(proc)


@pytest.mark.django_db(transaction=True)
def test_prometheus_scrapes_the_app_and_the_serving_endpoint(live_server, serving, prometheus, api, alice,
                                                             digits_model):
    source, _ = digits_model
    assert api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1, "recipe": {
        "technique": "ptq_dynamic"}}, format="json").status_code == 202  # queued: no worker here
    with transaction.atomic():
        audit.record(actor=alice, action="release.rollback", obj=source, model=source.model, version=source)
    x = np.ones((2, 8), np.float32).tolist()
    for _ in range(3):
        response = requests.post(f"http://{serving}/v1/models/tiny:predict", json={"instances": x}, timeout=30)
        assert response.status_code == 200, response.text
    app = live_server.url.removeprefix("http://")
    query = prometheus({"modelyard": (app, "/metrics"), "serving": (serving, "/monitoring/prometheus/metrics")})

    up = wait_for(lambda: len(r := query("up == 1")) == 2 and r, timeout=60, what="both targets to be up")
    assert {s["metric"]["job"] for s in up} == {"modelyard", "serving"}
    predicts = wait_for(lambda: query('{__name__=":tensorflow:serving:request_count", model_name="tiny"}'),
                        timeout=30, what="the predict series")
    assert predicts[0]["metric"]["status"] == "OK" and float(predicts[0]["value"][1]) == 3
    assert query('{__name__=":tensorflow:serving:request_latency_count", API="predict", entrypoint="REST"}')
    queues = {s["metric"]["queue"] for s in query('modelyard_task_queue_depth{job="modelyard"}')}
    assert {"gpu", "cpu", "deploy"} <= queues
    jobs = query('modelyard_optimization_jobs{queue="cpu", status="queued"}')
    assert float(jobs[0]["value"][1]) == 1
    assert float(query('modelyard_task_queue_depth{queue="cpu"}')[0]["value"][1]) == 1
    rollbacks = query("modelyard_rollbacks_total")
    assert float(rollbacks[0]["value"][1]) == 1
    outcomes = {s["metric"]["outcome"] for s in query("modelyard_promotions_total")}
    assert outcomes == {"succeeded", "failed"}
    # a scrape is timed after it answers: the next scrape carries it
    wait_for(lambda: query('modelyard_http_request_duration_seconds_count{route="metrics", status="200"}'),
             timeout=20, what="the request latency series")
