"""The `modelyard` CLI as a pipeline runs it: installed with pip into a fresh virtualenv, run as
a subprocess against a live app (live_server + a real task worker + a real model server).
A real TCP proxy breaks the first push twice (cut mid-body, then response lost): one version."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from integrations import tokens, webhooks
from registry.models import ModelVersion
from releases.models import Endpoint, Environment, Release
from tests import factories
from tests.conftest import PASSWORD, files_under
from tests.integrations.conftest import verify
from tests.integrations.proxy import CuttingProxy
from tests.processes import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def modelyard_bin(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """`python -m venv` + `pip install ./client`: what a pipeline does (dependencies from the
    package index; ~30 s here, printed)."""
    venv = tmp_path_factory.mktemp("client-venv")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT / "client")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"\nclient venv + pip install ./client: {time.monotonic() - started:.1f}s")
    assert "django" not in subprocess.run([str(venv / "bin" / "pip"), "list"], capture_output=True,
                                          text=True).stdout.lower()
    return venv / "bin" / "modelyard"


@pytest.fixture
def cli(modelyard_bin, tmp_path, live_server):  # type: ignore[no-untyped-def]
    config = tmp_path / "home" / "modelyard.json"

    def run(*args: str, token: str | None = None, url: str | None = None, stdin: str | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "MODELYARD_CONFIG": str(config)}
        if token:
            env["MODELYARD_TOKEN"] = token
        if url or token:
            env["MODELYARD_URL"] = url or live_server.url
        return subprocess.run([str(modelyard_bin), "--backoff", "0.2", *args], input=stdin, capture_output=True,
                              text=True, env=env, timeout=timeout, cwd=tmp_path)

    run.config = config  # type: ignore[attr-defined]
    return run


def cancel_when_running(actor) -> None:  # type: ignore[no-untyped-def]
    """Cancel the next prune job once a worker runs it (the CLI is waiting on it meanwhile)."""
    from django.db import connection

    from optimization import services
    from optimization.models import OptimizationJob

    try:
        job = wait_for(lambda: OptimizationJob.objects.filter(status="running", recipe__technique="prune").first(),
                       timeout=120, what="the prune job to run")
        services.job_cancel(job=job, actor=actor)
    finally:
        connection.close()


def ok(result: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.mark.django_db(transaction=True)
def test_a_pipeline_pushes_optimizes_releases_and_rolls_back(loopback_allowed, receiver, cli, live_server, alice, bob,
                                                              artifacts, allowed_server, worker, storage_root,
                                                              tmp_path):
    server = allowed_server
    hook = webhooks.subscription_create(owner=alice, url=receiver.url("/hook"), events=webhooks.EVENTS)
    production = Environment.objects.get(name="production")
    Environment.objects.filter(pk=production.pk).update(build_image=False)  # image builds: tests/releases/test_builds
    Endpoint.objects.create(name="ep-1", environment=production, kind="model_repository",
                            grpc_target=f"127.0.0.1:{server.grpc_port}", repository_path=str(server.base_dir),
                            config_path=str(server.config_path))
    eval_npz = tmp_path / "eval.npz"
    eval_npz.write_bytes(factories.npz_bytes(x=np.random.default_rng(0).normal(size=(32, 8)).astype("float32"),
                                             y=np.zeros(32, "int64")))

    # login: password -> a scoped token in a 0600 file (no approve scope by default)
    login = ok(cli("--url", live_server.url, "login", "--username", "alice", "--password-stdin", stdin=PASSWORD + "\n"))
    assert "Logged in" in login.stdout
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    saved = json.loads(cli.config.read_text())
    assert saved["token"].startswith("myd_") and saved["url"] == live_server.url

    # push through a proxy that cuts the first upload mid-body and loses the second's answer
    proxy = CuttingProxy(int(live_server.url.rsplit(":", 1)[1]), b"POST /api/v1/models/digits/versions/",
                         plan=["cut_mid_body", "drop_response"], cut_after=artifacts["zip"].stat().st_size // 2)
    pushed = ok(cli("--url", f"http://127.0.0.1:{proxy.port}", "push", str(artifacts["zip"]), "--model", "digits",
                    "--tag", "nightly", "--metadata", "git_sha=abc123", "--dataset", f"eval={eval_npz}", "--json"))
    proxy.close()
    assert proxy.seen == ["cut_mid_body", "drop_response", "pass"]
    assert pushed.stderr.count("retrying") == 2
    version = json.loads(pushed.stdout)
    assert version["version"] == 1 and version["metadata"] == {"git_sha": "abc123"} and version["tags"] == ["nightly"]
    assert version["datasets"][0]["role"] == "eval"
    assert ModelVersion.objects.filter(model__name="digits").count() == 1
    assert len(files_under(storage_root / "blobs")) == 2  # the artifact and the dataset, once each

    # optimize --wait: live stage lines, the variant and a metrics table
    optimized = ok(cli("--url", live_server.url, "optimize", "--model", "digits", "--version", "1",
                       "--recipe", "ptq_dynamic", "--wait", "--interval", "0.5"))
    assert "[succeeded]" in optimized.stdout and "variant: digits v2" in optimized.stdout
    assert "METRIC" in optimized.stdout and "accuracy" in optimized.stdout
    refused = cli("--url", live_server.url, "optimize", "--model", "digits", "--version", "1", "--recipe",
                  '{"technique": "prune", "params": {"sparsity": 0.5, "epochs": 1}}', "--wait", "--interval", "0.5")
    assert refused.returncode == 1 and "role=train" in refused.stderr  # the server's message, verbatim
    # a job that ends badly exits 6: a long prune, cancelled (through the service) while the CLI waits
    train_npz = tmp_path / "train.npz"
    train_npz.write_bytes(factories.npz_bytes(x=np.random.default_rng(1).normal(size=(32, 8)).astype("float32"),
                                              y=np.zeros(32, "int64")))
    ok(cli("--url", live_server.url, "push", str(artifacts["zip"]), "--model", "digits", "--dataset",
           f"train={train_npz}"))  # the same bytes again: v3's blob is v1's; the train dataset is new
    stopper = threading.Thread(target=cancel_when_running, args=(alice,))
    stopper.start()
    cancelled = cli("--url", live_server.url, "optimize", "--model", "digits", "--version", "1", "--recipe",
                    '{"technique": "prune", "params": {"sparsity": 0.5, "epochs": 300}}', "--wait",
                    "--interval", "0.5")
    stopper.join()
    assert cancelled.returncode == 6, cancelled.stdout + cancelled.stderr
    assert "cancelled" in cancelled.stderr

    # release v1: request + submit (gates printed), alice cannot approve (scope: exit 7), bob can
    _, bob_token = tokens.token_create(actor=bob, name="approver", scopes=["releases:read", "releases:approve"])
    requested = ok(cli("--url", live_server.url, "release", "request", "--model", "digits", "--version", "1",
                       "--environment", "production", "--json"))
    first = json.loads(requested.stdout)
    assert first["state"] == "pending_approval" and first["gates_passed"] is True
    assert "GATE" in requested.stderr and "max_accuracy_drop" in requested.stderr
    denied = cli("--url", live_server.url, "release", "approve", str(first["id"]), "--comment", "self")
    assert denied.returncode == 7 and "releases:approve" in denied.stderr
    ok(cli("release", "approve", str(first["id"]), "--comment", "metrics fine", "--wait-for", "approved",
           token=bob_token))
    live = ok(cli("--url", live_server.url, "release", "promote", str(first["id"]), "--wait-for", "live",
                  "--interval", "0.5", "--timeout", "300"))
    assert "live" in live.stdout
    assert Release.objects.get(pk=first["id"]).state == "live"

    # v4 (other weights): no metrics, so the accuracy gate fails -> exit 3; bob overrides
    ok(cli("--url", live_server.url, "push", str(artifacts["zip2"]), "--model", "digits"))
    gated = cli("--url", live_server.url, "release", "request", "--model", "digits", "--version", "4",
                "--environment", "production")
    assert gated.returncode == 3, gated.stdout + gated.stderr
    assert "FAIL" in gated.stdout
    second = Release.objects.get(version__number=4)
    timed_out = cli("--url", live_server.url, "release", "show", str(second.pk), "--wait-for", "approved",
                    "--timeout", "1", "--interval", "0.3")
    assert timed_out.returncode == 5
    ok(cli("release", "approve", str(second.pk), "--comment", "accepted", "--override-reason", "measured offline",
           token=bob_token))
    ok(cli("--url", live_server.url, "release", "promote", str(second.pk), "--wait-for", "live", "--interval", "0.5",
           "--timeout", "300"))
    served = server.client.predict("digits", {"features": np.ones((1, 8), np.float32)}, label="stable")[1]
    assert served == 4

    rolled = ok(cli("--url", live_server.url, "release", "rollback", str(second.pk), "--comment", "bad canary",
                    "--json"))
    assert json.loads(rolled.stdout)["state"] == "rolled_back"
    assert server.client.predict("digits", {"features": np.ones((1, 8), np.float32)}, label="stable")[1] == 1

    # a third request, rejected by bob: waiting for approval exits 4
    ok(cli("--url", live_server.url, "release", "request", "--model", "digits", "--version", "1", "--environment",
           "production"))
    third = Release.objects.filter(version__number=1).order_by("-pk").first()
    ok(cli("release", "reject", str(third.pk), "--comment", "not today", token=bob_token))
    rejected = cli("--url", live_server.url, "release", "show", str(third.pk), "--wait-for", "live")
    assert rejected.returncode == 4 and "not today" in rejected.stderr

    # listings, alias, pull (digest verified)
    listed = json.loads(ok(cli("--url", live_server.url, "versions", "ls", "digits", "--json")).stdout)
    assert [v["version"] for v in listed] == [4, 3, 2, 1]
    assert "digits" in ok(cli("--url", live_server.url, "models", "ls")).stdout
    assert str(second.pk) in ok(cli("--url", live_server.url, "releases", "ls", "--model", "digits")).stdout
    ok(cli("--url", live_server.url, "alias", "set", "digits", "champion", "1"))
    pulled = json.loads(ok(cli("--url", live_server.url, "pull", "--model", "digits", "--version", "champion",
                               "-o", str(tmp_path / "out.zip"), "--json")).stdout)
    assert pulled["sha256"] == hashlib.sha256((tmp_path / "out.zip").read_bytes()).hexdigest() == version["sha256"]

    # errors: the server's message, exit 1; usage errors exit 2; a bad token exits 7
    missing = cli("--url", live_server.url, "release", "show", "999999")
    assert missing.returncode == 1 and "No release 999999" in missing.stderr
    assert cli("--url", live_server.url, "push").returncode == 2
    assert cli("models", "ls", token="myd_not-a-token").returncode == 7

    # the pipeline (and Slack, a deploy system) heard of every change, signed, in order per object
    expected = {
        ("releases.release", first["id"]): ["release.pending_approval", "release.approved", "release.live"],
        ("releases.release", second.pk): ["release.pending_approval", "release.approved", "release.live",
                                          "release.rolled_back"],
        ("releases.release", third.pk): ["release.pending_approval", "release.rejected"],
    }
    wait_for(lambda: len(receiver.at("/hook")) >= 14, timeout=60, what="every webhook")  # 4 versions, 1 job, 9 release changes
    time.sleep(1)
    events = [verify(hook.secret, r) for r in receiver.at("/hook")]
    assert len(events) == 14  # a cancelled job is not a failed one: no event
    assert len({e["id"] for e in events}) == len(events)  # each once
    for (kind, pk), names in expected.items():
        assert [e["event"] for e in events if e["object"]["type"] == kind and e["object"]["id"] == pk] == names
    created = [e["object"]["version"] for e in events if e["event"] == "model_version.created"]
    assert sorted(created) == [1, 2, 3, 4]
    assert [e["object"]["variant"] for e in events if e["event"] == "optimization_job.succeeded"] == [2]
