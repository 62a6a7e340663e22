"""Schemathesis against the live app (issue 10): the OpenAPI document must tell the truth.

A real server (gunicorn, as ``make run`` starts it) on a free port, with its own SQLite database
and storage in a temporary directory, seeded through the API itself with a model, two versions
(.tflite, Keras .h5, SavedModel .zip), an eval dataset, an alias, a release and a queued optimization job,
so that generated paths resolve (``digits``, versions 1-2, dataset 1, ...) as well as miss.
Schemathesis (pinned in requirements.txt) reads ``/api/schema/?format=json`` and sends generated
requests, valid and invalid, to every operation as a superuser, checking each response:

* ``not_a_server_error``: no 5xx;
* ``status_code_conformance``: every status is documented for its operation;
* ``response_schema_conformance`` and ``content_type_conformance``: the body matches the schema.

No operation is excluded. Nothing reaches Docker or a serving endpoint: builds and promotions are
tasks, and no task worker runs here; random artifacts and datasets are refused in milliseconds.
Bounded: ``MODELYARD_FUZZ_EXAMPLES`` (default 10) examples per operation and phase, and the whole
run stops after ``MODELYARD_FUZZ_SECONDS`` (default 150). The counts are printed for the record.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from schemathesis.failure_codes import get_failure_class

from tests import factories
from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CHECKS = ["not_a_server_error", "status_code_conformance", "response_schema_conformance",
          "content_type_conformance"]
EXAMPLES = int(os.environ.get("MODELYARD_FUZZ_EXAMPLES", "10"))
SECONDS = int(os.environ.get("MODELYARD_FUZZ_SECONDS", "150"))


@dataclass
class LiveApp:
    url: str
    token: str
    var: Path

    def api(self, method: str, path: str, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
        response = requests.request(method, self.url + path, headers={"Authorization": f"Token {self.token}"},
                                    timeout=120, **kwargs)
        assert response.status_code < 300, (method, path, response.status_code, response.text[:2000])
        return response


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout


def _wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240  # each worker imports TensorFlow's serving API at start
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-4000:]
        try:
            if requests.get(url + "/healthz", timeout=10).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server did not start: {log.read_text()[-4000:]}")


def _seed(app: LiveApp, artifacts: dict[str, Path], tmp: Path) -> None:
    """Through the API, as a client would: every id below is what the dictionaries name."""
    app.api("POST", "/api/v1/models/", json={"name": "digits", "task": "classification", "tags": ["demo"]})
    for key in ("tflite", "h5", "zip"):  # versions 1, 2 and 3 (a SavedModel: releasable)
        with open(artifacts[key], "rb") as fh:
            app.api("POST", "/api/v1/models/digits/versions/", files={"artifact": fh},
                    data={"metadata": '{"seed": true}', "tags": "seed"})
    npz = tmp / "eval.npz"
    npz.write_bytes(factories.npz_bytes(x=np.random.default_rng(0).random((16, 8), dtype=np.float32),
                                        y=np.arange(16) % 3))
    with open(npz, "rb") as fh:  # dataset 1
        app.api("POST", "/api/v1/models/digits/datasets/", files={"file": fh}, data={"role": "eval", "version": "2"})
    app.api("PUT", "/api/v1/models/digits/aliases/champion/", json={"version": 2})
    app.api("POST", "/api/v1/releases/", json={"model": "digits", "version": 3, "environment": "staging"})
    app.api("POST", "/api/v1/optimization-jobs/", json={"model": "digits", "version": 2,
                                                        "recipe": {"technique": "ptq_dynamic"}})


@pytest.fixture(scope="module")
def live_app(tmp_path_factory, artifacts) -> Iterator[LiveApp]:  # type: ignore[no-untyped-def]
    var = tmp_path_factory.mktemp("fuzz-var")
    env = {**os.environ, "MODELYARD_VAR_DIR": str(var), "MODELYARD_ALLOWED_HOSTS": "127.0.0.1",
           "MODELYARD_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "config.settings",
           "DJANGO_SUPERUSER_USERNAME": "fuzz", "DJANGO_SUPERUSER_PASSWORD": "fuzz-password-1",
           "DJANGO_SUPERUSER_EMAIL": "fuzz@example.com", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("DATABASE_URL", None)  # its own SQLite file under var/
    _manage(env, "migrate", "--noinput")
    _manage(env, "createsuperuser", "--noinput")
    token = re.search(r"Generated token (\w+)", _manage(env, "drf_create_token", "fuzz")).group(1)  # type: ignore[union-attr]
    port = free_port()
    log = var / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-c", "config/gunicorn.py", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--timeout", "120"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    app = LiveApp(url=f"http://127.0.0.1:{port}", token=token, var=var)
    try:
        _wait_until_up(app.url, server, log)
        _seed(app, artifacts, var)
        yield app
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


CONFIG = """
[dictionaries]
names = {{ values = ["digits", "nope"] }}
versions = {{ values = [1, 2, 3, 4] }}
ids = {{ values = [1, 2] }}
aliases = {{ values = ["champion", "nope"] }}
environments = {{ values = ["staging", "production"] }}

[parameters]
"path.name" = {{ dictionary = "names", probability = 0.7 }}
"path.version" = {{ dictionary = "versions", probability = 0.7 }}
"path.dataset_id" = {{ dictionary = "ids", probability = 0.7 }}
"path.release_id" = {{ dictionary = "ids", probability = 0.7 }}
"path.job_id" = {{ dictionary = "ids", probability = 0.7 }}
"path.alias" = {{ dictionary = "aliases", probability = 0.7 }}
"body.model" = {{ dictionary = "names", probability = 0.7 }}
"body.version" = {{ dictionary = "versions", probability = 0.7 }}
"body.environment" = {{ dictionary = "environments", probability = 0.7 }}
"""


def _summary(report: dict, stdout: str) -> str:  # type: ignore[type-arg]
    ops, cases = report["operations"], report["test_cases"]
    failures = {f"{f['code']} ({f['title']})": f["count"] for f in report["failures"]}
    per_check = {c: 0 for c in CHECKS}
    for failure in report["failures"]:
        kind = get_failure_class(failure["code"])
        for check in (kind.checks if kind else ("other",)):
            per_check[check] = per_check.get(check, 0) + failure["count"]
    lines = [f"schemathesis {report['schemathesis_version']}: {ops['tested']}/{ops['selected']} operations tested "
             f"(of {ops['total']}), {cases['generated']} test cases generated, "
             f"{cases['with_failures']} with failures, {len(report['errors'])} errors, "
             f"stop reason: {report['stop_reason']}, {report['running_time']}",
             "failures per check: " + ", ".join(f"{c}={n}" for c, n in per_check.items()),
             f"failures: {failures or 'none'}"]
    return "\n".join(lines) + "\n--- schemathesis failures ---\n" + _failures_section(stdout)


def _failures_section(stdout: str) -> str:
    """The output's FAILURES section (operation, check, status received and documented), each line
    cut to 240 characters: generated URLs run to kilobytes, and CI prints only a part of the log."""
    section = stdout.split("= FAILURES =", 1)[-1].split("= WARNINGS =", 1)[0] if "= FAILURES =" in stdout else ""
    lines = [line[:240] for line in section.strip().splitlines()] or ["(none)"]
    return "\n".join(lines[:80])


def test_long_request_lines_reach_the_app_up_to_8190_bytes_and_the_schema_documents_the_servers_414(live_app):
    """Gunicorn's default limit (4094 bytes) answered a generated 4.7 KB query with an undocumented
    HTML 414; config/gunicorn.py raises it to gunicorn's maximum, and the schema says what lies beyond."""
    headers = {"Authorization": f"Token {live_app.token}"}
    long_query = "&".join(f"tag=t{i:05d}" for i in range(600))  # ~6.6 KB
    response = requests.get(f"{live_app.url}/api/v1/models/digits/versions/?{long_query}", headers=headers, timeout=60)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    too_long = "&".join(f"tag=t{i:05d}" for i in range(800))  # ~8.8 KB
    response = requests.get(f"{live_app.url}/api/v1/models/digits/versions/?{too_long}", headers=headers, timeout=60)
    assert response.status_code == 414
    schema = requests.get(f"{live_app.url}/api/schema/?format=json", headers=headers, timeout=60).json()
    for path in schema["paths"].values():
        for operation in path.values():
            assert set(operation["responses"]) >= {"414", "431"}
            assert "text/html" in operation["responses"]["414"]["content"]


def test_schemathesis_finds_no_server_error_schema_violation_or_undocumented_status(live_app, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format())
    report_path = tmp_path / "report.json"
    command = [str(VENV_BIN / "st"), "--no-color", "--config-file", str(config), "run",
               f"{live_app.url}/api/schema/?format=json", "--checks", ",".join(CHECKS),
               "--max-examples", str(EXAMPLES), "--max-time", str(SECONDS), "--seed", "20261202", "--workers", "2", "--request-timeout", "60",
               "--header", f"Authorization: Token {live_app.token}", "--report", "json",
               "--report-json-path", str(report_path), "--output-sanitize", "true"]
    print("$", " ".join(command).replace(live_app.token, "<token>"))
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 120)
    report = json.loads(report_path.read_text())
    summary = _summary(report, done.stdout)
    print(summary)
    (ROOT / "var").mkdir(exist_ok=True)
    (ROOT / "var" / "schemathesis-summary.txt").write_text(summary + "\n")
    (ROOT / "var" / "schemathesis-output.txt").write_text(done.stdout + done.stderr)
    server_log = (live_app.var / "server.log").read_text()
    assert report["operations"]["tested"] == report["operations"]["selected"] == report["operations"]["total"], summary
    assert report["test_cases"]["generated"] > 0, summary
    assert not report["failures"] and not report["errors"], summary + "\n--- server log ---\n" + server_log[-6000:]
    assert done.returncode == 0, summary
