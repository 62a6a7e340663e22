"""Registry calls side by side with MLflow's model registry server, on the same data.

    .venv/bin/python bench/registry.py [--versions 10000] [--runs 100] [--load-seconds 5]
                                       [--clients 8] [--mlflow-version 3.17.2] [--keep]

What it does, inside one private temporary directory removed at the end (``--keep`` keeps it):

1. installs MLflow (pinned, ``--mlflow-version``) into its own virtualenv, ``var/bench-mlflow-venv``
   by default (reused when it already holds that version): MLflow is never a dependency of the
   project and never imported by this process;
2. builds one real ~1 KB ``.tflite`` with TensorFlow, once, in a subprocess;
3. seeds both registries with the same data: ``--models`` small models of equal size plus one
   model ``big`` holding half the ``--versions``; every version tagged ``team-a``, every 4th also
   ``candidate``; alias ``champion`` on big's newest version. Modelyard: its own
   ``MODELYARD_VAR_DIR`` (SQLite, migrated), the models, big's first version (the real upload,
   inspected) and the alias through the service functions, the other versions copied from that
   one with bulk ORM inserts (with their tags and ``version.create`` audit rows). MLflow: a SQLite
   file: each model and its first version through MLflow's own registry store (``SqlAlchemyStore``,
   what its server calls), the copies through MLflow's ORM classes in one transaction;
4. starts both servers with 2 worker processes each: Modelyard under gunicorn
   (``-c config/gunicorn.py config.wsgi:application --workers 2``), MLflow with
   ``mlflow server --backend-store-uri sqlite:///… --workers 2``. Modelyard is called with a
   scoped API token of a user in the ``ml-engineers`` group (as a CI pipeline calls it); MLflow's
   server has no authentication;
5. warms both up (Modelyard's upload inspectors import TensorFlow once per worker), then
   ``--runs`` rounds: each operation once against each server, the order of the two servers
   alternating from round to round; one client, one request at a time, wall clock from the
   request to the last byte of the answer;
6. throughput of the three lists: ``--clients`` client processes send the same GET back to back
   for ``--load-seconds``; the servers take turns, twice each.

It prints p50 per operation for both and the ratio Modelyard / MLflow (target ≤ 1.0), and
requests/s of the lists under load with the ratio (target ≥ 2.0), each beside the CPU the server's
whole process tree spent per call (read from /proc: it moves much less than wall clock when other
work shares the machine). Exit status 1 when a target is missed. The operations:

| operation | Modelyard | MLflow |
|---|---|---|
| list models (50 rows) | ``GET /api/v1/models/?page_size=50`` | ``GET registered-models/search?max_results=50`` |
| list versions of one model (50) | ``GET …/models/big/versions/?page_size=50`` | ``GET model-versions/search`` name='big', version_number DESC |
| … filtered by tag | the same with ``&tag=candidate`` | the same with ``and tags.candidate='true'`` |
| get one version | ``GET …/versions/{n}/`` | ``GET model-versions/get`` |
| resolve alias | ``GET …/aliases/champion/`` | ``GET registered-models/alias`` |
| register a version | ``POST …/versions/`` (multipart, the 1 KB ``.tflite``) | ``POST model-versions/create`` (a URI) |
| alias move | ``PUT …/aliases/champion/`` | ``POST registered-models/alias`` |

MLflow stores only a URI at registration; Modelyard receives, hashes, inspects and stores the file.
Numbers are wall clock on a shared machine: the report prints the load average beside them.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upload import PY, REPO, app_env, children, cpu_seconds, free_port, log, manage  # noqa: E402

MLFLOW_VERSION = "3.17.2"
BIG = "big"
TAG, CANDIDATE, ALIAS = "team-a", "candidate", "champion"
PAGE = 50
TARGET_P50_RATIO = 1.0
TARGET_THROUGHPUT_RATIO = 2.0

BUILD_TFLITE = """
import sys
import tensorflow as tf
import tf_keras as keras

keras.utils.set_random_seed(0)
inputs = keras.Input(shape=(4,), name="features")
hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="probs")(hidden), name="bench")
open(sys.argv[1], "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
"""

# Run by the project's interpreter with django.setup(): the public services for what has one,
# bulk inserts (same fields, tags and audit rows) for the thousands of copies.
SEED_MODELYARD = """
import json, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import transaction
from integrations.tokens import token_create
from registry import services
from registry.models import AuditEvent, ModelVersion, RegisteredModel, Tag, newest_version_number
from registry.uploads import StagedFile

plan = json.loads(sys.argv[1])
call_command("ensure_admin", verbosity=0)  # the standard groups
user = get_user_model().objects.create_user("bench", password="bench-password")
user.groups.add(Group.objects.get(name="ml-engineers"))
_, secret = token_create(actor=user, name="bench", scopes=["registry:read", "registry:write"])
first = None
for name, count in plan["models"].items():
    model = services.model_create(name=name, owner=user, task="classification")
    if first is None:
        first = services.version_create(model=model, staged=StagedFile.from_path(plan["tflite"]), actor=user,
                                        tags=[plan["tag"]])
tags = {t: Tag.objects.get_or_create(name=t)[0] for t in (plan["tag"], plan["candidate"])}
copied = ["format", "artifact_sha256", "artifact_size", "artifact_filename", "signature", "framework", "source",
          "status", "metadata"]
with transaction.atomic():
    for model in RegisteredModel.objects.all():
        start = 2 if model.pk == first.model_id else 1
        rows = ModelVersion.objects.bulk_create([
            ModelVersion(model=model, number=n, created_by=user, **{f: getattr(first, f) for f in copied})
            for n in range(start, plan["models"][model.name] + 1)])
        links = [ModelVersion.tags.through(modelversion_id=v.pk, tag_id=tags[plan["tag"]].pk) for v in rows]
        links += [ModelVersion.tags.through(modelversion_id=v.pk, tag_id=tags[plan["candidate"]].pk)
                  for v in rows if v.number % 4 == 0]
        ModelVersion.tags.through.objects.bulk_create(links)
        AuditEvent.objects.bulk_create([
            AuditEvent(actor=user, action="version.create", object_type="registry.modelversion",
                       object_id=str(v.pk), object_repr=f"{model.name} v{v.number}", model=model, version=v,
                       after={"number": v.number, "sha256": v.artifact_sha256, "format": v.format,
                              "source": v.source, "parent": None}) for v in rows])
RegisteredModel.objects.update(latest_version=newest_version_number())  # what version_create keeps
big = RegisteredModel.objects.get(name=plan["big"])
services.alias_set(model=big, name=plan["alias"], version=services.get_version(big, plan["models"][plan["big"]]),
                   actor=user)
print("TOKEN=" + secret)
"""

# Run by the MLflow virtualenv's interpreter: MLflow's own registry store (the code its server runs)
# registers each model's first version; its own ORM classes insert the copies in one transaction.
SEED_MLFLOW = """
import json, logging, sys
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.store.model_registry.dbmodels.models import SqlModelVersion, SqlModelVersionTag
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.time import get_current_time_millis

logging.getLogger("mlflow").setLevel(logging.WARNING)
plan = json.loads(sys.argv[1])
store = SqlAlchemyStore(plan["uri"])

def tags(n):
    return {plan["tag"]: "true", **({plan["candidate"]: "true"} if n % 4 == 0 else {})}

def source(name, n):
    return f"s3://bench-artifacts/{name}/{n}/model.tflite"

for name in plan["models"]:
    store.create_registered_model(name)
    store.create_model_version(name, source(name, 1), tags=[ModelVersionTag(k, v) for k, v in tags(1).items()])
with store.ManagedSessionMaker() as session:
    for name, count in plan["models"].items():
        for n in range(2, count + 1):
            now = get_current_time_millis()
            version = store._with_workspace_field(SqlModelVersion(
                name=name, version=n, creation_time=now, last_updated_time=now, source=source(name, n),
                storage_location=source(name, n)))
            version.model_version_tags = [store._with_workspace_field(SqlModelVersionTag(
                name=name, version=n, key=k, value=v)) for k, v in tags(n).items()]
            session.add(version)
store.set_registered_model_alias(plan["big"], plan["alias"], str(plan["models"][plan["big"]]))
"""


# --- Servers ---------------------------------------------------------------------------------

@dataclass
class Target:
    """One server under test and how to call it."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    headers: dict[str, str]
    log_path: Path
    conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        """One request on a kept connection (reopened when the server closed it); status, body, seconds."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            seconds = time.perf_counter() - t0
            if resp.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return resp.status, data, seconds
        raise AssertionError("unreachable")

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def processes(self) -> list[int]:
        """The server's whole process tree (master, workers, Modelyard's inspectors)."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children(pid)
        return found

    def cpu(self, pids: list[int]) -> float:
        """CPU seconds (user + system) used so far by these processes of the server."""
        total = 0.0
        for pid in pids:
            try:
                total += cpu_seconds(pid)
            except OSError:  # an inspector replaced meanwhile
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group: workers and inspectors too
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start(name: str, argv: list[str], env: dict[str, str], port: int, health: str, log_path: Path,
          headers: dict[str, str], cwd: Path, workers: int = 0) -> Target:
    """Start a server in its own process group; return once it answers ``health`` (and, if
    ``workers``, once that many worker processes run under it)."""
    out = open(log_path, "ab")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    target = Target(name, proc, port, headers, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if target.call("GET", health)[0] == 200 and len(target.workers()) >= workers:
                return target
        except OSError:  # not listening yet
            target.conn = None
        time.sleep(0.3)
    target.stop()
    raise RuntimeError(f"{name} did not answer {health} within 120 s:\n{log_path.read_text()[-3000:]}")


def start_modelyard(root: Path, env: dict[str, str], token: str) -> Target:
    port = free_port()
    # config/gunicorn.py holds the request-line limits every start of the web process shares.
    config = ["-c", "config/gunicorn.py"] if (REPO / "config" / "gunicorn.py").exists() else []
    argv = [str(REPO / ".venv" / "bin" / "gunicorn"), *config, "config.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", "2", "--timeout", "600", "--graceful-timeout", "5"]
    return start("Modelyard", argv, env, port, "/healthz", root / "gunicorn.log",
                 {"Authorization": f"Bearer {token}", "Accept": "application/json"}, REPO, workers=2)


def start_mlflow(root: Path, venv: Path, db: Path) -> Target:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DJANGO_", "MODELYARD_"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # its job runners (huey) serve no registry call
    argv = [str(venv / "bin" / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
            "--default-artifact-root", str(root / "mlflow-artifacts"), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "2"]
    return start("MLflow", argv, env, port, "/health", root / "mlflow.log", {"Accept": "application/json"}, root)


# --- Setup -----------------------------------------------------------------------------------

def mlflow_venv(path: Path, version: str) -> Path:
    """A virtualenv holding mlflow==version, made (or remade) here; reused when it already does."""
    mlflow = path / "bin" / "mlflow"
    if mlflow.exists():
        done = subprocess.run([str(mlflow), "--version"], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip().endswith(version):
            return path
        shutil.rmtree(path)
    log(f"installing mlflow=={version} into {path} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(path / "bin" / "pip"), "install", "-q", f"mlflow=={version}"], check=True)
    return path


def run_checked(argv: list[str], what: str, **kwargs: Any) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def plan(versions: int, small_models: int) -> dict[str, Any]:
    per_small = versions // 2 // small_models
    models = {BIG: versions - per_small * small_models}
    models.update({f"model-{i:03d}": per_small for i in range(small_models)})
    return {"models": models, "big": BIG, "tag": TAG, "candidate": CANDIDATE, "alias": ALIAS}


def seed_modelyard(env: dict[str, str], layout: dict[str, Any], tflite: Path) -> str:
    manage(env, "migrate", "--noinput", "-v0")
    out = run_checked([str(PY), "-c", SEED_MODELYARD, json.dumps({**layout, "tflite": str(tflite)})],
                      "seeding Modelyard", cwd=REPO, env=env)
    return out.rsplit("TOKEN=", 1)[1].strip()


def seed_mlflow(venv: Path, db: Path, layout: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DJANGO_", "MODELYARD_"))}
    run_checked([str(venv / "bin" / "python"), "-c", SEED_MLFLOW, json.dumps({**layout, "uri": f"sqlite:///{db}"})],
                "seeding MLflow", cwd=db.parent, env=env)


# --- Operations ------------------------------------------------------------------------------

def multipart(field_name: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "modelyard-bench-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Operation:
    """One registry call on both servers: (method, path, body, headers) builders and a check."""

    label: str
    modelyard: Callable[[int], tuple[str, str, bytes | None, dict[str, str]]]
    mlflow: Callable[[int], tuple[str, str, bytes | None, dict[str, str]]]
    expect: Callable[[str, Any], None]
    load: bool = False  # also measured under concurrent clients
    times: dict[str, list[float]] = field(default_factory=lambda: {"Modelyard": [], "MLflow": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"Modelyard": [], "MLflow": []})


def _get(path: str) -> Callable[[int], tuple[str, str, bytes | None, dict[str, str]]]:
    return lambda i: ("GET", path, None, {})


def _json(method: str, path: str, payload: Callable[[int], dict[str, Any]]
          ) -> Callable[[int], tuple[str, str, bytes | None, dict[str, str]]]:
    return lambda i: (method, path, json.dumps(payload(i)).encode(), {"Content-Type": "application/json"})


def _rows(n: int, key_modelyard: str = "results", key_mlflow: str = "model_versions") -> Callable[[str, Any], None]:
    def check(server: str, body: Any) -> None:
        rows = body[key_modelyard] if server == "Modelyard" else body[key_mlflow]
        if len(rows) != n:
            raise RuntimeError(f"{server} answered {len(rows)} rows, expected {n}")
    return check


def _field(modelyard_key: str, mlflow_key: str) -> Callable[[str, Any], None]:
    def check(server: str, body: Any) -> None:
        if server == "Modelyard" and modelyard_key not in body or server == "MLflow" and mlflow_key not in body:
            raise RuntimeError(f"{server} answered {str(body)[:300]}")
    return check


def operations(layout: dict[str, Any], tflite: bytes) -> list[Operation]:
    big_count = layout["models"][BIG]
    mid = big_count // 2
    by = f"/api/v1/models/{BIG}"
    mf = "/api/2.0/mlflow"
    versions_q = urlencode({"filter": f"name='{BIG}'", "max_results": PAGE, "order_by": "version_number DESC"})
    tagged_q = urlencode({"filter": f"name='{BIG}' and tags.{CANDIDATE}='true'", "max_results": PAGE,
                          "order_by": "version_number DESC"})
    upload, content_type = multipart("artifact", "model.tflite", tflite)

    def alias_target(i: int) -> int:  # back and forth between two versions: every call moves it
        return big_count - 1 - i % 2

    return [
        Operation(f"list models ({PAGE} rows)", _get(f"/api/v1/models/?page_size={PAGE}"),
                  _get(f"{mf}/registered-models/search?max_results={PAGE}"),
                  _rows(PAGE, "results", "registered_models"), load=True),
        Operation(f"list versions of one model ({PAGE} rows)", _get(f"{by}/versions/?page_size={PAGE}"),
                  _get(f"{mf}/model-versions/search?{versions_q}"), _rows(PAGE), load=True),
        Operation("list versions filtered by tag", _get(f"{by}/versions/?page_size={PAGE}&tag={CANDIDATE}"),
                  _get(f"{mf}/model-versions/search?{tagged_q}"), _rows(PAGE), load=True),
        Operation("get one version", _get(f"{by}/versions/{mid}/"),
                  _get(f"{mf}/model-versions/get?name={BIG}&version={mid}"), _field("sha256", "model_version")),
        Operation("resolve alias", _get(f"{by}/aliases/{ALIAS}/"),
                  _get(f"{mf}/registered-models/alias?name={BIG}&alias={quote(ALIAS)}"),
                  _field("version", "model_version")),
        Operation("register a version (1 KB .tflite)",
                  lambda i: ("POST", f"{by}/versions/", upload, {"Content-Type": content_type}),
                  _json("POST", f"{mf}/model-versions/create",
                        lambda i: {"name": BIG, "source": f"s3://bench-artifacts/{BIG}/new-{i}/model.tflite"}),
                  _field("sha256", "model_version")),
        Operation("alias move", _json("PUT", f"{by}/aliases/{ALIAS}/", lambda i: {"version": alias_target(i)}),
                  _json("POST", f"{mf}/registered-models/alias",
                        lambda i: {"name": BIG, "alias": ALIAS, "version": str(alias_target(i))}),
                  lambda server, body: None),
    ]


def call(target: Target, op: Operation, i: int) -> float:
    build = op.modelyard if target.name == "Modelyard" else op.mlflow
    method, path, body, headers = build(i)
    status, data, seconds = target.call(method, path, body, headers)
    if status not in (200, 201):
        raise RuntimeError(f"{target.name} {op.label}: {method} {path} answered {status}: {data[:1000]!r}")
    op.expect(target.name, json.loads(data) if data else None)
    return seconds


# --- Load ------------------------------------------------------------------------------------

def _hammer(port: int, path: str, headers: dict[str, str], start_at: float, stop_at: float,
            out: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    done = failed = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
        except (http.client.HTTPException, OSError):
            conn.close()
            failed += 1
            continue
        if time.time() <= stop_at:
            done, failed = (done + 1, failed) if resp.status == 200 else (done, failed + 1)
    out.put((done, failed))


def throughput(target: Target, path: str, clients: int, seconds: float) -> tuple[float, float]:
    """Requests/s of ``clients`` processes sending ``path`` back to back, and the server's CPU
    milliseconds per request meanwhile."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 0.5
    tree = target.processes()
    before = target.cpu(tree)
    procs = [ctx.Process(target=_hammer, args=(target.port, path, target.headers, start_at,
                                               start_at + seconds, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    used = target.cpu(tree) - before
    failed = sum(f for _, f in results)
    if failed:
        raise RuntimeError(f"{target.name}: {failed} failed requests under load on {path}")
    done = sum(d for d, _ in results)
    return done / seconds, used / max(done, 1) * 1000


# --- The run ---------------------------------------------------------------------------------

def warm_up(targets: list[Target], ops: list[Operation]) -> None:
    """Each operation a few times; uploads until every gunicorn worker has a warm inspector."""
    modelyard = targets[0]
    register = next(op for op in ops if op.label.startswith("register"))
    for i in range(40):
        call(modelyard, register, 10_000 + i)
        if i >= 3 and all(children(w) for w in modelyard.workers()):
            break
    else:
        raise RuntimeError("a gunicorn worker never started an inspector during the warm-up")
    for target in targets:
        for i, op in enumerate(ops * 3):
            call(target, op, 20_000 + i)


def measure(targets: list[Target], ops: list[Operation], runs: int) -> None:
    """Wall clock of each call, and the CPU its server spent meanwhile (all its processes), which
    a busy machine changes much less than wall clock."""
    for run in range(runs):
        order = targets if run % 2 == 0 else targets[::-1]
        trees = {t.name: t.processes() for t in targets}
        for op in ops:
            for target in order:
                before = target.cpu(trees[target.name])
                op.times[target.name].append(call(target, op, run))
                op.cpu[target.name].append(target.cpu(trees[target.name]) - before)


def measure_load(targets: list[Target], ops: list[Operation], clients: int, seconds: float
                 ) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> server -> (mean requests/s, mean server CPU ms per request) over two turns each."""
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {
        op.label: {t.name: [] for t in targets} for op in ops if op.load}
    for op in ops:
        if not op.load:
            continue
        for target in targets + targets[::-1]:
            path = (op.modelyard if target.name == "Modelyard" else op.mlflow)(0)[1]
            runs[op.label][target.name].append(throughput(target, path, clients, seconds))
    return {label: {name: (statistics.mean(r for r, _ in v), statistics.mean(c for _, c in v))
                    for name, v in by.items()} for label, by in runs.items()}


def report(ops: list[Operation], rates: dict[str, dict[str, tuple[float, float]]], args: argparse.Namespace,
           layout: dict[str, Any], load: tuple[float, float], mlflow_version: str) -> bool:
    ok = True
    print()
    print(f"Registry calls, Modelyard vs MLflow {mlflow_version} (both SQLite, 2 worker processes each, "
          f"{sum(layout['models'].values()):,} versions in {len(layout['models'])} models, "
          f"{args.runs} interleaved runs, one client; {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} -> {load[1]:.1f})")
    print()
    print("| operation | Modelyard p50 ms | MLflow p50 ms | Modelyard / MLflow (p50) | target "
          "| server CPU ms per call (mean), Modelyard / MLflow |")
    print("|---|---:|---:|---:|---|---|")
    for op in ops:
        mine, theirs = (statistics.median(op.times[n]) * 1000 for n in ("Modelyard", "MLflow"))
        cpu_mine, cpu_theirs = (statistics.mean(op.cpu[n]) * 1000 for n in ("Modelyard", "MLflow"))
        ratio = mine / theirs
        met = ratio <= TARGET_P50_RATIO
        ok &= met
        print(f"| {op.label} | {mine:.2f} | {theirs:.2f} | {ratio:.2f} | ≤ {TARGET_P50_RATIO:.1f} "
              f"{'met' if met else 'MISSED'} | {cpu_mine:.1f} / {cpu_theirs:.1f} |")
    print()
    print(f"Lists under {args.clients} concurrent clients ({args.load_seconds:g} s per server, twice each, "
          "alternating; means)")
    print()
    print("| list | Modelyard req/s | MLflow req/s | Modelyard / MLflow | target "
          "| server CPU ms per request, Modelyard / MLflow |")
    print("|---|---:|---:|---:|---|---|")
    for label, by in rates.items():
        (mine, cpu_mine), (theirs, cpu_theirs) = by["Modelyard"], by["MLflow"]
        ratio = mine / theirs
        met = ratio >= TARGET_THROUGHPUT_RATIO
        ok &= met
        print(f"| {label} | {mine:.0f} | {theirs:.0f} | {ratio:.2f} | "
              f"≥ {TARGET_THROUGHPUT_RATIO:.1f} {'met' if met else 'MISSED'} | {cpu_mine:.1f} / {cpu_theirs:.1f} |")
    print()
    print("Server CPU: user + system time of the server's whole process tree (gunicorn master, workers and "
          "Modelyard's inspectors; MLflow's CLI, uvicorn and workers) while the calls ran, in clock ticks "
          "(10 ms), hence a mean: on a busy machine it moves much less than wall clock.")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=10_000, help="versions in all (half in model 'big')")
    parser.add_argument("--models", type=int, default=100, help="small models beside 'big'")
    parser.add_argument("--runs", type=int, default=100, help="interleaved rounds of every operation")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument("--mlflow-version", default=MLFLOW_VERSION)
    parser.add_argument("--mlflow-venv", type=Path, default=REPO / "var" / "bench-mlflow-venv")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and server logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers and clean up (finally)
    root = Path(tempfile.mkdtemp(prefix="modelyard-bench-registry-"))
    targets: list[Target] = []
    try:
        venv = mlflow_venv(args.mlflow_venv.resolve(), args.mlflow_version)
        env = app_env(root, 0)
        tflite = root / "model.tflite"
        run_checked([str(PY), "-c", BUILD_TFLITE, str(tflite)], "building the .tflite", cwd=REPO, env=env)
        layout = plan(args.versions, args.models)
        t0 = time.monotonic()
        token = seed_modelyard(env, layout, tflite)
        log(f"Modelyard seeded in {time.monotonic() - t0:.0f} s")
        t0 = time.monotonic()
        (root / "mlflow").mkdir()
        seed_mlflow(venv, root / "mlflow" / "mlflow.db", layout)
        log(f"MLflow seeded in {time.monotonic() - t0:.0f} s")
        targets.append(start_modelyard(root, env, token))
        targets.append(start_mlflow(root / "mlflow", venv, root / "mlflow" / "mlflow.db"))
        ops = operations(layout, tflite.read_bytes())
        log(f"warming up (.tflite of {tflite.stat().st_size} bytes)")
        warm_up(targets, ops)
        load_start = os.getloadavg()[0]
        log(f"{args.runs} rounds of {len(ops)} operations on both servers")
        measure(targets, ops, args.runs)
        log(f"lists under {args.clients} clients")
        rates = measure_load(targets, ops, args.clients, args.load_seconds)
        ok = report(ops, rates, args, layout, (load_start, os.getloadavg()[0]), args.mlflow_version)
        return 0 if ok else 1
    finally:
        for target in targets:
            target.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
