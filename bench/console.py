"""Console render times with 10,000 versions in the database.

    .venv/bin/python bench/console.py [--versions 10000] [--runs 50] [--keep]

Sets up a private instance (its own MODELYARD_VAR_DIR and SQLite file, migrated), fills it with one
model holding ``--versions`` versions (each with measured metrics, every 100th with a release),
ten small models around it, and times ``--runs`` renders of each console page through Django's
test client (URL routing, middleware, selectors, templates, SVG charts: the whole server side,
no network). Prints p50/p95 per page in ms and the SQL query count. Exit status 1 when a p95 is
over the target (100 ms).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_P95_MS = 100.0


def setup(var_dir: Path) -> None:
    os.environ["MODELYARD_VAR_DIR"] = str(var_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("MODELYARD_LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seed(n: int) -> dict[str, int]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from metrics.models import VersionMetrics
    from registry.models import Dataset, ModelVersion, RegisteredModel
    from releases.models import Environment, Release

    user_model = get_user_model()
    alice = user_model.objects.create_user("alice", password="bench-password-1")
    bob = user_model.objects.create_superuser("bob", password="bench-password-2")
    with transaction.atomic():
        for i in range(10):
            RegisteredModel.objects.create(name=f"small-{i}", owner=alice, task="classification")
        model = RegisteredModel.objects.create(name="big", owner=alice, task="classification")
        ds = Dataset.objects.create(model=model, name="eval.npz", role="eval", sha256="0" * 64, size_bytes=1,
                                    arrays={"x": {"shape": [1, 64], "dtype": "float32"}}, created_by=alice)
        root = ModelVersion.objects.create(model=model, number=1, format="saved_model",
                                           artifact_sha256=hashlib.sha256(b"1").hexdigest(), artifact_size=10_000,
                                           artifact_filename="m.zip", created_by=alice)
        batch = [ModelVersion(model=model, number=i, format="saved_model", parent=root, source="optimization",
                              artifact_sha256=hashlib.sha256(str(i).encode()).hexdigest(), artifact_size=5_000 + i,
                              artifact_filename="m.zip", metadata={"recipe": {"technique": "prune"}},
                              created_by=alice) for i in range(2, n + 1)]
        ModelVersion.objects.bulk_create(batch, batch_size=1000)
        RegisteredModel.objects.filter(pk=model.pk).update(latest_version=n)  # as version_create keeps it
        versions = list(ModelVersion.objects.filter(model=model).order_by("number"))
        VersionMetrics.objects.bulk_create([VersionMetrics(
            version=v, eval_dataset=ds, reference=None if v.number == 1 else root,
            metrics={"accuracy": 0.97 - v.number / 1e6, "gzipped_bytes": 4000 - v.number / 10,
                     "size_bytes": 9000, "latency_ms_p50": 0.2}) for v in versions], batch_size=1000)
        production = Environment.objects.get(name="production")
        Release.objects.create(version=root, environment=production, requester=alice, state="live")
        Release.objects.bulk_create([Release(version=v, environment=production, requester=alice,
                                             state="superseded") for v in versions[1::100]])
        pending = Release.objects.create(version=versions[-1], environment=production, requester=alice,
                                         state="pending_approval", gates_passed=True, gates=[])
    return {"release": pending.pk, "bob": bob.pk}


def measure(runs: int, ids: dict[str, int]) -> list[tuple[str, float, float, int]]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(pk=ids["bob"]))
    pages = {"models": "/", "model": "/models/big/", "compare": "/models/big/compare/",
             "release": f"/releases/{ids['release']}/"}
    rows = []
    for name, url in pages.items():
        client.get(url)  # warm: template compilation, first connection
        queries: list[str] = []
        with connection.execute_wrapper(lambda execute, sql, *a: queries.append(sql) or execute(sql, *a)):
            assert client.get(url).status_code == 200, url
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
        times.sort()
        rows.append((name, statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], len(queries)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    var_dir = Path(tempfile.mkdtemp(prefix="bench-console-"))
    try:
        setup(var_dir)
        started = time.perf_counter()
        ids = seed(args.versions)
        print(f"seeded {args.versions} versions in {time.perf_counter() - started:.1f} s ({var_dir})")
        rows = measure(args.runs, ids)
    finally:
        if not args.keep:
            shutil.rmtree(var_dir, ignore_errors=True)
    print(f"\n{'page':<10} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
    for name, p50, p95, queries in rows:
        print(f"{name:<10} {p50:8.1f} {p95:8.1f} {queries:8d}")
    missed = [r[0] for r in rows if r[2] > TARGET_P95_MS]
    print(f"\ntarget p95 <= {TARGET_P95_MS:.0f} ms: {'missed on ' + ', '.join(missed) if missed else 'met'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
