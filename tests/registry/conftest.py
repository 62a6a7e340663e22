"""Registry fixtures and helpers shared by the API refusal tests (hostile and ordinary): the error
shape, a snapshot proving a refused request left nothing behind, and digits v1."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from registry.models import AuditEvent, Dataset, ModelVersion, RegisteredModel
from tests.conftest import files_under, upload

CREATE_ACTIONS = ("version.create", "dataset.create")


def assert_error(response, status: int, code: str, *needles: str) -> dict:  # type: ignore[no-untyped-def]
    """The response is ``status`` with exactly the documented error shape and a readable message."""
    assert response.status_code == status, (response.status_code, response.content[:2000])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and len(error["message"]) > 10, error
    for needle in needles:
        assert needle.lower() in error["message"].lower(), (needle, error["message"])
    return error


class Snapshot:
    """What exists before a hostile request; ``assert_nothing_left`` compares afterwards."""

    def __init__(self, storage_root: Path) -> None:
        self.root = storage_root
        self.versions = set(ModelVersion.objects.values_list("pk", flat=True))
        self.datasets = set(Dataset.objects.values_list("pk", flat=True))
        self.models = set(RegisteredModel.objects.values_list("pk", flat=True))
        self.creates = AuditEvent.objects.filter(action__in=CREATE_ACTIONS).count()
        self.blobs = files_under(storage_root / "blobs")
        self.top_level = sorted(p.name for p in storage_root.iterdir())
        self.beside_root = sorted(p.name for p in storage_root.parent.iterdir())

    def assert_nothing_left(self, *outside: Path) -> None:
        assert set(ModelVersion.objects.values_list("pk", flat=True)) == self.versions
        assert set(Dataset.objects.values_list("pk", flat=True)) == self.datasets
        assert set(RegisteredModel.objects.values_list("pk", flat=True)) == self.models
        assert AuditEvent.objects.filter(action__in=CREATE_ACTIONS).count() == self.creates
        assert files_under(self.root / "blobs") == self.blobs
        assert files_under(self.root / "tmp") == []
        # Nothing new next to blobs/ and tmp/, nor next to the storage root itself.
        assert {p.name for p in self.root.iterdir()} <= set(self.top_level) | {"blobs"}
        assert sorted(p.name for p in self.root.parent.iterdir()) == self.beside_root
        for path in outside:
            assert not os.path.lexists(path), f"{path} was written outside the storage root"


@pytest.fixture
def snapshot(storage_root, registered):  # type: ignore[no-untyped-def]
    """Take the snapshot lazily (after the test's own setup) by calling ``snapshot()``."""
    return lambda: Snapshot(storage_root)


@pytest.fixture
def version1(api, registered, artifacts):  # type: ignore[no-untyped-def]
    """digits v1, a real Keras model with input "features" [None, 8] float32."""
    response = upload(api, "digits", artifacts["h5"])
    assert response.status_code == 201, response.content
    return ModelVersion.objects.get(model=registered, number=1)


def npz_file(tmp_path: Path, filename: str = "data.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / filename
    np.savez(path, **arrays)
    return path
