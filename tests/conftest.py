"""Shared fixtures: personas (alice the engineer, bob the approver, charlie the outsider), a
private storage root per test, real model artifacts, tiny SavedModels and the digits model with
its datasets built once per session, tasks run at once, a real task worker. The fixtures with real model servers and the Docker engine
are plugins listed below (``pytest_plugins``): every test module finds them without importing."""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tests import factories  # noqa: E402

pytest_plugins = ["tests.releases.serving_fixtures", "tests.releases.container_fixtures"]

PASSWORD = "correct-horse-battery"


def missing(what: str) -> None:
    """A real dependency of this test is absent: skip on a developer's machine, but fail under CI
    (`.ci/run` installs everything), so a broken install can never pass as a row of skips."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}: CI must have it (.ci/run installs it)")
    pytest.skip(what)


@pytest.fixture(autouse=True)
def storage_root(settings, tmp_path_factory) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """Each test gets its own storage root, so files on disk can be asserted exactly."""
    root = tmp_path_factory.mktemp("storage")
    settings.STORAGE_ROOT = root
    settings.FILE_UPLOAD_TEMP_DIR = str(root / "tmp")
    (root / "tmp").mkdir()
    settings.ROUTES_DIR = tmp_path_factory.mktemp("routes")  # docker endpoints' route files
    settings.SERVING_ROOTS = [str(tmp_path_factory.mktemp("serving"))]  # where endpoints' repositories may lie
    # Changing STORAGES drops Django's cached storage objects (its setting_changed receiver), here
    # and again when the settings fixture restores it.
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "registry.blobstore.BlobStorage", "OPTIONS": {"location": str(root / "blobs")}}}
    yield root


@pytest.fixture(autouse=True)
def _append_only_guards(request):  # type: ignore[no-untyped-def]
    """Transactional tests empty every table afterwards, which the audit log's DELETE trigger
    refuses; lift the guard for that flush only, and make sure it is in place for every test."""
    marker = request.node.get_closest_marker("django_db")
    transactional = bool(marker and (marker.kwargs.get("transaction") or (marker.args and marker.args[0])))
    if not (transactional or "live_server" in request.fixturenames):
        yield
        return
    request.getfixturevalue("_django_db_helper")  # set up first, so its flush runs after our teardown
    from django.db import connection

    from registry import db_guards

    db_guards.install(connection)
    yield
    db_guards.uninstall(connection)


def make_user(django_user_model, username: str, perms: list[str], **extra):  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username=username, password=PASSWORD, **extra)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return user


ENGINEER_PERMS = [
    "registry.add_registeredmodel", "registry.change_registeredmodel", "registry.add_modelversion",
    "registry.change_modelversion", "registry.change_modelalias", "registry.delete_modelalias",
    "registry.add_dataset", "optimization.add_optimizationjob", "optimization.change_optimizationjob",
]


@pytest.fixture
def alice(django_user_model):  # type: ignore[no-untyped-def]
    """An ML engineer: may create models, upload versions and datasets, move aliases."""
    return make_user(django_user_model, "alice", ENGINEER_PERMS)


OPERATOR_PERMS = ["releases.operate_endpoints", "releases.view_endpoint"]


@pytest.fixture
def olivia(django_user_model):  # type: ignore[no-untyped-def]
    """An operator: registers and changes serving endpoints (paths, Docker hosts, profiles); no
    release or engineering permissions."""
    return make_user(django_user_model, "olivia", OPERATOR_PERMS)


@pytest.fixture
def operator_api(olivia):  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(olivia)
    return client


@pytest.fixture
def charlie(django_user_model):  # type: ignore[no-untyped-def]
    """Logged in, but with no write permission."""
    return make_user(django_user_model, "charlie", [])


@pytest.fixture
def api(alice):  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(alice)
    return client


@pytest.fixture
def readonly_api(charlie):  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(charlie)
    return client


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Real model files in every accepted format, built once."""
    base = tmp_path_factory.mktemp("artifacts")
    model = factories.tiny_keras_model()
    sm = factories.save_saved_model(base / "sm", model)
    other = factories.save_saved_model(base / "sm2", factories.tiny_keras_model(seed=1))
    return {
        "saved_model_dir": sm,
        "zip": factories.zip_dir(sm, base / "model.zip"),
        "zip_nested": factories.zip_dir(sm, base / "nested.zip", prefix="export/"),
        "tar": factories.tar_dir(sm, base / "model.tar.gz"),
        "zip2": factories.zip_dir(other, base / "model2.zip"),
        "keras": factories.save_keras(base / "model.keras", model),
        "h5": factories.save_keras(base / "model.h5", model),
        "tflite": factories.save_tflite(base / "model.tflite", model),
        "lambda_h5": factories.save_keras(base / "lambda.h5", factories.lambda_model()),
        "lambda_keras": factories.save_keras(base / "lambda.keras", factories.lambda_model()),
    }


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> factories.Models:  # type: ignore[no-untyped-def]
    """The tiny SavedModels (x [None, 4] -> y [None, 2]; see ``factories.tiny_models``) that
    endpoints, routers, containers and images are tested with, built once."""
    return factories.tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def immediate(settings):  # type: ignore[no-untyped-def]
    """Tasks run at once, in the test's own process (django-tasks' immediate backend)."""
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
                                  "QUEUES": settings.TASKS["default"]["QUEUES"]}}


@pytest.fixture
def worker(storage_root, tmp_path):  # type: ignore[no-untyped-def]
    """A real task worker (``manage.py db_worker``) on the test database; yields the Popen."""
    from tests.processes import start_worker, stop

    proc = start_worker(storage_root=storage_root, log_path=tmp_path / "worker.log",
                        MODELYARD_JOB_HEARTBEAT_TIMEOUT="3")
    yield proc
    stop(proc)


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """scikit-learn's digits: a trained tf_keras classifier (zipped SavedModel and TFLite) and its
    train/eval/calibration datasets, plus a train set with impossible labels; built once."""
    from tests.optimization import tiny

    base = tmp_path_factory.mktemp("digits")
    data = tiny.digits()
    model = tiny.classifier(data, epochs=5)
    model.save(str(base / "sm"), save_format="tf")
    archive = base / "digits.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((base / "sm").rglob("*")):
            zf.write(path, str(path.relative_to(base / "sm")))
    files = {"model": archive}
    for role, arrays in (("train", data.train), ("eval", data.eval), ("calibration", data.calibration)):
        files[role] = base / f"{role}.npz"
        np.savez(files[role], x=arrays.x, y=arrays.y)
    bad = base / "bad-train.npz"
    np.savez(bad, x=data.train.x[:200], y=np.full(200, 50, dtype="int64"))  # labels 50 for 10 classes
    files["bad_train"] = bad
    tflite = base / "digits.tflite"
    import tensorflow as tf

    tflite.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    files["tflite"] = tflite
    return files


@pytest.fixture
def digits_model(alice, digits_files):  # type: ignore[no-untyped-def]
    """Model 'digits' v1 (SavedModel written by tf_keras) with train/eval/calibration datasets."""
    from registry import services
    from registry.uploads import StagedFile

    model = services.model_create(name="digits", owner=alice, task="classification")
    version = services.version_create(model=model, staged=StagedFile.from_path(digits_files["model"]), actor=alice)
    datasets = {role: services.dataset_create(model=model, staged=StagedFile.from_path(digits_files[role]),
                                              role=role, actor=alice, check_version=version)
                for role in ("train", "eval", "calibration")}
    return version, datasets


@pytest.fixture
def registered(alice):  # type: ignore[no-untyped-def]
    from registry import services

    return services.model_create(name="digits", owner=alice, task="classification", tags=["vision"])


def upload(api, name: str, path: Path, **fields):  # type: ignore[no-untyped-def]
    """POST a file as the multipart ``artifact`` field, like ``curl -F artifact=@file``."""
    with open(path, "rb") as fh:
        return api.post(f"/api/v1/models/{name}/versions/", {"artifact": fh, **fields}, format="multipart")


def post_dataset(api, model: str, path: Path, **fields):  # type: ignore[no-untyped-def]
    """POST a dataset file as the multipart ``file`` field."""
    with open(path, "rb") as fh:
        return api.post(f"/api/v1/models/{model}/datasets/", {"file": fh, **fields}, format="multipart")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def _default_environments(request):  # type: ignore[no-untyped-def]
    """Migration 0002 creates staging and production; transactional tests flush them, so put
    them back for every database test."""
    if request.node.get_closest_marker("django_db") is None:
        return
    request.getfixturevalue("_django_db_helper")
    from releases.environments import ensure_default_environments

    ensure_default_environments()
