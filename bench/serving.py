"""Benchmark: Predict latency (batch 1) and throughput (batch 32) of `python -m serving`
over gRPC and REST, beside calling the same SavedModel in-process.

    python bench/serving.py [--requests 300] [--features 64]

Starts its own server process on free ports with a small MLP it builds itself, and
prints one table. A single client thread sends requests back to back, so the numbers
are per-request overhead, not a saturation test.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from releases.router import serve, write_route  # noqa: E402


class MLP(tf.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.w1 = tf.Variable(rng.normal(size=(features, 128)).astype(np.float32))
        self.w2 = tf.Variable(rng.normal(size=(128, 10)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def serve(self, x):
        return {"probs": tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(x, self.w1)), self.w2))}


def build_model(root: Path, features: int) -> Path:
    module = MLP(features)
    path = root / "mlp" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(base: Path, grpc_port: int, rest_port: int, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "serving", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", "--model_name=mlp", f"--model_base_path={base}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=open(log_path, "wb"),
                               stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    grpc.channel_ready_future(channel).result(timeout=120)
    channel.close()
    return process


def measure(call: Callable[[], object], count: int) -> list[float]:
    for _ in range(10):  # warm caches, connections, tf.function tracing
        call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def summarize(times_b1: list[float], times_b32: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times_b1)
    p50 = statistics.median(ordered) * 1e3
    p95 = ordered[int(0.95 * (len(ordered) - 1))] * 1e3
    rows_per_s = 32 * len(times_b32) / sum(times_b32)
    return p50, p95, rows_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--features", type=int, default=64)
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    x1 = rng.normal(size=(1, args.features)).astype(np.float32)
    x32 = rng.normal(size=(32, args.features)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), args.features)
        grpc_port, rest_port = free_port(), free_port()
        server = start_server(model_dir.parent, grpc_port, rest_port, Path(tmp) / "server.log")
        try:
            results = run_all(model_dir, grpc_port, rest_port, x1, x32, args.requests)
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"\nPredict on a {args.features}-128-10 MLP, {args.requests} sequential requests "
          f"per cell, one client, {os.cpu_count()} CPUs\n")
    print(f"| {'path':<22} | {'p50 ms (b=1)':>12} | {'p95 ms (b=1)':>12} | {'rows/s (b=32)':>13} |")
    print(f"|{'-' * 24}|{'-' * 14}|{'-' * 14}|{'-' * 15}|")
    for name, (p50, p95, rows) in results.items():
        print(f"| {name:<22} | {p50:>12.2f} | {p95:>12.2f} | {rows:>13.0f} |")


def run_all(model_dir: Path, grpc_port: int, rest_port: int, x1: np.ndarray, x32: np.ndarray,
            count: int) -> dict[str, tuple[float, float, float]]:
    results = {}
    function = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    in_process = {n: (lambda x=x: function(x=tf.constant(x))["probs"].numpy()) for n, x in
                  (("b1", x1), ("b32", x32))}
    results["in-process SavedModel"] = summarize(measure(in_process["b1"], count),
                                                 measure(in_process["b32"], count))

    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def grpc_call(x: np.ndarray, via=stub) -> Callable[[], np.ndarray]:  # type: ignore[no-untyped-def]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mlp"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        return lambda: tf.make_ndarray(via.Predict(request, timeout=30).outputs["probs"])

    results["gRPC Predict"] = summarize(measure(grpc_call(x1), count),
                                        measure(grpc_call(x32), count))
    check = np.allclose(grpc_call(x32)(), in_process["b32"](), rtol=1e-5)

    # The same through releases.router (a docker endpoint's fixed address): the cost of the hop.
    with tempfile.TemporaryDirectory() as routes:
        route = Path(routes) / "bench.json"
        write_route(route, grpc_target=f"127.0.0.1:{grpc_port}")
        router, handler = serve("127.0.0.1:0", route)
        routed_channel = grpc.insecure_channel(f"127.0.0.1:{router.port}")
        routed = prediction_service_pb2_grpc.PredictionServiceStub(routed_channel)
        results["gRPC via router"] = summarize(measure(grpc_call(x1, routed), count),
                                               measure(grpc_call(x32, routed), count))
        check = check and np.allclose(grpc_call(x32, routed)(), in_process["b32"](), rtol=1e-5)
        routed_channel.close()
        router.stop(grace=None)
        handler.close()

    session = requests.Session()
    url = f"http://127.0.0.1:{rest_port}/v1/models/mlp:predict"

    def rest_call(x: np.ndarray) -> Callable[[], list]:
        body = '{"instances": ' + str(x.tolist()) + "}"
        return lambda: session.post(url, data=body, timeout=30).json()["predictions"]

    results["REST :predict"] = summarize(measure(rest_call(x1), count),
                                         measure(rest_call(x32), count))
    check = check and np.allclose(rest_call(x32)(), in_process["b32"](), rtol=1e-5)
    channel.close()
    if not check:
        raise SystemExit("server answers differ from the in-process model")
    return results


if __name__ == "__main__":
    main()
