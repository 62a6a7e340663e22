"""Worker fleet throughput: jobs per minute with 1 and 2 task workers, and what running workers add
to the latency of a REST read.

    createdb modelyard_bench
    DATABASE_URL='postgres:///modelyard_bench?host=/var/run/postgresql' .venv/bin/python bench/fleet.py

Without DATABASE_URL it uses a SQLite file in a temporary directory. The database must be a
disposable one: the benchmark migrates it and fills it. Prints a table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VAR = Path(tempfile.mkdtemp(prefix="modelyard-bench-fleet-"))
os.environ.setdefault("MODELYARD_VAR_DIR", str(VAR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from optimization import services  # noqa: E402
from optimization.models import OptimizationJob  # noqa: E402
from registry.models import ModelVersion, RegisteredModel  # noqa: E402


def start_workers(count: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "MODELYARD_VAR_DIR": str(VAR)}
    return [subprocess.Popen([sys.executable, "manage.py", "db_worker", "--queue-name", "cpu", "--interval", "0.2",
                              "--no-reload", "--no-startup-delay"], cwd=ROOT, env=env,
                             stdout=open(VAR / f"worker-{count}-{i}.log", "wb"), stderr=subprocess.STDOUT)
            for i in range(count)]


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        proc.terminate()
    for proc in workers:
        proc.wait(60)


def enqueue(version: ModelVersion, user, count: int) -> list[int]:  # type: ignore[no-untyped-def]
    return [services.job_create(source=version, recipe={"technique": "ptq_dynamic"}, actor=user).pk
            for _ in range(count)]


def wait_finished(ids: list[int], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while OptimizationJob.objects.filter(pk__in=ids).exclude(status__in=OptimizationJob.FINISHED).exists():
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not finish in time")
        time.sleep(0.2)
    failed = OptimizationJob.objects.filter(pk__in=ids).exclude(status="succeeded")
    if failed.exists():
        raise SystemExit(f"failed jobs: {[(j.pk, j.error) for j in failed]}")


def read_latency(client: Client, runs: int) -> float:
    """Median ms of GET /api/v1/optimization-jobs/ (a list that joins models and versions)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        assert client.get("/api/v1/optimization-jobs/?page_size=50").status_code == 200
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    return statistics.median(times)


def run(workers: int, jobs: int, version: ModelVersion, user, client: Client) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    procs = start_workers(workers)
    try:
        warm = enqueue(version, user, workers)  # each worker imports TensorFlow on its first job
        wait_finished(warm)
        ids = enqueue(version, user, jobs)
        started = time.monotonic()
        latency = read_latency(client, 40)  # while the workers run the jobs
        wait_finished(ids)
        elapsed = time.monotonic() - started
    finally:
        stop(procs)
    return jobs / elapsed * 60, latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8, help="ptq_dynamic jobs per run")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.filter(is_superuser=True).first() or get_user_model().objects.create_superuser(
        "bench", password="bench-password-123")
    call_command("seed_demo", verbosity=0)
    version = RegisteredModel.objects.get(name="digits-demo").versions.order_by("number").first()
    client = Client()
    client.force_login(user)
    idle = read_latency(client, 40)
    rows = [("none (idle)", "–", f"{idle:.1f}")]
    for workers in (1, 2):
        per_minute, latency = run(workers, args.jobs, version, user, client)
        rows.append((str(workers), f"{per_minute:.1f}", f"{latency:.1f}"))
    print(f"\nbench/fleet.py: {args.jobs} ptq_dynamic jobs per run on {django.db.connection.vendor}, "
          f"{os.cpu_count()} cores\n")
    print(f"| {'workers':<12} | {'jobs/min':>8} | {'GET jobs list p50 ms':>20} |")
    print(f"|{'-' * 14}|{'-' * 10}|{'-' * 22}|")
    for workers, per_minute, latency in rows:
        print(f"| {workers:<12} | {per_minute:>8} | {latency:>20} |")


if __name__ == "__main__":
    main()
