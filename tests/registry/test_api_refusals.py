"""Ordinary mistakes through the real REST API: datasets that do not fit the version, unknown
names and numbers (404), malformed JSON, immutable fields, permissions. Each is refused with the
right status, the ``{"error": {"code", "message"}}`` body and a message a person understands, and
leaves nothing behind. Hostile input is in test_hostile_uploads.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from registry.models import AuditEvent, ModelAlias, ModelVersion, RegisteredModel
from tests.conftest import post_dataset, upload
from tests.registry.conftest import assert_error, npz_file

pytestmark = pytest.mark.django_db


# --- datasets that do not fit ----------------------------------------------------------------

@pytest.mark.parametrize(("shape", "needles"), [
    ((4, 5), ["[4, 5]", "[N, 8]", "axis 1"]),
    ((4, 8, 1), ["[4, 8, 1]", "rank 2", "[N, 8]"]),
    ((4,), ["[4]", "rank 2", "[N, 8]"]),
])
def test_dataset_with_wrong_shape_is_422(shape, needles, api, version1, snapshot, tmp_path):
    path = npz_file(tmp_path, x=np.zeros(shape, dtype=np.float32))
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval")

    assert_error(response, 422, "dataset_mismatch", "features", *needles)
    before.assert_nothing_left()


@pytest.mark.parametrize("x", [
    np.ones((4, 8), dtype=np.complex64),
    np.full((4, 8), "abc"),
], ids=["complex64", "str"])
def test_dataset_with_non_castable_dtype_is_422(x, api, version1, snapshot, tmp_path):
    path = npz_file(tmp_path, x=x)
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval")

    assert_error(response, 422, "dataset_mismatch", x.dtype.name, "cannot be cast", "float32")
    before.assert_nothing_left()


def test_dataset_without_x_is_422(api, version1, snapshot, tmp_path):
    path = npz_file(tmp_path, features=np.zeros((4, 8), np.float32), y=np.zeros(4))
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval")

    assert_error(response, 422, "dataset_mismatch", "array named 'x'", "features")
    before.assert_nothing_left()


def test_dataset_with_extra_arrays_is_422(api, version1, snapshot, tmp_path):
    path = npz_file(tmp_path, x=np.zeros((4, 8), np.float32), y=np.zeros(4), weights=np.ones(4))
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval")

    assert_error(response, 422, "dataset_mismatch", "only contain arrays 'x' and 'y'", "weights")
    before.assert_nothing_left()


def test_dataset_with_y_length_mismatch_is_422(api, version1, snapshot, tmp_path):
    path = npz_file(tmp_path, x=np.zeros((4, 8), np.float32), y=np.zeros(3, np.int64))
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval")

    assert_error(response, 422, "dataset_mismatch", "'x' has 4 examples but 'y' has 3")
    before.assert_nothing_left()


def test_dataset_bad_role_is_400(api, version1, snapshot, tmp_path):
    path = npz_file(tmp_path, x=np.zeros((4, 8), np.float32))
    before = snapshot()

    response = post_dataset(api, "digits", path, role="production")

    assert_error(response, 400, "validation_error", "role", "production")
    before.assert_nothing_left()


def test_dataset_before_any_version_is_409(api, snapshot, tmp_path):
    path = npz_file(tmp_path, x=np.zeros((4, 8), np.float32))
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval")

    assert_error(response, 409, "no_version", "has no version yet")
    before.assert_nothing_left()


# --- unknown names and numbers ---------------------------------------------------------------

@pytest.mark.parametrize(("method", "url"), [
    ("get", "/api/v1/models/nope/"),
    ("patch", "/api/v1/models/nope/"),
    ("get", "/api/v1/models/nope/versions/"),
    ("post", "/api/v1/models/nope/versions/"),
    ("get", "/api/v1/models/nope/versions/1/"),
    ("patch", "/api/v1/models/nope/versions/1/"),
    ("get", "/api/v1/models/nope/versions/1/artifact/"),
    ("get", "/api/v1/models/nope/datasets/"),
    ("post", "/api/v1/models/nope/datasets/"),
    ("get", "/api/v1/models/nope/aliases/"),
    ("get", "/api/v1/models/nope/aliases/champion/"),
    ("put", "/api/v1/models/nope/aliases/champion/"),
    ("delete", "/api/v1/models/nope/aliases/champion/"),
])
def test_unknown_model_is_404(method, url, api, artifacts, snapshot):
    before = snapshot()
    if method == "post":
        post = upload if url.endswith("versions/") else post_dataset
        response = post(api, "nope", artifacts["zip"], role="eval")
    else:
        response = getattr(api, method)(url, {"version": 1, "description": "x"}, format="json")

    assert_error(response, 404, "model_not_found", "no registered model is named 'nope'")
    before.assert_nothing_left()


@pytest.mark.parametrize(("method", "url"), [
    ("get", "/api/v1/models/digits/versions/99/"),
    ("get", "/api/v1/models/digits/versions/99"),
    ("patch", "/api/v1/models/digits/versions/99/"),
    ("get", "/api/v1/models/digits/versions/99/artifact/"),
    ("put", "/api/v1/models/digits/aliases/champion/"),
])
def test_unknown_version_is_404(method, url, api, version1, snapshot):
    before = snapshot()

    response = getattr(api, method)(url, {"version": 99, "description": "x"}, format="json")

    assert_error(response, 404, "version_not_found", "has no version 99")
    before.assert_nothing_left()
    assert not ModelAlias.objects.exists()


def test_upload_with_unknown_parent_is_404(api, version1, artifacts, snapshot):
    before = snapshot()

    response = upload(api, "digits", artifacts["zip"], parent=99)

    assert_error(response, 404, "version_not_found", "has no version 99")
    before.assert_nothing_left()


def test_dataset_checked_against_unknown_version_is_404(api, version1, snapshot, tmp_path):
    path = npz_file(tmp_path, x=np.zeros((4, 8), np.float32))
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval", version=99)

    assert_error(response, 404, "version_not_found", "has no version 99")
    before.assert_nothing_left()


# --- malformed requests ----------------------------------------------------------------------

def test_malformed_json_on_model_create_is_400(api, snapshot):
    before = snapshot()

    response = api.post("/api/v1/models/", data='{"name": "mnist", "task": ', content_type="application/json")

    assert_error(response, 400, "malformed_request", "JSON parse error")
    before.assert_nothing_left()
    assert not RegisteredModel.objects.filter(name="mnist").exists()


def test_malformed_json_on_version_patch_is_400(api, version1, snapshot):
    before_row = ModelVersion.objects.values().get(pk=version1.pk)
    before = snapshot()

    response = api.patch("/api/v1/models/digits/versions/1/", data='{"description": ',
                         content_type="application/json")

    assert_error(response, 400, "malformed_request", "JSON parse error")
    before.assert_nothing_left()
    assert ModelVersion.objects.values().get(pk=version1.pk) == before_row
    assert not AuditEvent.objects.filter(action="version.update").exists()


@pytest.mark.parametrize(("metadata", "needle"), [
    ("{not json", "not valid json"),
    ("[1, 2, 3]", "must be a json object"),
    ('"a string"', "must be a json object"),
])
def test_bad_metadata_form_field_is_400(metadata, needle, api, artifacts, snapshot):
    before = snapshot()

    response = upload(api, "digits", artifacts["zip"], metadata=metadata)

    assert_error(response, 400, "validation_error", "metadata", needle)
    before.assert_nothing_left()


@pytest.mark.parametrize("change", [
    {"format": "tflite"},
    {"sha256": "0" * 64},
    {"artifact_sha256": "0" * 64},
    {"number": 7},
    {"signature": {}},
    {"description": "fine", "status": "failed"},
])
def test_patch_immutable_version_field_is_400(change, api, version1, snapshot):
    version1.refresh_from_db()
    before_row = ModelVersion.objects.values().get(pk=version1.pk)
    before = snapshot()

    response = api.patch("/api/v1/models/digits/versions/1/", change, format="json")

    error = assert_error(response, 400, "validation_error", "immutable")
    for field in set(change) - {"description"}:
        assert field in error["message"]
    before.assert_nothing_left()
    version1.refresh_from_db()
    assert ModelVersion.objects.values().get(pk=version1.pk) == before_row
    assert version1.format == "keras"
    assert version1.description == ""
    assert not AuditEvent.objects.filter(action="version.update").exists()


# --- permissions -----------------------------------------------------------------------------

def test_readonly_user_cannot_upload_a_version(readonly_api, artifacts, snapshot):
    before = snapshot()

    response = upload(readonly_api, "digits", artifacts["zip"])

    assert_error(response, 403, "permission_denied", "permission")
    before.assert_nothing_left()


def test_readonly_user_cannot_upload_a_dataset(readonly_api, version1, snapshot, tmp_path):
    path = npz_file(tmp_path, x=np.zeros((4, 8), np.float32))
    before = snapshot()

    response = post_dataset(readonly_api, "digits", path, role="eval")

    assert_error(response, 403, "permission_denied", "permission")
    before.assert_nothing_left()


def test_readonly_user_cannot_create_a_model(readonly_api, snapshot):
    before = snapshot()

    response = readonly_api.post("/api/v1/models/", {"name": "mnist"}, format="json")

    assert_error(response, 403, "permission_denied", "permission")
    before.assert_nothing_left()
    assert not RegisteredModel.objects.filter(name="mnist").exists()


def test_readonly_user_cannot_move_an_alias(readonly_api, version1, snapshot):
    before = snapshot()

    response = readonly_api.put("/api/v1/models/digits/aliases/champion/", {"version": 1}, format="json")

    assert_error(response, 403, "permission_denied", "permission")
    before.assert_nothing_left()
    assert not ModelAlias.objects.exists()
    assert not AuditEvent.objects.filter(action="alias.set").exists()


def test_readonly_user_can_still_read(readonly_api, version1):
    assert readonly_api.get("/api/v1/models/digits/versions/1/").status_code == 200


@pytest.mark.parametrize("url", [
    "/api/v1/models/",
    "/api/v1/models/digits/",
    "/api/v1/models/digits/versions/",
    "/api/v1/models/digits/versions/1/",
    "/api/v1/models/digits/versions/1/artifact/",
    "/api/v1/models/digits/datasets/",
    "/api/v1/models/digits/aliases/",
    "/api/v1/audit-events/",
])
def test_anonymous_reads_are_401(url, version1):
    from rest_framework.test import APIClient

    response = APIClient().get(url)

    assert_error(response, 401, "not_authenticated", "authentication credentials were not provided")


def test_anonymous_upload_is_401(artifacts, snapshot):
    from rest_framework.test import APIClient

    before = snapshot()

    response = upload(APIClient(), "digits", artifacts["zip"])

    assert_error(response, 401, "not_authenticated", "authentication credentials")
    before.assert_nothing_left()
