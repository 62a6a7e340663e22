"""The admin uses the same services as the API: uploads, immutability, read-only audit."""
from __future__ import annotations

import pytest

from registry import services
from registry.models import AuditEvent, Dataset, ModelVersion
from tests import factories
from tests.conftest import files_under


@pytest.mark.django_db
def test_admin_upload_creates_a_version_through_the_service(admin_client, admin_user, registered, artifacts):
    assert admin_client.get("/admin/registry/modelversion/add/").status_code == 200
    with open(artifacts["tflite"], "rb") as fh:
        response = admin_client.post("/admin/registry/modelversion/add/", {
            "model": registered.pk, "artifact": fh, "description": "from admin", "metadata_json": '{"a": 1}',
            "tag_names": "x, y"})
    assert response.status_code == 302, response.content.decode()[:2000]
    version = ModelVersion.objects.get(model=registered)
    assert (version.number, version.format, version.description, version.metadata) == (1, "tflite", "from admin", {"a": 1})
    assert [t.name for t in version.tags.all()] == ["x", "y"]
    assert AuditEvent.objects.get(action="version.create").actor == admin_user


@pytest.mark.django_db
def test_admin_upload_of_a_lambda_model_shows_why_and_writes_nothing(admin_client, registered, artifacts,
                                                                       storage_root):
    with open(artifacts["lambda_h5"], "rb") as fh:
        response = admin_client.post("/admin/registry/modelversion/add/", {
            "model": registered.pk, "artifact": fh, "metadata_json": "{}"})
    assert response.status_code == 200
    assert "Lambda layer" in response.content.decode()
    assert not ModelVersion.objects.exists()
    assert files_under(storage_root / "blobs") == [] and files_under(storage_root / "tmp") == []


@pytest.mark.django_db
def test_admin_change_form_cannot_touch_immutable_fields(admin_client, alice, registered, artifacts):
    from registry.uploads import StagedFile

    version = services.version_create(model=registered, staged=StagedFile.from_path(artifacts["tflite"]), actor=alice)
    page = admin_client.get(f"/admin/registry/modelversion/{version.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert version.artifact_sha256 in html and "features" in html  # digest and signature shown readably
    response = admin_client.post(f"/admin/registry/modelversion/{version.pk}/change/", {
        "description": "edited", "metadata_json": '{"k": 2}', "tag_names": "t",
        "artifact_sha256": "0" * 64, "number": 99, "format": "keras"})
    assert response.status_code == 302
    version.refresh_from_db()
    assert (version.description, version.metadata) == ("edited", {"k": 2})
    assert (version.number, version.format, version.artifact_sha256) == (1, "tflite",
                                                                        StagedFile.from_path(artifacts["tflite"]).sha256)
    assert admin_client.post(f"/admin/registry/modelversion/{version.pk}/delete/").status_code == 403


@pytest.mark.django_db
def test_admin_dataset_upload_checks_shapes(admin_client, alice, registered, artifacts, tmp_path):
    import numpy as np

    from registry.uploads import StagedFile

    version = services.version_create(model=registered, staged=StagedFile.from_path(artifacts["tflite"]), actor=alice)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(factories.npz_bytes(x=np.zeros((4, 5), "float32")))
    with open(bad, "rb") as fh:
        response = admin_client.post("/admin/registry/dataset/add/", {
            "model": registered.pk, "file": fh, "role": "eval", "checked_against": version.pk})
    assert response.status_code == 200 and "expects" in response.content.decode()
    assert not Dataset.objects.exists()
    good = tmp_path / "good.npz"
    good.write_bytes(factories.npz_bytes(x=np.zeros((4, 8), "float32"), y=np.zeros(4, "int64")))
    with open(good, "rb") as fh:
        response = admin_client.post("/admin/registry/dataset/add/", {
            "model": registered.pk, "file": fh, "role": "eval", "checked_against": version.pk})
    assert response.status_code == 302
    assert Dataset.objects.get().arrays == {"x": {"shape": [4, 8], "dtype": "float32"},
                                            "y": {"shape": [4], "dtype": "int64"}}


@pytest.mark.django_db
def test_admin_audit_log_is_read_only(admin_client, registered):
    event = AuditEvent.objects.get()
    assert admin_client.get("/admin/registry/auditevent/").status_code == 200
    assert admin_client.get("/admin/registry/auditevent/add/").status_code == 403
    assert admin_client.post(f"/admin/registry/auditevent/{event.pk}/delete/").status_code == 403
    admin_client.post(f"/admin/registry/auditevent/{event.pk}/change/", {"comment": "x"})
    event.refresh_from_db()
    assert event.comment == ""


@pytest.mark.django_db
def test_admin_model_create_goes_through_the_service(admin_client, admin_user):
    response = admin_client.post("/admin/registry/registeredmodel/add/", {
        "name": "from-admin", "task": "classification", "description": "d", "tag_names": "a",
        "aliases-TOTAL_FORMS": "0", "aliases-INITIAL_FORMS": "0"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert AuditEvent.objects.get(action="model.create").actor == admin_user


@pytest.mark.django_db
def test_home_page_lists_models(admin_client, registered):
    page = admin_client.get("/")
    assert page.status_code == 200 and "digits" in page.content.decode()
