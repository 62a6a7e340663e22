"""Benchmark: promotion and rollback under steady Predict traffic.

    .venv/bin/python bench/promotion.py [--promotions 5] [--kind repository|docker|both] [--hidden 1024]

What it measures (targets: overhead <= 1 s, rollback <= 1 s, zero failed requests). Both kinds go
through the endpoint driver the promotion workflow calls (``releases.deploy.driver_for``:
``promote`` and ``rollback``); stages are timed by the driver's ``on_step`` callback. The bench
imports nothing from tests/ and patches nothing.

* repository kind (the `model_repository` driver over releases.deploy.repository_engine) against a
  real `python -m serving` process on a temporary model repository (empty models.config, read
  once; every change goes through HandleReloadConfigRequest as in production). A client thread
  sends Predict to label `stable` back to back (~2 ms pause) for the whole run.
  - promote: from calling promote() until the client first gets an answer from the new version
    through `stable` (and, apart, until promote() returned);
  - load: the model's own load time in the server: from the `stage` step (version directory
    published) to the `available` step (GetModelStatus says AVAILABLE). The in-process reference,
    tf.saved_model.load + first call of the same SavedModel, is printed beside it;
  - overhead = promote - load: everything the engine adds (checks, staging copy, reloads, canary
    validation, label move);
  - rollback: from calling rollback() until the client first gets an answer from the previous
    version through `stable`.
  Each round: promote v(i) (stable v1 -> v(i)), then roll back to v1.
* docker kind (the `docker` driver), if --kind docker|both: release images built with
  image_build.build_image FROM the serving harness base image (releases.deploy.standin_image: the
  host's Python + `serving` bind-mounted into a busybox image, a stand-in for the TF Serving
  image). The client sends to a releases.router at one fixed address; the driver's promote starts
  the new container beside the active one, validates it and rewrites the route file, and the
  router sends the next RPC to the new container.
  - load: container start -> version AVAILABLE (boot of the server + model load: with the harness
    that is mostly importing TensorFlow in a fresh Python);
  - overhead = promote - load (engine checks, image lookup, container create/start, validation,
    the route switch);
  - promote() returned: also the retirement of the container no longer kept (stop + remove);
  - rollback: the driver's rollback (checks the kept container serves, rewrites the route), until
    the client's first answer from the previous version.
  Each round: promote v(i) beside the stable v1, then roll back to v1.

Exit status 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from releases.deploy import EndpointDriver, EndpointSpec, driver_for  # noqa: E402
from releases.router import serve  # noqa: E402
from releases.tfserving import TFServingClient  # noqa: E402
from releases.traffic import Traffic  # noqa: E402

MODEL = "bench"
FEATURES = 32
HIDDEN = 1024  # --hidden
X = np.random.default_rng(0).normal(size=(4, FEATURES)).astype(np.float32)
TARGET_OVERHEAD_S = 1.0
TARGET_ROLLBACK_S = 1.0
TOLERANCE = (1e-3, 1e-4)  # what the workflow allows a float model (releases.promotion.tolerance_for)


# --- models --------------------------------------------------------------------------------------

def build_models(root: Path, count: int) -> tuple[list[Path], list[dict[str, Any]]]:
    """`count` SavedModels (same MLP shape, different weights): x float32[None, 32] -> y [None, 10],
    two hidden layers of --hidden units (1024: ~4 MB of weights)."""
    import tf_keras

    paths, samples = [], []
    for i in range(count):
        tf_keras.utils.set_random_seed(100 + i)
        inputs = tf_keras.Input(shape=(FEATURES,), name="x")
        hidden = tf_keras.layers.Dense(HIDDEN, activation="relu")(inputs)
        hidden = tf_keras.layers.Dense(HIDDEN, activation="relu")(hidden)
        outputs = tf_keras.layers.Dense(10, name="y")(hidden)
        model = tf_keras.Model(inputs, outputs)
        path = root / f"m{i + 1}"
        model.save(str(path), save_format="tf")
        paths.append(path)
        samples.append({"inputs": X.tolist(), "outputs": model(X).numpy().tolist(),
                        "input_name": "x", "output_name": "y", "dtype": "float32"})
    return paths, samples


def in_process_load_s(path: Path) -> float:
    """Reference: the model's own load time, tf.saved_model.load + the first call."""
    import tensorflow as tf

    started = time.monotonic()
    loaded = tf.saved_model.load(str(path))
    loaded.signatures["serving_default"](x=tf.constant(X))
    return time.monotonic() - started


# --- traffic -------------------------------------------------------------------------------------

def steady_traffic(target: str) -> Traffic:
    """Predict to label `stable` of the active target, back to back (2 ms pauses)."""
    return Traffic(target, MODEL, X, pause_s=0.002)


# --- reporting -----------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[index]


def row(name: str, values: list[float]) -> str:
    return f"| {name:<42} | {statistics.median(values):8.3f} | {pct(values, 0.95):8.3f} |"


def print_table(title: str, rows: dict[str, list[float]], traffic: Traffic, extra: list[str]) -> None:
    print(f"\n### {title}\n")
    print(f"| {'seconds':<42} | {'median':>8} | {'p95':>8} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 10}|")
    for name, values in rows.items():
        print(row(name, values))
    failures = traffic.failures()
    print(f"\nrequests {len(traffic.log)}, failures {len(failures)}" +
          (f" (first: {failures[0]})" if failures else ""))
    for line in extra:
        print(line)


def met(rows: dict[str, list[float]], traffic: Traffic) -> bool:
    """Targets, on the p95: overhead <= 1 s, rollback <= 1 s; and no failed request."""
    return (pct(rows["overhead (promote - load)"], 0.95) <= TARGET_OVERHEAD_S
            and pct(rows["rollback (call -> client sees old)"], 0.95) <= TARGET_ROLLBACK_S
            and not traffic.failures())


# --- repository kind -------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def promote(driver: EndpointDriver, version: int, path: Path | None, samples: dict[str, Any],
            image_ref: str = "") -> dict[str, float]:
    """The driver's promote, as the workflow calls it; returns when each step was reported."""
    marks: dict[str, float] = {}
    driver.promote(MODEL, version, path, samples, False,
                   lambda step, _message: marks.setdefault(step, time.monotonic()),
                   tolerance=TOLERANCE, image_ref=image_ref, release_id=version)
    return marks


def run_rounds(driver: EndpointDriver, traffic: Traffic, rounds: int, paths: list[Path],
               samples: list[dict[str, Any]], refs: list[str], load_steps: tuple[str, str]) -> dict[str, list[float]]:
    """Each round: promote v(i) (stable v1 -> v(i)), then roll back to v1; times from the client's side
    and from the driver's steps (``load_steps``: the step that starts the load, the one that ends it)."""
    rows: dict[str, list[float]] = {k: [] for k in (
        "promote (call -> client sees new version)", "promote() returned", f"load ({' -> '.join(load_steps)})",
        "overhead (promote - load)", "rollback (call -> client sees old)", "rollback() returned")}
    for i in range(2, rounds + 2):
        started = time.monotonic()
        marks = promote(driver, i, paths[i - 1], samples[i - 1], refs[i - 1] if refs else "")
        returned = time.monotonic()
        seen = traffic.first_seen(i, started)
        load = marks[load_steps[1]] - marks[load_steps[0]]
        rows["promote (call -> client sees new version)"].append(seen - started)
        rows["promote() returned"].append(returned - started)
        rows[f"load ({' -> '.join(load_steps)})"].append(load)
        rows["overhead (promote - load)"].append(seen - started - load)
        time.sleep(0.3)
        started = time.monotonic()
        driver.rollback(MODEL, 1)
        returned = time.monotonic()
        rows["rollback (call -> client sees old)"].append(traffic.first_seen(1, started) - started)
        rows["rollback() returned"].append(returned - started)
        time.sleep(0.3)
    return rows


def bench_repository(rounds: int, work: Path) -> bool:
    paths, samples = build_models(work / "models-src", rounds + 1)
    reference = [in_process_load_s(p) for p in paths[:3]]
    base, config = work / "repo", work / "models.config"
    base.mkdir()
    config.write_text("model_config_list {\n}\n")
    grpc_port, rest_port = free_port(), free_port()
    log_path = work / "server.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
             "--max_num_load_retries=0"], cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    client = TFServingClient(f"127.0.0.1:{grpc_port}", timeout=10)
    traffic: Traffic | None = None
    try:
        deadline = time.monotonic() + 90
        while not client.reachable(timeout=0.5):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        driver = driver_for(EndpointSpec(name="bench-repository", kind="model_repository",
                                         grpc_target=client.grpc_target, repository_path=base, config_path=config,
                                         deadline_s=60))
        promote(driver, 1, paths[0], samples[0])
        traffic = steady_traffic(client.grpc_target).start()
        time.sleep(0.5)
        rows = run_rounds(driver, traffic, rounds, paths, samples, [], ("stage", "available"))
        traffic.stop()
        print_table(f"repository kind: {rounds} promotions + rollbacks, `python -m serving`", rows,
                    traffic, [f"in-process reference load (tf.saved_model.load + first call): "
                              f"median {statistics.median(reference):.3f} s"])
        return met(rows, traffic)
    finally:
        if traffic is not None:
            traffic.stop()
        client.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


# --- docker kind -----------------------------------------------------------------------------------

def free_port_base() -> int:
    """A base with free ports above it for each of the docker driver's port pairs."""
    from releases.deploy.containers import port_free
    from releases.deploy.docker_driver import PORT_PAIRS

    while True:
        base = free_port()
        if base + 2 * PORT_PAIRS < 65536 and all(port_free(base + i) for i in range(2 * PORT_PAIRS)):
            return base


def bench_docker(rounds: int, work: Path) -> bool:
    import docker

    from releases.deploy import containers
    from releases.deploy.image_build import build_image
    from releases.deploy.image_context import ImageSpec
    from releases.deploy.standin_image import ensure_harness_base_image, harness_mount_specs

    client = docker.DockerClient(version="auto", timeout=120)
    run = uuid.uuid4().hex[:10]
    standin, base = f"modelyard-bench/standin:{run}", f"modelyard-bench/harness:{run}"
    repository = f"127.0.0.1:5000/modelyard-bench/p{run}"
    endpoint = f"bench-{run}"
    refs: list[str] = []
    traffic: Traffic | None = None
    try:
        paths, samples = build_models(work / "docker-src", rounds + 1)
        ensure_harness_base_image(client, base, standin=standin)
        for i, path in enumerate(paths, start=1):
            spec = ImageSpec(model_name=MODEL, version=i, release_id=i, saved_model_dir=path, model_sha256="ef" * 32,
                             base_image=base, repository=repository, created="2024-05-01T12:00:00+00:00",
                             version_labels={"stable": i})
            build_image(spec, client=client.api, on_log=lambda _l: None)
            refs.append(spec.image_ref)
        route = work / "routes" / f"{endpoint}.json"
        driver = driver_for(EndpointSpec(
            name=endpoint, kind="docker", grpc_port_base=free_port_base(), route_file=route, lock_dir=work / "locks",
            profile={"gpu": False, "mounts": harness_mount_specs()}, deadline_s=120, docker_timeout_s=120))
        promote(driver, 1, None, samples[0], refs[0])
        # The client sends to a router at one fixed address, which follows the driver's route file.
        router, router_handler = serve("127.0.0.1:0", route)
        traffic = steady_traffic(f"127.0.0.1:{router.port}").start()
        time.sleep(0.5)
        rows = run_rounds(driver, traffic, rounds, paths, samples, refs, ("start", "available"))
        traffic.stop()
        router.stop(grace=None)
        router_handler.close()
        print_table(f"docker kind: {rounds} promotions + rollbacks, harness containers (host network), "
                    "client through releases.router",
                    rows, traffic, ["load here = container boot (Python + TensorFlow import in a fresh "
                                    "process) + model load"])
        return met(rows, traffic)
    finally:
        if traffic is not None:
            traffic.stop()
        for container in containers.endpoint_containers(client, endpoint):
            container.remove(force=True)
        for ref in [*refs, base, standin]:
            try:
                client.images.remove(ref, force=True)
            except docker.errors.APIError:
                pass
        client.close()


def main() -> int:
    global HIDDEN
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--promotions", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="hidden layer width")
    parser.add_argument("--kind", choices=("repository", "docker", "both"), default="both")
    args = parser.parse_args()
    HIDDEN = args.hidden
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-promotion-"))
    ok = True
    try:
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        if args.kind in ("repository", "both"):
            ok &= bench_repository(args.promotions, work)
        if args.kind in ("docker", "both"):
            ok &= bench_docker(args.promotions, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntargets (p95): overhead <= {TARGET_OVERHEAD_S:g} s, rollback <= {TARGET_ROLLBACK_S:g} s, "
          f"zero failures: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
