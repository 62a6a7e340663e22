"""`--monitoring_config_file`: TF Serving's Prometheus endpoint on the REST port, with its own
metric names, counting gRPC and REST inference calls by model and status."""
from __future__ import annotations

import grpc
import numpy as np
import requests

from serving_contract import METRICS_PATH as PATH, assert_rpc_error, monitoring_flag, predict_request, write_config
from tests.prometheus_text import sample

X = np.ones((1, 4), np.float32)


def test_prometheus_endpoint_counts_grpc_and_rest_predictions(launch, artifacts, tmp_path):
    artifacts.place(tmp_path / "toy", 1, artifacts.toy[1])
    server = launch(["--model_name=toy", f"--model_base_path={tmp_path / 'toy'}", monitoring_flag(tmp_path)])
    for _ in range(3):
        server.predict_stub.Predict(predict_request("toy", X), timeout=30)
    assert_rpc_error(lambda: server.predict_stub.Predict(predict_request("nope", X), timeout=30),
                     grpc.StatusCode.NOT_FOUND)
    response = requests.post(server.rest + "/v1/models/toy:predict", json={"instances": X.tolist()}, timeout=30)
    assert response.status_code == 200, response.text

    scraped = requests.get(server.rest + PATH, timeout=10)
    assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith("text/plain")
    text = scraped.text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert '\n:tensorflow:serving:request_count{model_name="toy",status="OK"} 4\n' in text  # TF's name, no _total
    assert sample(text, ":tensorflow:serving:request_count", model_name="toy", status="OK") == 4
    assert sample(text, ":tensorflow:serving:request_count", model_name="nope", status="NOT_FOUND") == 1
    assert sample(text, ":tensorflow:serving:request_latency_count", model_name="toy", API="predict",
                  entrypoint="GRPC") == 3
    assert sample(text, ":tensorflow:serving:request_latency_count", model_name="toy", API="predict",
                  entrypoint="REST") == 1
    assert sample(text, ":tensorflow:serving:request_latency_bucket", model_name="toy", API="predict",
                  entrypoint="GRPC", le="+Inf") == 3
    assert requests.get(server.rest + "/monitoring/other", timeout=10).status_code == 404


def test_a_bad_monitoring_config_stops_start_up(launch, artifacts, tmp_path):
    artifacts.place(tmp_path / "toy", 1, artifacts.toy[1])
    bad = write_config(tmp_path / "monitoring.config", "prometheus_config { enable: maybe }\n")
    server = launch(["--model_name=toy", f"--model_base_path={tmp_path / 'toy'}",
                     f"--monitoring_config_file={bad}"], wait=False)
    assert server.wait_exit() != 0
    assert "monitoring.config" in server.output()
