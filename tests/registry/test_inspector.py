"""The warm inspector pool (registry/inspector.py): real child processes, real TensorFlow.

The pool is the one the app uses, shared by every test of the run: a test that needs a fresh
inspector says so (each start costs a TensorFlow import)."""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest

from registry import archives, inspection, inspector
from registry.models import ModelVersion
from tests.conftest import files_under, upload
from tests.processes import children_of


def inspect(path: Path) -> inspection.Inspection:
    return inspection.inspect_artifact(path, path.name)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_inspections_reuse_one_warm_inspector_and_read_what_a_direct_read_does(artifacts, tmp_path) -> None:
    inspect(artifacts["tflite"])
    pids = inspector.pool().pids()
    assert len(pids) == 1 and pids[0] in children_of(os.getpid())

    for key in ("zip", "tar", "keras", "h5", "tflite"):
        found = inspect(artifacts[key])
        (tmp_path / key).mkdir()
        direct = inspection.inspect_here(artifacts[key], artifacts[key].name, workdir=tmp_path / key,
                                         limits=archives.Limits.from_settings())
        assert (found.format, found.signature) == (direct.format, direct.signature)
        assert inspector.pool().pids() == pids  # the same process did every job


def test_an_inspector_is_replaced_after_its_last_job_by_one_with_a_clean_environment(
        artifacts, settings, monkeypatch) -> None:
    for name, value in {"MODELYARD_SECRET_KEY": "s3cret", "DATABASE_URL": "postgres://u:pw@db/x",
                        "SMTP_PASSWORD": "pw", "API_TOKEN": "tok", "MODELYARD_SECRET_KEY_FILE": "/run/secret",
                        "AWS_SECRET_ACCESS_KEY": "aws", "TF_AUTH_TOKEN": "tf-tok", "TF_NUM_INTRAOP_THREADS": "1",
                        "LC_ALL": "C.UTF-8"}.items():
        monkeypatch.setenv(name, value)
    settings.INSPECT_MAX_JOBS = 1
    inspect(artifacts["tflite"])
    first = inspector.pool().pids()
    second = _served_by_a_successor(artifacts["tflite"], first)
    assert second and first[0] not in second  # (each is worn after one job: a successor may be starting)
    assert not Path(f"/proc/{first[0]}").exists() or "zombie" in Path(f"/proc/{first[0]}/status").read_text()

    env = environ_of(second[0])
    tuning = {name for name in env if name.startswith("KMP_")}  # set by TensorFlow's MKL in this process
    assert set(env) - tuning <= {"PATH", "LANG", "LC_ALL", "TZ", "TF_NUM_INTRAOP_THREADS", "TF_USE_LEGACY_KERAS",
                        "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "PYTHONDONTWRITEBYTECODE"}, env
    assert env["TF_USE_LEGACY_KERAS"] == "1" and env["TF_NUM_INTRAOP_THREADS"] == "1" and env["LC_ALL"] == "C.UTF-8"
    assert not {"s3cret", "postgres://u:pw@db/x", "pw", "tok", "aws", "tf-tok"} & set(env.values())


def _served_by_a_successor(artifact: Path, worn: list[int], timeout: float = 240.0) -> list[int]:
    """Inspect until the pool holds only processes other than ``worn`` (the worn one serves
    until its successor has imported TensorFlow); the pool's pids then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inspect(artifact)
        pids = inspector.pool().pids()
        if not set(pids) & set(worn):
            return pids
        time.sleep(0.2)
    raise AssertionError(f"the worn inspector {worn} was never replaced")


def test_a_worn_inspector_serves_until_its_successor_is_ready(artifacts, settings) -> None:
    """At its last allowed job an inspector's successor starts; jobs meanwhile go to the worn
    one, not to a cold start; once the successor is ready the worn one is stopped."""
    inspect(artifacts["tflite"])  # a warm inspector
    [(worn, done)] = inspector.pool().jobs_by_pid().items()
    settings.INSPECT_MAX_JOBS = done + 1
    inspect(artifacts["tflite"])  # its last allowed job: the successor starts
    assert inspector.pool().jobs_by_pid() == {worn: done + 1} and len(inspector.pool().pids()) == 2
    inspect(artifacts["tflite"])  # the successor is importing TensorFlow: the worn one takes this job
    assert inspector.pool().jobs_by_pid() == {worn: done + 2}
    fresh = _served_by_a_successor(artifacts["tflite"], [worn])
    assert len(fresh) == 1
    assert not Path(f"/proc/{worn}").exists() or "zombie" in Path(f"/proc/{worn}/status").read_text()


def test_prewarm_starts_one_inspector_only_when_none_is_waiting(settings) -> None:
    pool = inspector.pool()
    pool.shutdown()
    assert pool.pids() == []
    assert inspector.prewarm() is True
    assert inspector.prewarm() is False  # one is already waiting (pool size 1)
    settings.INSPECT_POOL_SIZE = 2
    assert inspector.prewarm() is False  # still one idle: a second would only cost memory
    assert len(pool.pids()) == 1


def test_an_idle_inspector_exits_by_itself_and_the_next_job_gets_a_new_one(artifacts, settings) -> None:
    inspector.pool().shutdown()
    settings.INSPECT_IDLE_SECONDS = 1
    inspect(artifacts["tflite"])  # starts one (importing TensorFlow), which then waits 1 s at most
    pid = inspector.pool().pids()[0]
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text():
        assert time.monotonic() < deadline, "the idle inspector did not exit"
        time.sleep(0.2)
    settings.INSPECT_IDLE_SECONDS = 600
    assert inspect(artifacts["tflite"]).format == "tflite"
    assert inspector.pool().pids() != [pid]


def test_a_forked_process_starts_with_an_empty_pool_of_its_own(artifacts) -> None:
    """Like a gunicorn worker forked from a master: it never uses (or waits for) inherited inspectors."""
    inspect(artifacts["tflite"])
    parents = inspector.pool().pids()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # only plain Python below, then _exit: no TensorFlow call in the forked copy
        os.write(write, repr(inspector.pool().pids()).encode())
        os._exit(0)
    os.close(write)
    seen = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(child, 0)
    assert seen == "[]"
    assert inspector.pool().pids() == parents  # untouched: the parent's inspector still works
    assert inspect(artifacts["tflite"]).format == "tflite" and inspector.pool().pids() == parents


@pytest.mark.django_db
def test_an_upload_is_inspected_by_the_inspector_it_prewarmed(api, registered, artifacts, storage_root, caplog) -> None:
    inspector.pool().shutdown()
    caplog.set_level(logging.INFO, logger="registry.inspector")

    response = upload(api, "digits", artifacts["zip"])

    assert response.status_code == 201, response.content
    started = re.findall(r"started an inspector \(pid (\d+)\)", caplog.text)
    assert len(started) == 1 and inspector.pool().pids() == [int(started[0])]
    assert ModelVersion.objects.get().signature["inputs"][0]["name"] == "features"
    assert files_under(storage_root / "tmp") == []


@pytest.mark.django_db
def test_a_body_over_the_artifact_limit_starts_no_inspector(api, registered, settings, caplog, tmp_path) -> None:
    inspector.pool().shutdown()
    settings.MAX_ARTIFACT_BYTES = 2048
    big = tmp_path / "model.zip"
    big.write_bytes(b"x" * (256 * 1024))  # announced as larger than any acceptable body: 413 before it is read
    caplog.set_level(logging.INFO, logger="registry.inspector")
    response = upload(api, "digits", big)
    assert response.status_code == 413, response.content
    assert "inspector" not in caplog.text and inspector.pool().pids() == []
