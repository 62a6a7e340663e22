"""Small-model uploads over HTTP: the registering cost a client sees for a tiny artifact.

    .venv/bin/python bench/small_upload.py [--runs 20] [--formats tflite,zip,keras,h5]

It starts a private instance (see ``bench/upload.py``: its own ``MODELYARD_VAR_DIR``, a superuser
and API token, gunicorn with one sync worker on a free port), builds the tiny tf_keras model of the
tests (8 -> 16 -> 3) in every upload format in a subprocess (this process never loads
TensorFlow), uploads one of each once as a warm-up, then ``--runs`` rounds of one upload per format
(formats interleaved within a round), wall clock from the first byte to the 201.

It prints p50 / p90 / min per format, the web worker's RSS after the run and whether the worker
has TensorFlow loaded (``/proc/PID/maps`` names ``_pywrap_tensorflow``), and the inspector
processes under the worker.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upload import PY, REPO, Server, app_env, children, log, proc_status, setup_app, start_server  # noqa: E402

MODEL = "bench-small"
BUILD = """
import sys, zipfile
from pathlib import Path
import tensorflow as tf
import tf_keras as keras

out = Path(sys.argv[1])
keras.utils.set_random_seed(0)
inputs = keras.Input(shape=(8,), name="features")
hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(hidden), name="tiny")
model.save(str(out / "sm"), save_format="tf")
with zipfile.ZipFile(out / "model.zip", "w", zipfile.ZIP_DEFLATED) as zf:
    for p in sorted((out / "sm").rglob("*")):
        zf.write(p, str(p.relative_to(out / "sm")))
model.save(str(out / "model.keras"))
model.save(str(out / "model.h5"))
(out / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
"""


def build(root: Path, env: dict[str, str]) -> dict[str, Path]:
    done = subprocess.run([str(PY), "-c", BUILD, str(root)], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not build the models:\n{done.stderr[-3000:]}")
    return {fmt: root / f"model.{fmt}" for fmt in ("tflite", "zip", "keras", "h5")}


def post(server: Server, token: str, path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        resp = requests.post(f"{server.base_url}/api/v1/models/{MODEL}/versions/",
                             files={"artifact": (path.name, fh)}, headers={"Authorization": f"Token {token}"},
                             timeout=600)
    seconds = time.perf_counter() - t0
    if resp.status_code != 201:
        raise RuntimeError(f"upload of {path.name} answered {resp.status_code}: {resp.text[:2000]}")
    return seconds


def has_tensorflow(pid: int) -> bool:
    try:
        return "_pywrap_tensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def report(times: dict[str, list[float]], worker: int, load: tuple[float, float]) -> None:
    print()
    print(f"Small-model uploads (tiny tf_keras model, {len(next(iter(times.values())))} runs per format, "
          f"gunicorn 1 sync worker; {os.cpu_count()} CPUs, load average {load[0]:.1f} -> {load[1]:.1f})")
    print()
    print("| format | bytes | p50 ms | p90 ms | min ms |")
    print("|---|---:|---:|---:|---:|")
    for fmt, values in times.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        print(f"| {fmt} | {SIZES[fmt]} | {statistics.median(values) * 1000:.0f} | {p90 * 1000:.0f} | "
              f"{ordered[0] * 1000:.0f} |")
    inspectors = children(worker)
    print()
    print(f"Web worker {worker}: RSS {proc_status(worker)['VmRSS'] / 2**20:.0f} MiB, TensorFlow loaded: "
          f"{'yes' if has_tensorflow(worker) else 'no'}; child processes: "
          + (", ".join(f"{p} ({proc_status(p)['VmRSS'] / 2**20:.0f} MiB, TensorFlow "
                       f"{'yes' if has_tensorflow(p) else 'no'})" for p in inspectors) or "none"))


SIZES: dict[str, int] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--formats", default="tflite,zip,keras,h5")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="modelyard-bench-small-"))
    server: Server | None = None
    try:
        env = app_env(root, 0)
        token = setup_app(env)
        artifacts = {fmt: path for fmt, path in build(root, env).items() if fmt in args.formats.split(",")}
        SIZES.update({fmt: path.stat().st_size for fmt, path in artifacts.items()})
        server = start_server(root, env, "config.wsgi:application", None)
        resp = requests.post(f"{server.base_url}/api/v1/models/", json={"name": MODEL, "task": "classification"},
                             headers={"Authorization": f"Token {token}"}, timeout=60)
        if resp.status_code != 201:
            raise RuntimeError(f"model creation answered {resp.status_code}: {resp.text[:1000]}")
        worker = server.worker_pid()
        load_start = os.getloadavg()[0]
        log("warm-up: one upload per format")
        for path in artifacts.values():
            post(server, token, path)
        times: dict[str, list[float]] = {fmt: [] for fmt in artifacts}
        for run in range(args.runs):
            for fmt, path in artifacts.items():
                times[fmt].append(post(server, token, path))
        if server.worker_pid() != worker:
            raise RuntimeError("the gunicorn worker was replaced during the benchmark")
        report(times, worker, (load_start, os.getloadavg()[0]))
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
