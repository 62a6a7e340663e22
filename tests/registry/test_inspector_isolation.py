"""Untrusted model bytes never run in a server process (issue 10, defect 3).

Real hostile artifacts through the real API: a ``.tflite`` with a valid header and a garbage body,
bit-flipped real ``.tflite`` files, SavedModels whose load-time initializer eats memory or time,
and an inspector SIGKILLed mid-job. Each answer is a 422 in the one error shape naming the file
and what happened; nothing is registered or left in ``storage/tmp``; the next upload is served by
a fresh inspector. One test runs a real gunicorn worker and checks that its pid survives.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from registry import inspector
from tests import factories
from tests.conftest import files_under, upload
from tests.processes import children_of, free_port, stop
from tests.registry.conftest import assert_error

REPO = Path(__file__).resolve().parents[2]
CRASH = re.compile(r"killed by (SIGSEGV|SIGBUS|SIGABRT|SIGILL|SIGFPE)")


@pytest.fixture(scope="session")
def hostile_models(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Small, valid SavedModels whose load-time initializer is the attack (see factories)."""
    base = tmp_path_factory.mktemp("hostile")
    memory = factories.resource_hog_saved_model(base / "memory", "memory", 400_000_000)  # 1.6 GB of float32
    slow = factories.resource_hog_saved_model(base / "slow", "time", 10**13)  # counts for hours
    return {"memory": factories.zip_dir(memory, base / "memory_hog.zip"),
            "slow": factories.zip_dir(slow, base / "slow_init.zip")}


def garbage_tflite(tmp_path: Path) -> Path:
    """The 'TFL3' file identifier at its place, then no flatbuffer at all: the root table offset
    points 2 GiB past the end of the file and the rest is zeros. (Other garbage bodies crash the
    interpreter too, but not always the same way; this one does, every time.)"""
    path = tmp_path / "garbage.tflite"
    path.write_bytes(b"\xf0\xff\xff\x7fTFL3" + bytes(4096))
    return path


def flipped(source: Path, at: int, tmp_path: Path) -> Path:
    data = bytearray(source.read_bytes())
    for i in range(at, min(at + 4, len(data))):
        data[i] ^= 0xFF
    path = tmp_path / f"flipped-at-{at}.tflite"
    path.write_bytes(bytes(data))
    return path


def assert_fresh_inspector_serves(api, artifacts, before: list[int]) -> None:  # type: ignore[no-untyped-def]
    """The next upload works, in an inspector that is not the one that failed."""
    response = upload(api, "digits", artifacts["tflite"])
    assert response.status_code == 201, response.content
    assert inspector.pool().pids() and not set(inspector.pool().pids()) & set(before)


@pytest.mark.django_db
def test_a_tflite_with_a_valid_header_and_a_garbage_body_is_a_422_not_a_dead_worker(
        api, artifacts, snapshot, storage_root, tmp_path) -> None:
    upload(api, "digits", artifacts["tflite"])  # a warm inspector, so the pids below are the job's
    before, used = snapshot(), inspector.pool().pids()

    response = upload(api, "digits", garbage_tflite(tmp_path))

    error = assert_error(response, 422, "inspection_crashed", "garbage.tflite", "Nothing was registered")
    assert CRASH.search(error["message"]), error
    assert error["details"]["artifact"] == "garbage.tflite"
    before.assert_nothing_left()
    assert_fresh_inspector_serves(api, artifacts, used)


@pytest.mark.django_db
def test_bit_flipped_real_tflite_files_are_refused_or_accepted_but_never_take_the_server_down(
        api, artifacts, snapshot, storage_root, tmp_path) -> None:
    # Offsets in the flatbuffer's root table, vtables, tensor/buffer tables and the weights.
    positions = [0, 12, 28, 60, 1230, 1760]
    outcomes: dict[int, str] = {}
    for at in positions:
        before = snapshot()
        response = upload(api, "digits", flipped(artifacts["tflite"], at, tmp_path))
        if response.status_code == 201:  # a flip in the weights is still a model
            outcomes[at] = "accepted"
            continue
        assert response.status_code in (400, 422), (at, response.status_code, response.content)
        code = response.json()["error"]["code"]
        names_the_file = [f"flipped-at-{at}.tflite"] if code.startswith("inspection_") else []
        outcomes[at] = assert_error(response, response.status_code, code, *names_the_file)["code"]
        before.assert_nothing_left()
    assert "inspection_crashed" in outcomes.values(), outcomes  # the point: some of these kill a reader
    assert_fresh_inspector_serves(api, artifacts, [])


@pytest.mark.django_db
def test_a_savedmodel_over_the_memory_limit_is_a_422_naming_the_limit(
        api, artifacts, hostile_models, snapshot, settings) -> None:
    settings.INSPECT_MEMORY_MB = 256
    upload(api, "digits", artifacts["tflite"])  # a warm inspector, so the pids below are the job's
    before, used = snapshot(), inspector.pool().pids()

    response = upload(api, "digits", hostile_models["memory"])

    error = assert_error(response, 422, "inspection_memory_limit", "memory_hog.zip",
                         "exceeded the memory limit of 256 MiB")
    assert error["details"] == {"artifact": "memory_hog.zip", "limit_mib": 256}
    before.assert_nothing_left()
    assert_fresh_inspector_serves(api, artifacts, used)


@pytest.mark.django_db
def test_a_savedmodel_that_loads_forever_is_stopped_at_the_time_limit(
        api, artifacts, hostile_models, snapshot, settings) -> None:
    upload(api, "digits", artifacts["tflite"])  # a warm inspector, so the pids below are the job's
    settings.INSPECT_TIMEOUT = 3
    before, used = snapshot(), inspector.pool().pids()

    started = time.monotonic()
    response = upload(api, "digits", hostile_models["slow"])

    assert time.monotonic() - started < 30
    assert_error(response, 422, "inspection_timeout", "slow_init.zip", "took longer than 3 s")
    before.assert_nothing_left()
    assert not Path(f"/proc/{used[0]}/status").exists()  # killed and reaped
    assert_fresh_inspector_serves(api, artifacts, used)


@pytest.mark.django_db
def test_an_inspector_killed_mid_job_is_a_422_and_its_workdir_is_removed(
        api, artifacts, hostile_models, snapshot, settings, storage_root) -> None:
    settings.INSPECT_TIMEOUT = 120  # only a safety net: the kill below comes first
    upload(api, "digits", artifacts["tflite"])  # a warm inspector, so the pids below are the job's
    before, used = snapshot(), inspector.pool().pids()
    killed: list[Path] = []

    def kill_once_loading() -> None:
        """A real SIGKILL to the real inspector, once it has unpacked the model and is loading it."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            loading = list((storage_root / "tmp").glob("inspect-*/unpacked/saved_model.pb"))
            if loading:
                time.sleep(0.5)  # inside tf.saved_model.load's initializer by now
                killed.append(loading[0].parent.parent)
                os.kill(used[0], signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_once_loading)
    killer.start()
    response = upload(api, "digits", hostile_models["slow"])
    killer.join()

    assert killed, "the inspector never started loading"
    assert_error(response, 422, "inspection_crashed", "killed by SIGKILL while loading slow_init.zip")
    assert not killed[0].exists()  # the web process removed the workdir the dead inspector used
    before.assert_nothing_left()
    assert_fresh_inspector_serves(api, artifacts, used)


def test_inspecting_leaves_tensorflow_out_of_the_calling_process(artifacts, tmp_path) -> None:
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from registry import inspection\n"
        "found = inspection.inspect_artifact(Path(sys.argv[1]), 'model.tflite')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))\n"
        "print(found.format, found.signature['inputs'][0]['name'], loaded)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "MODELYARD_VAR_DIR": str(tmp_path / "var")}
    env.pop("MODELYARD_STORAGE_ROOT", None)
    done = subprocess.run([sys.executable, "-c", code, str(artifacts["tflite"])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == "tflite features []"
    assert files_under(tmp_path / "var" / "storage" / "tmp") == []


# --- a real gunicorn worker ------------------------------------------------------------------

@pytest.fixture
def gunicorn(tmp_path) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """A private instance (own var dir, migrated, an API token) under gunicorn with one sync worker."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "MODELYARD_VAR_DIR": str(tmp_path / "var"),
           "MODELYARD_LOG_LEVEL": "WARNING"}
    for name in ("MODELYARD_STORAGE_ROOT", "DATABASE_URL", "MODELYARD_SQLITE_PATH"):
        env.pop(name, None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True, timeout=300)
    out = subprocess.run([*manage, "shell", "-c", (
        "from django.contrib.auth import get_user_model\n"
        "from rest_framework.authtoken.models import Token\n"
        "u = get_user_model().objects.create_superuser('ops', 'ops@example.invalid', 'pw-for-tests')\n"
        "print('TOKEN=' + Token.objects.create(user=u).key)\n")],
        cwd=REPO, env=env, check=True, timeout=300, capture_output=True, text=True).stdout
    token = re.search(r"TOKEN=(\w+)", out).group(1)  # type: ignore[union-attr]
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "config.wsgi:application",
                             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--timeout", "300"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            try:
                if requests.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        yield {"url": base, "master": proc.pid, "headers": {"Authorization": f"Token {token}"},
               "storage": tmp_path / "var" / "storage"}
    finally:
        stop(proc, timeout=10)
        log.close()


def test_a_crashing_artifact_does_not_take_down_the_gunicorn_worker(gunicorn, artifacts, tmp_path) -> None:
    url, headers = gunicorn["url"], gunicorn["headers"]

    def post(path: Path) -> requests.Response:
        with open(path, "rb") as fh:
            return requests.post(f"{url}/api/v1/models/digits/versions/", files={"artifact": (path.name, fh)},
                                 headers=headers, timeout=300)

    assert requests.post(f"{url}/api/v1/models/", json={"name": "digits"}, headers=headers,
                         timeout=60).status_code == 201
    assert post(artifacts["tflite"]).status_code == 201
    worker = children_of(gunicorn["master"])
    assert len(worker) == 1
    first_inspector = children_of(worker[0])
    assert len(first_inspector) == 1  # the worker's own inspector is its child

    response = post(garbage_tflite(tmp_path))

    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "inspection_crashed"
    assert CRASH.search(body["error"]["message"]) and "garbage.tflite" in body["error"]["message"]
    assert children_of(gunicorn["master"]) == worker  # the same worker process, not a replacement
    assert post(artifacts["tflite"]).status_code == 201  # answered by that same worker...
    assert children_of(gunicorn["master"]) == worker
    replacement = children_of(worker[0])
    assert len(replacement) == 1 and replacement != first_inspector  # ...with a fresh inspector
    listed = requests.get(f"{url}/api/v1/models/digits/versions/", headers=headers, timeout=60).json()
    assert [v["version"] for v in listed["results"]] == [2, 1]  # nothing registered for the garbage
    assert files_under(gunicorn["storage"] / "tmp") == []
