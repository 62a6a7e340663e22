"""Benchmark `python -m serving`: per-request overhead, and batching under concurrent load.

    python bench/serving.py [--requests 300] [--features 64]
    python bench/serving.py --batching [--clients 32] [--seconds 8] [--rounds 3] [--features 512]
                            [--hidden 4096] [--timeout-micros 0] [--batch-threads 1]

Default: one server on free ports with a small MLP built here; a single client thread sends
requests back to back: Predict latency (batch 1) and throughput (batch 32) over gRPC, through
releases.router and over REST, beside calling the same SavedModel in-process.

--batching: two servers on the same model, one with --enable_batching (batching_parameters()),
one without; `--clients` threads send batch-1 Predicts back to back, over gRPC and then REST,
the two servers' cells interleaved round by round so both see the same machine load. Prints
requests/s (median of rounds), p50/p99 latency (all rounds pooled), the mean batch the model
ran (from the batching server's metrics) and the ratios on/off.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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
    def __init__(self, features: int, hidden: int = 128) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.w1 = tf.Variable(rng.normal(size=(features, hidden)).astype(np.float32))
        self.w2 = tf.Variable(rng.normal(size=(hidden, 10)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def serve(self, x):
        return {"probs": tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(x, self.w1)), self.w2))}


def build_model(root: Path, features: int, hidden: int = 128) -> Path:
    module = MLP(features, hidden)
    path = root / "mlp" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(base: Path, grpc_port: int, rest_port: int, log_path: Path,
                 extra_flags: tuple[str, ...] = ()) -> subprocess.Popen:
    command = [sys.executable, "-m", "serving", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", "--model_name=mlp", f"--model_base_path={base}", *extra_flags]
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--features", type=int, default=None, help="MLP inputs (64; 512 with --batching)")
    parser.add_argument("--batching", action="store_true", help="batching on vs off under concurrent clients")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=None, help="MLP hidden units (128; 4096 with --batching)")
    parser.add_argument("--timeout-micros", type=int, default=0, help="batch_timeout_micros of the batching server")
    parser.add_argument("--batch-threads", type=int, default=1,
                        help="num_batch_threads; 1: TensorFlow's own op threads already use every CPU")
    args = parser.parse_args()
    if args.batching:
        compare_batching(args.features or 512, args.hidden or 4096, args.clients, args.seconds, args.rounds,
                         args.timeout_micros, args.batch_threads)
        return
    args.features = args.features or 64

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


# --- batching on vs off under concurrent load -----------------------------------------------------

def batching_parameters(timeout_micros: int, threads: int) -> str:
    """A batch as large as the clients, timeout 0 (TF Serving's CPU starting point)."""
    return (f"max_batch_size {{ value: 32 }}\nbatch_timeout_micros {{ value: {timeout_micros} }}\n"
            f"max_enqueued_batches {{ value: 100 }}\nnum_batch_threads {{ value: {threads} }}\n")


METRICS_PATH = "/monitoring/prometheus/metrics"
PROCESSED = ":tensorflow:serving:batching_session:processed_batch_size"
Call = Callable[[], object]


def run_clients(make_call: Callable[[], Call], clients: int, seconds: float) -> tuple[list[float], int]:
    """`clients` threads, each with its own connection, call back to back for `seconds`;
    returns every latency (s) and the number of failed calls."""
    stop_at = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(index: int, call: Call) -> None:
        while (start := time.perf_counter()) < stop_at:
            try:
                call()
            except Exception:  # counted, reported: a refused request must not pass as fast
                errors[index] += 1
                continue
            latencies[index].append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(i, make_call())) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [t for per_client in latencies for t in per_client], sum(errors)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (load-independent, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_totals(rest_port: int) -> tuple[float, float]:
    """(rows the model ran, model calls) so far, from the batching server's Prometheus page."""
    text = requests.get(f"http://127.0.0.1:{rest_port}{METRICS_PATH}", timeout=10).text
    found = dict(re.findall(rf"^{re.escape(PROCESSED)}_(sum|count){{}} (\S+)$", text, re.MULTILINE))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def grpc_caller(port: int, x: np.ndarray) -> Callable[[], Call]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mlp"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))

    def make() -> Call:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        return lambda: stub.Predict(request, timeout=30)

    return make


def rest_caller(port: int, x: np.ndarray) -> Callable[[], Call]:
    body = '{"instances": ' + str(x.tolist()) + "}"

    def make() -> Call:
        session = requests.Session()

        def call() -> None:
            response = session.post(f"http://127.0.0.1:{port}/v1/models/mlp:predict", data=body, timeout=30)
            response.raise_for_status()

        return call

    return make


def compare_batching(features: int, hidden: int, clients: int, seconds: float, rounds: int,
                     timeout_micros: int, threads: int) -> None:
    x = np.random.default_rng(1).normal(size=(1, features)).astype(np.float32)
    parameters = batching_parameters(timeout_micros, threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_model(root, features, hidden)
        (root / "batching.txt").write_text(parameters)
        (root / "monitoring.config").write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
        common = ("--grpc_max_threads=64", f"--monitoring_config_file={root / 'monitoring.config'}")
        ports = {mode: (free_port(), free_port()) for mode in ("off", "on")}
        servers = {mode: start_server(model_dir.parent, *ports[mode], root / f"{mode}.log",
                                      common + (("--enable_batching", f"--batching_parameters_file={root / 'batching.txt'}")
                                                if mode == "on" else ()))
                   for mode in ("off", "on")}
        try:
            check_answers(model_dir, ports, x)
            cells = measure_batching(ports, {mode: server.pid for mode, server in servers.items()}, x, clients,
                                     seconds, rounds)
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(timeout=30)
    print_batching(cells, f"{features}-{hidden}-10", parameters, clients, seconds, rounds)


def check_answers(model_dir: Path, ports: dict[str, tuple[int, int]], x: np.ndarray) -> None:
    want = tf.saved_model.load(str(model_dir)).signatures["serving_default"](x=tf.constant(x))["probs"].numpy()
    for mode, (grpc_port, rest_port) in ports.items():
        got = tf.make_ndarray(grpc_caller(grpc_port, x)()().outputs["probs"])
        rest = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/mlp:predict",
                             json={"instances": x.tolist()}, timeout=30).json()["predictions"]
        if not (np.allclose(got, want, rtol=1e-5) and np.allclose(rest, want, rtol=1e-5)):
            raise SystemExit(f"batching {mode}: server answers differ from the in-process model")


def measure_batching(ports: dict[str, tuple[int, int]], pids: dict[str, int], x: np.ndarray, clients: int,
                     seconds: float, rounds: int) -> dict[tuple[str, str], dict]:
    callers = {"gRPC": lambda port: grpc_caller(port[0], x), "REST": lambda port: rest_caller(port[1], x)}
    cells: dict[tuple[str, str], dict] = {(path, mode): {"rps": [], "latencies": [], "errors": 0, "rows": 0.0,
                                                         "calls": 0.0, "cpu": 0.0}
                                          for path in callers for mode in ("off", "on")}
    for round_index in range(rounds):
        for path, caller in callers.items():
            order = ("off", "on") if round_index % 2 == 0 else ("on", "off")
            for mode in order:
                make = caller(ports[mode])
                run_clients(make, clients, 1.0)  # warm: connections, threads, tf.function
                before, cpu_before = batch_totals(ports["on"][1]), cpu_seconds(pids[mode])
                latencies, errors = run_clients(make, clients, seconds)
                after, cpu_after = batch_totals(ports["on"][1]), cpu_seconds(pids[mode])
                cell = cells[(path, mode)]
                cell["cpu"] += cpu_after - cpu_before
                cell["rps"].append(len(latencies) / seconds)
                cell["latencies"] += latencies
                cell["errors"] += errors
                if mode == "on":
                    cell["rows"] += after[0] - before[0]
                    cell["calls"] += after[1] - before[1]
    return cells


def print_batching(cells: dict[tuple[str, str], dict], model: str, parameters: str, clients: int, seconds: float,
                   rounds: int) -> None:
    params = " ".join(line.replace(" { value: ", "=").rstrip(" }") for line in parameters.splitlines())
    print(f"\nPredict (batch 1 per request) with {clients} concurrent clients on a {model} MLP; "
          f"{rounds} rounds x {seconds:g} s per cell, on/off interleaved; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}\nbatching on: {params}\n")
    print(f"| {'path':<5} | {'batching':<8} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'server CPU ms/req':>17} "
          f"| {'mean batch':>10} | {'errors':>6} |")
    print(f"|{'-' * 7}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 19}|{'-' * 12}|{'-' * 8}|")
    for path in ("gRPC", "REST"):
        figures = {}
        for mode in ("off", "on"):
            cell = cells[(path, mode)]
            ordered = sorted(cell["latencies"]) or [float("nan")]
            rps = statistics.median(cell["rps"])
            p50, p99 = ordered[len(ordered) // 2] * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3
            batch = cell["rows"] / cell["calls"] if cell["calls"] else 1.0
            cpu = cell["cpu"] * 1e3 / max(1, len(cell["latencies"]))
            figures[mode] = (rps, p50, p99, cpu)
            print(f"| {path:<5} | {mode:<8} | {rps:>8.0f} | {p50:>7.2f} | {p99:>7.2f} | {cpu:>17.3f} | {batch:>10.1f} "
                  f"| {cell['errors']:>6} |")
        ratio = [figures["on"][i] / figures["off"][i] for i in range(4)]
        print(f"| {path:<5} | {'on / off':<8} | {ratio[0]:>7.2f}x | {ratio[1]:>6.2f}x | {ratio[2]:>6.2f}x "
              f"| {ratio[3]:>16.2f}x | {'':>10} | {'':>6} |")


if __name__ == "__main__":
    main()
