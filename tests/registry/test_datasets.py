"""Datasets through the REST API: POST /api/v1/models/{name}/datasets/ (multipart ``file``,
``role``, optional ``version`` and ``name``), listing, filtering and detail."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from registry.models import AuditEvent, Dataset
from tests import factories
from tests.conftest import files_under, post_dataset, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(api, registered, artifacts):  # type: ignore[no-untyped-def]
    """digits v1 (Keras .h5) and v2 (SavedModel .zip): both take "features" [None, 8] float32."""
    for key in ("h5", "zip"):
        response = upload(api, "digits", artifacts[key])
        assert response.status_code == 201, response.content
    return [1, 2]


def npz(tmp_path: Path, filename: str = "eval.npz", n: int = 10, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.random((n, 8), dtype=np.float32), "y": rng.integers(0, 3, n).astype(np.int64), **extra}
    path = tmp_path / filename
    np.savez(path, **arrays)
    return path


def blob_path(storage_root: Path, sha: str) -> Path:
    return storage_root / "blobs" / sha[:2] / sha[2:4] / sha


def test_valid_eval_dataset_is_stored_and_described(api, versions, storage_root, tmp_path):
    path = npz(tmp_path)
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    blobs_before = files_under(storage_root / "blobs")

    response = post_dataset(api, "digits", path, role="eval")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"] == "digits"
    assert body["role"] == "eval"
    assert body["name"] == "eval.npz"  # defaults to the uploaded file name
    assert body["arrays"] == {"x": {"shape": [10, 8], "dtype": "float32"}, "y": {"shape": [10], "dtype": "int64"}}
    assert body["sha256"] == sha
    assert body["size_bytes"] == len(raw)
    assert body["checked_against"] == 2  # default: the latest ready version
    assert body["created_by"] == "alice"
    # The blob is on disk, byte for byte, and nothing is left in tmp/.
    assert blob_path(storage_root, sha).read_bytes() == raw
    assert files_under(storage_root / "blobs") == sorted(blobs_before + [f"{sha[:2]}/{sha[2:4]}/{sha}"])
    assert files_under(storage_root / "tmp") == []
    # One row, one audit event.
    dataset = Dataset.objects.get(pk=body["id"])
    assert (dataset.sha256, dataset.role, dataset.checked_against.number) == (sha, "eval", 2)
    event = AuditEvent.objects.get(action="dataset.create")
    assert event.object_id == str(dataset.pk)
    assert event.after["sha256"] == sha
    # The detail endpoint shows the same thing.
    detail = api.get(f"/api/v1/models/digits/datasets/{dataset.pk}/")
    assert detail.status_code == 200
    assert detail.json() == body


def test_dataset_is_checked_against_an_explicit_version(api, versions, tmp_path):
    response = post_dataset(api, "digits", npz(tmp_path), role="calibration", version=1, name="calib-100")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["checked_against"] == 1
    assert body["name"] == "calib-100"
    assert body["role"] == "calibration"
    assert Dataset.objects.get(pk=body["id"]).checked_against.number == 1
    assert AuditEvent.objects.get(action="dataset.create").version.number == 1


def test_dataset_without_y_is_accepted(api, versions, tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.zeros((5, 8), np.float32))

    response = post_dataset(api, "digits", path, role="calibration")

    assert response.status_code == 201, response.content
    assert response.json()["arrays"] == {"x": {"shape": [5, 8], "dtype": "float32"}}


def test_castable_dtype_is_accepted_as_uploaded(api, versions, tmp_path):
    path = tmp_path / "f16.npz"
    np.savez(path, x=np.zeros((3, 8), np.float16))

    response = post_dataset(api, "digits", path, role="eval")

    assert response.status_code == 201, response.content
    assert response.json()["arrays"]["x"] == {"shape": [3, 8], "dtype": "float16"}


def test_same_bytes_twice_share_one_blob(api, versions, storage_root, tmp_path):
    path = npz(tmp_path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()

    first = post_dataset(api, "digits", path, role="eval")
    second = post_dataset(api, "digits", path, role="train", name="again")

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert [p for p in files_under(storage_root / "blobs") if p.endswith(sha)] == [f"{sha[:2]}/{sha[2:4]}/{sha}"]
    assert files_under(storage_root / "tmp") == []


def test_listing_is_filtered_by_role(api, versions, tmp_path):
    created = {}
    for role, n in (("eval", 10), ("train", 20), ("eval", 30), ("calibration", 5)):
        response = post_dataset(api, "digits", npz(tmp_path, f"{role}-{n}.npz", n=n), role=role)
        assert response.status_code == 201, response.content
        created.setdefault(role, set()).add(response.json()["id"])

    everything = api.get("/api/v1/models/digits/datasets/")
    evals = api.get("/api/v1/models/digits/datasets/", {"role": "eval"})
    trains = api.get("/api/v1/models/digits/datasets/", {"role": "train"})

    assert everything.status_code == evals.status_code == trains.status_code == 200
    assert everything.json()["count"] == 4
    assert {d["id"] for d in evals.json()["results"]} == created["eval"]
    assert {d["role"] for d in evals.json()["results"]} == {"eval"}
    assert sorted(d["arrays"]["x"]["shape"][0] for d in evals.json()["results"]) == [10, 30]
    assert {d["id"] for d in trains.json()["results"]} == created["train"]


def test_listing_with_unknown_role_is_400(api, versions):
    response = api.get("/api/v1/models/digits/datasets/", {"role": "production"})

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "production" in error["message"]


def test_listing_is_scoped_to_the_model(api, versions, tmp_path):
    assert post_dataset(api, "digits", npz(tmp_path), role="eval").status_code == 201
    assert api.post("/api/v1/models/", {"name": "other"}, format="json").status_code == 201

    response = api.get("/api/v1/models/other/datasets/")

    assert response.status_code == 200
    assert response.json()["count"] == 0
    other_detail = api.get(f"/api/v1/models/other/datasets/{Dataset.objects.get().pk}/")
    assert other_detail.status_code == 404
    assert other_detail.json()["error"]["code"] == "not_found"


def test_readonly_user_can_list_datasets(api, readonly_api, versions, tmp_path):
    assert post_dataset(api, "digits", npz(tmp_path), role="eval").status_code == 201

    response = readonly_api.get("/api/v1/models/digits/datasets/", {"role": "eval"})

    assert response.status_code == 200
    assert response.json()["count"] == 1


@pytest.mark.django_db
def test_dataset_whose_npy_header_declares_a_huge_array_is_refused_before_loading(api, registered, artifacts,
                                                                                   tmp_path, storage_root):
    """The zip's own size fields are honest and small; the .npy header inside claims 8 TB."""
    from registry import services
    from registry.models import Dataset
    from registry.uploads import StagedFile
    from tests.conftest import files_under

    services.version_create(model=registered, staged=StagedFile.from_path(artifacts["tflite"]),
                            actor=registered.owner)
    path = factories.lying_npz(tmp_path / "liar.npz", (1_000_000_000_000, 8))
    response = post_dataset(api, "digits", path, role="eval")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "unsafe_archive"
    assert "declare" in response.json()["error"]["message"]
    assert not Dataset.objects.exists() and files_under(storage_root / "tmp") == []
