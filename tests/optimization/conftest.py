"""Fixtures for job tests: a registered digits model (Keras-written SavedModel) with datasets."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.optimization import tiny


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
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
def immediate_tasks(settings):  # type: ignore[no-untyped-def]
    """Run enqueued tasks at once, in-process (the eager mode)."""
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend",
                                  "QUEUES": ["default", "gpu", "cpu", "deploy"]}}  # django-tasks resets its backends
    yield
