import hashlib

from tests.conftest import files_under, upload


def test_upload_saved_model_zip_and_download_byte_for_byte(api, registered, artifacts, storage_root):
    response = upload(api, "digits", artifacts["zip"], description="first")
    assert response.status_code == 201, response.content
    body = response.json()
    raw = artifacts["zip"].read_bytes()
    assert body["version"] == 1
    assert body["sha256"] == hashlib.sha256(raw).hexdigest()
    assert body["format"] == "saved_model"
    assert body["signature"]["inputs"][0]["name"] == "features"
    download = api.get("/api/v1/models/digits/versions/1/artifact")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == raw
    assert download["ETag"] == f'"{body["sha256"]}"'
    assert files_under(storage_root / "tmp") == []
