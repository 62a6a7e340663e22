"""Versions through the REST API: formats, numbering, immutability, download integrity."""
from __future__ import annotations

import hashlib
import threading

import pytest
from django.db import connection

from registry import archives, inspection, services
from registry.blobstore import artifact_store
from registry.models import AuditEvent, ImmutableVersionError, ModelVersion
from tests.conftest import files_under, upload


def sha(path) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.django_db
@pytest.mark.parametrize("kind, fmt", [
    ("zip", "saved_model"), ("zip_nested", "saved_model"), ("tar", "saved_model"),
    ("keras", "keras"), ("h5", "keras"), ("tflite", "tflite"),
])
def test_every_format_registers_with_signature_and_round_trips(api, registered, artifacts, kind, fmt):
    response = upload(api, "digits", artifacts[kind], description=f"{kind} upload", tags="a,b",
                      metadata='{"run": 7}')
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["version"], body["format"], body["status"]) == (1, fmt, "ready")
    assert body["sha256"] == sha(artifacts[kind]) and body["size_bytes"] == artifacts[kind].stat().st_size
    signature = body["signature"]
    assert signature["name"] == "serving_default"
    assert signature["method"] == "tensorflow/serving/predict"
    [inp] = signature["inputs"]
    assert inp["dtype"] == "float32" and inp["shape"][-1] == 8 and len(inp["shape"]) == 2
    [out] = signature["outputs"]
    assert out["dtype"] == "float32" and out["shape"][-1] == 3
    assert body["metadata"] == {"run": 7} and body["tags"] == ["a", "b"]
    download = api.get("/api/v1/models/digits/versions/1/artifact")
    assert download.status_code == 200
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == body["sha256"]
    version = ModelVersion.objects.get(model=registered, number=1)
    assert version.signature == signature
    assert (artifact_store().blob_path(body["sha256"])).read_bytes() == artifacts[kind].read_bytes()


@pytest.mark.django_db
def test_saved_model_signature_names_input_as_tf_serving_does(api, registered, artifacts):
    body = upload(api, "digits", artifacts["zip"]).json()
    assert body["signature"]["inputs"][0]["name"] == "features"
    assert body["signature"]["outputs"][0]["name"] == "probs"
    assert body["framework"]["tensorflow"].startswith("2.")


@pytest.mark.django_db
def test_identical_content_is_stored_once(api, registered, artifacts, storage_root):
    first = upload(api, "digits", artifacts["zip"]).json()
    second = upload(api, "digits", artifacts["zip"]).json()
    assert (first["version"], second["version"]) == (1, 2)
    assert first["sha256"] == second["sha256"]
    assert len(files_under(storage_root / "blobs")) == 1
    assert files_under(storage_root / "tmp") == []


@pytest.mark.django_db
def test_parent_links_a_variant_and_filters_find_it(api, registered, artifacts):
    upload(api, "digits", artifacts["zip"], tags="baseline")
    child = upload(api, "digits", artifacts["tflite"], parent=1)
    assert child.status_code == 201 and child.json()["parent"] == 1
    assert [v["version"] for v in api.get("/api/v1/models/digits/versions/?parent=1").json()["results"]] == [2]
    assert [v["version"] for v in api.get("/api/v1/models/digits/versions/?format=tflite").json()["results"]] == [2]
    assert [v["version"] for v in api.get("/api/v1/models/digits/versions/?tag=baseline").json()["results"]] == [1]
    assert api.get("/api/v1/models/digits/versions/?status=ready").json()["count"] == 2


@pytest.mark.django_db
def test_download_refuses_bytes_that_no_longer_match_the_digest(api, registered, artifacts):
    body = upload(api, "digits", artifacts["tflite"]).json()
    blob = artifact_store().blob_path(body["sha256"])
    blob.chmod(0o640)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    blob.write_bytes(bytes(data))
    response = api.get("/api/v1/models/digits/versions/1/artifact")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "artifact_integrity_error"
    assert "no longer matches its digest" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_download_answers_304_when_etag_matches(api, registered, artifacts):
    body = upload(api, "digits", artifacts["tflite"]).json()
    response = api.get("/api/v1/models/digits/versions/1/artifact", HTTP_IF_NONE_MATCH=f'"{body["sha256"]}"')
    assert response.status_code == 304


@pytest.mark.django_db
def test_patch_changes_only_mutable_fields_and_is_audited(api, registered, artifacts):
    upload(api, "digits", artifacts["tflite"], description="old")
    response = api.patch("/api/v1/models/digits/versions/1/",
                         {"description": "new", "metadata": {"k": 1}, "tags": ["prod"]}, format="json")
    assert response.status_code == 200, response.content
    version = ModelVersion.objects.get(model=registered, number=1)
    assert (version.description, version.metadata, [t.name for t in version.tags.all()]) == ("new", {"k": 1}, ["prod"])
    event = AuditEvent.objects.filter(action="version.update").get()
    assert event.before["description"] == "old" and event.after["description"] == "new"
    assert event.actor.username == "alice"


@pytest.mark.django_db
def test_immutable_fields_cannot_be_rewritten_even_by_code(api, registered, artifacts):
    upload(api, "digits", artifacts["tflite"])
    version = ModelVersion.objects.get(model=registered, number=1)
    original = version.artifact_sha256
    version.artifact_sha256 = "0" * 64
    with pytest.raises(ImmutableVersionError):
        version.save()
    with pytest.raises(ImmutableVersionError):
        version.save(update_fields=["artifact_sha256", "description"])
    version.refresh_from_db()
    assert version.artifact_sha256 == original


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_uploads_get_twenty_consecutive_numbers(alice, registered, artifacts, tmp_path):
    """Real threads, each with its own database connection, racing for the next number."""
    from registry.uploads import StagedFile

    staged = StagedFile.from_path(artifacts["tflite"])
    barrier = threading.Barrier(20)
    numbers: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            numbers.append(services.version_create(model=registered, staged=staged, actor=alice).number)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 21))
    assert sorted(ModelVersion.objects.filter(model=registered).values_list("number", flat=True)) == list(range(1, 21))
    assert AuditEvent.objects.filter(action="version.create").count() == 20


@pytest.mark.django_db
def test_version_list_is_paginated_newest_first(api, registered, artifacts):
    for _ in range(3):
        upload(api, "digits", artifacts["tflite"])
    page = api.get("/api/v1/models/digits/versions/?page_size=2").json()
    assert page["count"] == 3 and [v["version"] for v in page["results"]] == [3, 2]
    assert [v["version"] for v in api.get(page["next"]).json()["results"]] == [1]


@pytest.mark.django_db
@pytest.mark.parametrize("kind, status, needle", [
    ("zip", 201, None), ("tflite", 201, None), ("lambda_h5", 422, "Lambda"),
])
def test_the_inspector_process_reads_artifacts_as_a_direct_read_does(
        api, registered, artifacts, storage_root, tmp_path, kind, status, needle):
    response = upload(api, "digits", artifacts[kind])
    assert response.status_code == status, response.content
    if status == 201:
        in_process = inspection.inspect_here(artifacts[kind], artifacts[kind].name, workdir=tmp_path,
                                             limits=archives.Limits.from_settings())
        assert response.json()["signature"] == in_process.signature
        assert response.json()["format"] == in_process.format
    else:
        assert response.json()["error"]["code"] == "invalid_model" and needle in response.json()["error"]["message"]
        assert not ModelVersion.objects.exists()
    assert files_under(storage_root / "tmp") == []


@pytest.mark.django_db
def test_unsafe_archive_is_refused_by_the_inspector(api, registered, storage_root, tmp_path):
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    response = upload(api, "digits", evil)
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsafe_archive"
    assert not (tmp_path.parent / "escape.txt").exists()
    assert files_under(storage_root / "tmp") == []
