"""Blob references: every column that holds a blob digest is declared, and a blob any of them
refers to survives a rolled-back write's clean-up."""
from __future__ import annotations

import hashlib

import pytest

from registry import blobrefs, services
from registry.blobstore import artifact_store
from tests.conftest import upload


def test_every_blob_column_is_declared() -> None:
    declared = {(model._meta.label, field) for model, field in blobrefs.registered()}
    assert declared == {("registry.ModelVersion", "artifact_sha256"), ("registry.Dataset", "sha256"),
                        ("metrics.VersionMetrics", "outputs_sha256")}


def test_register_refuses_an_unknown_column() -> None:
    from registry.models import Dataset
    from django.core.exceptions import FieldDoesNotExist

    with pytest.raises(FieldDoesNotExist):
        blobrefs.register(Dataset, "sha265")


@pytest.mark.django_db
def test_a_referenced_blob_is_kept_and_an_orphan_is_discarded(api, registered, artifacts, tmp_path) -> None:
    response = upload(api, "digits", artifacts["keras"])
    assert response.status_code == 201, response.content
    kept = response.json()["sha256"]
    orphan_file = tmp_path / "orphan.bin"
    orphan_file.write_bytes(b"no row points at this")
    orphan = hashlib.sha256(orphan_file.read_bytes()).hexdigest()
    store = artifact_store()
    store.put(orphan_file, orphan)

    services.discard_blob_if_unreferenced(kept)
    services.discard_blob_if_unreferenced(orphan)

    assert store.blob_path(kept).is_file()
    assert not store.blob_path(orphan).exists()
