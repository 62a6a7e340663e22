"""A web process never imports TensorFlow (issue 14): not at start-up, not on any page or API call,
not to check an endpoint's health, not to inspect an upload (see also
tests/registry/test_inspector_isolation.py for the latter).

The second test serves a seeded instance with gunicorn exactly as ``bin/run`` does (one sync worker,
``tests.web_probe`` wrapping ``config.wsgi``), walks every page of the console, the admin and the API
(lists and details, the endpoint health refresh, uploads, the release actions a web process runs),
then asks the worker itself what it has loaded and how much memory it holds.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import PASSWORD
from tests.processes import database_env, free_port, stop, wait_for
from tests.releases.serving_fixtures import launch_server, LiveServer  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).parent / "gunicorn"
MAX_WORKER_RSS_MIB = 150


def test_loading_the_wsgi_application_does_not_import_tensorflow(tmp_path) -> None:
    code = "import tests.web_probe as probe\nprint(probe.loaded())\n"  # probe imports config.wsgi
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "MODELYARD_VAR_DIR": str(tmp_path / "var")}
    env.pop("MODELYARD_STORAGE_ROOT", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


# --- a seeded instance under gunicorn ----------------------------------------------------------------

@pytest.fixture
def instance(transactional_db, django_user_model, artifacts, launch_server, settings, tmp_path):  # type: ignore[no-untyped-def]  # noqa: F811
    """Model ``digits`` with v1, v2, an eval dataset and the alias ``champion``; endpoint ``local`` on a
    real ``python -m serving`` process with v1 live (``stable``) and v2 its canary; a draft release;
    a superuser ``root`` with an API token."""
    from rest_framework.authtoken.models import Token

    from registry import services
    from registry.uploads import StagedFile
    from releases import promotion
    from releases.models import Environment, Release
    from tests import factories

    server = launch_server(0)
    settings.SERVING_ROOTS = [str(server.root)]
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
                                  "QUEUES": settings.TASKS["default"]["QUEUES"]}}  # promotions, here, at once
    root = django_user_model.objects.create_superuser("root", "root@example.invalid", PASSWORD)
    model = services.model_create(name="digits", owner=root, task="classification", tags=["vision"])
    v1 = services.version_create(model=model, staged=StagedFile.from_path(artifacts["zip"]), actor=root)
    v2 = services.version_create(model=model, staged=StagedFile.from_path(artifacts["zip2"]), actor=root, parent=v1,
                                 source="optimization")
    path = tmp_path / "eval.npz"
    path.write_bytes(factories.npz_bytes(x=np.random.default_rng(0).normal(size=(16, 8)).astype("float32"),
                                         y=np.zeros(16, "int64")))
    services.dataset_create(model=model, staged=StagedFile.from_path(path), role="eval", actor=root)
    services.alias_set(model=model, name="champion", version=v1, actor=root)
    promotion.endpoint_create(actor=root, name="local", environment="production", kind="model_repository",
                              grpc_target=f"127.0.0.1:{server.grpc_port}", repository_path=str(server.base_dir))
    production = Environment.objects.get(name="production")
    live = Release.objects.create(version=v1, environment=production, requester=root, state="image_ready")
    promotion.release_promote_request(release=live, actor=root)
    canary = Release.objects.create(version=v2, environment=production, requester=root, state="image_ready")
    promotion.release_promote_request(release=canary, actor=root, canary=True)
    live.refresh_from_db()
    canary.refresh_from_db()
    assert (live.state, canary.state) == ("live", "canary"), (live.failure_reason, canary.failure_reason)
    draft = Release.objects.create(version=v2, environment=Environment.objects.get(name="staging"), requester=root)
    return {"token": Token.objects.create(user=root).key, "server": server, "live": live, "canary": canary,
            "draft": draft, "eval_npz": path}


@pytest.fixture
def web(instance, settings, storage_root, tmp_path):  # type: ignore[no-untyped-def]
    """gunicorn serving ``tests.web_probe:application`` (one sync worker) on the test database."""
    port = free_port()
    env = {**os.environ, **database_env(), "MODELYARD_STORAGE_ROOT": str(storage_root),
           "MODELYARD_SERVING_ROOTS": ",".join(settings.SERVING_ROOTS), "MODELYARD_ROUTES_DIR": str(settings.ROUTES_DIR),
           "MODELYARD_VAR_DIR": str(tmp_path / "var"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(GUNICORN), "tests.web_probe:application", "--workers", "1",
                                 "--bind", f"127.0.0.1:{port}", "--timeout", "300"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            return requests.get(base + "/healthz", timeout=10).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
            return False

    try:
        wait_for(answers, timeout=90, what="gunicorn")
        yield base
    finally:
        stop(proc)


class Browser:
    """A logged-in session (console and admin pages, their forms) plus the API by token."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.session = base, requests.Session()
        self.api_headers = {"Authorization": f"Token {token}"}
        self.get("/login/")
        self.post("/login/", {"username": "root", "password": PASSWORD}, expect=302)

    def get(self, path: str, expect: int | tuple[int, ...] = 200) -> requests.Response:
        response = self.session.get(self.base + path, timeout=120, allow_redirects=False)
        assert response.status_code in (expect if isinstance(expect, tuple) else (expect,)), (
            path, response.status_code, response.text[:2000])
        return response

    def post(self, path: str, data: dict[str, Any], expect: int = 302) -> requests.Response:
        data = {**data, "csrfmiddlewaretoken": self.session.cookies["csrftoken"]}
        response = self.session.post(self.base + path, data=data, timeout=120, allow_redirects=False,
                                     headers={"Referer": self.base + path})
        assert response.status_code == expect, (path, response.status_code, response.text[:2000])
        return response

    def api(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = self.session.request(method, self.base + "/api/v1" + path, headers=self.api_headers,
                                        timeout=300, **kwargs)
        assert response.status_code == expect, (method, path, response.status_code, response.text[:2000])
        return response.json()


def admin_pages() -> dict[str, tuple[int, ...]]:
    """Every registered admin model: its list, its add form (403 where records are only written by
    services) and the change form of its first row; with the statuses each may answer."""
    from django.contrib import admin
    from django.urls import reverse

    pages: dict[str, tuple[int, ...]] = {"/admin/": (200,)}
    for model in admin.site._registry:
        name = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        pages[reverse(f"{name}_changelist")] = (200,)
        pages[reverse(f"{name}_add")] = (200, 403)
        first = model._default_manager.order_by("pk").first()
        if first is not None:
            pages[reverse(f"{name}_change", args=[first.pk])] = (200,)
    return pages


def console_pages(job_id: int, release_ids: list[int]) -> list[str]:
    pages = ["/", "/?q=dig&tag=vision", "/new-model/", "/models/digits/", "/models/digits/upload/",
             "/models/digits/optimize/", "/models/digits/datasets/new/", "/models/digits/compare/",
             "/models/digits/compare/?v=1&v=2&v=3", f"/jobs/{job_id}/", f"/jobs/{job_id}/progress/", "/releases/",
             "/releases/?state=live", "/releases/awaiting-count/", "/endpoints/", "/audit/"]
    for release_id in release_ids:
        pages += [f"/releases/{release_id}/", f"/releases/{release_id}/live/"]
    return pages


def api_pages(job_id: int, release_ids: list[int]) -> list[str]:
    pages = ["/models/", "/models/digits/", "/models/digits/versions/", "/models/digits/versions/1/",
             "/models/digits/versions/?tag=vision", "/models/digits/aliases/", "/models/digits/aliases/champion/",
             "/models/digits/datasets/", "/models/digits/versions/1/variants/", "/audit-events/",
             "/optimization-jobs/", f"/optimization-jobs/{job_id}/", "/releases/", "/environments/", "/endpoints/",
             "/endpoints/local/", "/endpoints/local/?refresh=1", "/tokens/", "/webhooks/"]
    return pages + [f"/releases/{release_id}/" for release_id in release_ids]


def live_again_over_a_retired_version(rolled_back: Any) -> Any:
    """``rolled_back``'s version released and promoted again (here, in the test process), over v1;
    then v1 retired from the endpoint (its directory deleted), so rolling back needs it re-staged."""
    from releases import promotion
    from releases.deploy import repository_engine as engine
    from releases.models import Endpoint, Release

    again = Release.objects.create(version=rolled_back.version, environment=rolled_back.environment,
                                   requester=rolled_back.requester, state="image_ready")
    promotion.release_promote_request(release=again, actor=None)
    again.refresh_from_db()
    assert again.state == "live", again.failure_reason
    engine.retire(promotion.driver(Endpoint.objects.get(name="local")).repository(), "digits", {again.version.number},
                  delete_dirs=True)
    return again


def run_deploy_tasks(settings: Any) -> None:
    """What the deploy worker does with the tasks the web process queued: ``db_worker --batch``
    on the database backend, in this process (which may load TensorFlow)."""
    from django.core.management import call_command
    from django_tasks_db.models import DBTaskResult

    from config import settings as project_settings

    assert DBTaskResult.objects.filter(queue_name="deploy", status="READY").count() == 1
    settings.TASKS = project_settings.TASKS
    call_command("db_worker", "--batch", "--queue-name", "deploy", "--no-startup-delay")
    assert DBTaskResult.objects.get(queue_name="deploy", task_path="releases.tasks.rollback_release").status \
        == "SUCCESSFUL"


@pytest.mark.django_db(transaction=True)
def test_a_web_worker_serving_every_page_never_imports_tensorflow(instance, web, artifacts, settings) -> None:
    from optimization.models import OptimizationJob
    from registry.models import ModelVersion
    from releases.models import Endpoint

    v1 = ModelVersion.objects.get(model__name="digits", number=1)
    browser = Browser(web, instance["token"])
    live, canary, draft = instance["live"], instance["canary"], instance["draft"]
    releases = [live.pk, canary.pk, draft.pk]

    # Writes a web process runs itself: uploads (the model inspected by the warm inspector, the
    # dataset checked against v1's signature), console forms, requests that only enqueue (an
    # optimization job, a submit), health checks three ways, the canary's completion and its
    # rollback (label flips on the live server).
    for key in ("tflite", "keras", "h5", "tar"):  # every format; SavedModel zips were seeded
        with open(artifacts[key], "rb") as fh:
            browser.api("POST", "/models/digits/versions/", 201, files={"artifact": (artifacts[key].name, fh)})
    for role in ("train", "calibration"):
        with open(instance["eval_npz"], "rb") as fh:
            browser.api("POST", "/models/digits/datasets/", 201, files={"file": (f"{role}.npz", fh)},
                        data={"role": role, "version": "1"})
    browser.post("/models/digits/alias/", {"alias": "challenger", "version": "2"})
    browser.post("/models/digits/release/", {"version": "1", "environment": "staging", "notes": "from the console"})
    job = browser.api("POST", "/optimization-jobs/", 202,
                      json={"model": "digits", "version": 1, "recipe": {"technique": "ptq_int8"}})
    browser.api("POST", "/optimization-jobs/", 202, json={  # planning auto picks candidates per technique
        "model": "digits", "version": 2, "recipe": {"technique": "auto", "params": {"max_accuracy_drop": 0.01}}})
    browser.api("POST", f"/releases/{draft.pk}/submit/")
    browser.api("POST", "/endpoints/", 201, json={  # a serving profile's batching is a TF Serving message
        "name": "batched", "environment": "staging", "kind": "model_repository", "grpc_target": "127.0.0.1:1",
        "repository_path": str(instance["server"].root / "batched"),
        "profile": {"batching": {"max_batch_size": 8, "allowed_batch_sizes": [4, 8]}}})
    health = browser.api("GET", "/endpoints/local/?refresh=1")
    assert health["reachable"] is True and health["health_error"] == ""
    assert health["health"]["digits"]["labels"] == {"stable": 1, "canary": 2}
    assert health["health"]["digits"]["versions"] == {"1": "AVAILABLE", "2": "AVAILABLE"}
    browser.post("/endpoints/", {"endpoint": "local"})
    browser.post("/admin/releases/endpoint/", {"action": "check_health",
                                               "_selected_action": Endpoint.objects.get(name="local").pk})
    browser.post("/admin/registry/modelversion/", {"action": "measure_versions", "_selected_action": v1.pk})
    assert OptimizationJob.objects.filter(source=v1, recipe__technique="measure").count() == 1  # queued
    assert browser.api("POST", f"/releases/{canary.pk}/complete/")["state"] == "live"
    after = browser.api("GET", "/endpoints/local/?refresh=1")["health"]["digits"]["labels"]
    assert after == {"stable": 2, "canary": 2}
    assert browser.api("POST", f"/releases/{canary.pk}/rollback/", json={"comment": "web probe"})["state"] \
        == "rolled_back"
    assert browser.api("GET", "/endpoints/local/?refresh=1")["health"]["digits"]["labels"]["stable"] == 1
    # A rollback to a version retired from the endpoint since: the web process only queues it
    # (202, rolling_back, the pages say so; a second call is a 409); the deploy worker stages it.
    again = live_again_over_a_retired_version(canary)
    assert browser.api("POST", f"/releases/{again.pk}/rollback/", 202, json={"comment": "retired"})["state"] \
        == "rolling_back"
    browser.api("POST", f"/releases/{again.pk}/rollback/", 409, json={"comment": "twice"})
    for path in (f"/releases/{again.pk}/", f"/releases/{again.pk}/live/"):
        assert "Rolling Back" in browser.get(path).text
    run_deploy_tasks(settings)
    again.refresh_from_db()
    assert again.state == "rolled_back", (again.failure_step, again.failure_reason)
    assert browser.api("GET", "/endpoints/local/?refresh=1")["health"]["digits"]["labels"]["stable"] == 1
    releases.append(again.pk)

    # Every read.
    for path in console_pages(job["id"], releases):
        browser.get(path)
    for path, statuses in admin_pages().items():
        browser.get(path, statuses)
    for path in api_pages(job["id"], releases):
        browser.api("GET", path)
    browser.get("/api/v1/models/digits/versions/1/artifact/")
    browser.get("/api/schema/")
    browser.get("/api/docs/")
    browser.get("/metrics")

    probe = requests.get(web + "/__probe__", timeout=30).json()
    assert probe["loaded"] == [], (probe["first_seen"], "\n\n".join(probe["stacks"].values()))
    rss_mib = probe["memory_kib"]["VmRSS"] / 1024
    print(f"\nweb worker after every page: RSS {rss_mib:.0f} MiB, peak {probe['memory_kib']['VmHWM'] / 1024:.0f} MiB")
    assert rss_mib < MAX_WORKER_RSS_MIB, probe["memory_kib"]
