"""Hostile structure through the real API and admin (issue 10, defects 4, 6 and 7): JSON nested or
sized to break the parser or the pages, too many or bad tags, oversized form fields, page sizes,
and Django-level errors -- every one answered in the one error shape, leaving rows and storage as
they were. Also: the OpenAPI document is JSON when asked and types tags and recipes truthfully.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from optimization.models import OptimizationJob
from registry import jsonlimits
from registry.models import AuditEvent, ModelVersion, RegisteredModel
from tests import factories
from tests.conftest import PASSWORD, upload
# Shared with the upload corpus: the error-shape assertion, the storage snapshot and its fixtures.
from tests.registry.conftest import assert_error

pytestmark = pytest.mark.django_db

DEPTH = jsonlimits.MAX_DEPTH


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value ``depth`` objects deep, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def nested_text(depth: int) -> str:
    """The JSON text of a ``depth``-deep object, without building (or serializing) it."""
    return '{"k":' * depth + "1" + "}" * depth


def stored_metadata_text(version: ModelVersion) -> str:
    """The row's metadata as text, without spaces: PostgreSQL's jsonb re-spaces what it stores
    (`{"a": 1}`), SQLite keeps it as written; the keys and values here hold no spaces."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT metadata FROM registry_modelversion WHERE id = %s", [version.pk])
        return cursor.fetchone()[0].replace(" ", "")


def store_legacy_metadata(version: ModelVersion, depth: int) -> str:
    """Metadata as it could be stored before the limits: written straight into the row."""
    text = '{"legacy":' + nested_text(depth) + "}"
    with connection.cursor() as cursor:
        cursor.execute("UPDATE registry_modelversion SET metadata = %s WHERE id = %s", [text, version.pk])
    return text


class Rows:
    """A version's mutable state and the audit log, to compare after a refused write."""

    def __init__(self, version: ModelVersion) -> None:
        self.version = version
        self.state = self._state()
        self.events = AuditEvent.objects.count()

    def _state(self) -> tuple[str, str, list[str]]:
        v = ModelVersion.objects.get(pk=self.version.pk)
        return v.description, stored_metadata_text(v), sorted(t.name for t in v.tags.all())

    def assert_unchanged(self) -> None:
        assert self._state() == self.state
        assert AuditEvent.objects.count() == self.events


# --- defect 4: deep JSON ---------------------------------------------------------------------

@pytest.mark.parametrize("depth, code", [(100_000, "json_too_large"), (5_000, "json_too_deep"),
                                         (900, "json_too_deep"), (DEPTH + 1, "json_too_deep")])
def test_deep_metadata_on_upload_is_a_400(depth, code, api, artifacts, snapshot):
    before = snapshot()
    response = upload(api, "digits", artifacts["tflite"], metadata=nested_text(depth))
    needle = f"deeper than {DEPTH} levels" if code == "json_too_deep" else "the limit is 65536 bytes"
    assert_error(response, 400, "validation_error", "metadata", needle)
    before.assert_nothing_left()


def test_metadata_at_the_depth_limit_is_stored(api, artifacts, registered):
    response = upload(api, "digits", artifacts["tflite"], metadata=nested_text(DEPTH))
    assert response.status_code == 201, response.content
    assert jsonlimits.depth(ModelVersion.objects.get(model=registered).metadata) == DEPTH


@pytest.mark.parametrize("body", [
    pytest.param('{"metadata":' + nested_text(5_000) + "}", id="patch-body-5000-deep"),
    pytest.param("[" * 100_000 + "]" * 100_000, id="bare-array-100000-deep"),
])
def test_deep_json_body_is_refused_before_parsing(body, api, version1):
    rows = Rows(version1)
    response = api.patch("/api/v1/models/digits/versions/1/", body, content_type="application/json")
    assert_error(response, 400, "json_too_deep", "deeper than 64")
    rows.assert_unchanged()


@pytest.mark.parametrize("depth", [DEPTH + 1, 60])
def test_patch_metadata_deeper_than_the_limit_is_refused(depth, api, version1):
    rows = Rows(version1)
    response = api.patch("/api/v1/models/digits/versions/1/", {"metadata": nested(depth)}, format="json")
    assert_error(response, 400, "validation_error", "metadata", f"deeper than {DEPTH}")
    rows.assert_unchanged()


def test_patch_metadata_over_the_size_limit_is_refused(api, version1):
    rows = Rows(version1)
    response = api.patch("/api/v1/models/digits/versions/1/", {"metadata": {"blob": "x" * 70_000}}, format="json")
    assert_error(response, 400, "validation_error", "metadata", "65536 bytes")
    rows.assert_unchanged()


def test_token_endpoint_refuses_a_deep_body(client):  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/auth/token/", "[" * 50_000 + "]" * 50_000, content_type="application/json")
    assert_error(response, 400, "json_too_deep")


@pytest.mark.parametrize("recipe, code", [
    pytest.param({"technique": "auto", "params": {"max_accuracy_drop": 0.01, "note": nested(40)}},
                 "validation_error", id="auto-params-40-deep"),
    pytest.param({"technique": "prune", "params": {"sparsity": nested(DEPTH + 5)}},
                 "validation_error", id="technique-params-too-deep"),
    pytest.param({"pipeline": [{"technique": "prune", "params": {"x": "y" * 70_000}}]},
                 "validation_error", id="pipeline-params-too-large"),
])
def test_deep_or_large_recipe_is_refused(recipe, code, api, version1):
    events = AuditEvent.objects.count()
    response = api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1, "recipe": recipe},
                        format="json")
    assert_error(response, 400, code, "recipe")
    assert not OptimizationJob.objects.exists() and AuditEvent.objects.count() == events


def test_recipe_limits_hold_in_the_service_too(alice, version1):
    """Admin, commands and tasks reach plan_recipe without the serializer."""
    from optimization import services as jobs

    with pytest.raises(jsonlimits.JSONLimitError, match=f"deeper than {DEPTH}"):
        jobs.job_create(source=version1, recipe={"technique": "auto", "params": {"x": nested(50)}}, actor=alice)
    assert not OptimizationJob.objects.exists()


def test_auto_recipe_with_unknown_or_malformed_params_is_a_400(api, version1):
    for params, needle in (({"max_accuracy_drop": 0.01, "typo": 1}, "unknown parameter"), ([1, 2], "object")):
        response = api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1,
                                                             "recipe": {"technique": "auto", "params": params}},
                            format="json")
        assert_error(response, 400, "invalid_job", needle)
    assert not OptimizationJob.objects.exists()


# --- the admin with metadata stored deep before the limits -----------------------------------

@pytest.fixture
def legacy(alice, registered, artifacts):  # type: ignore[no-untyped-def]
    """A version whose metadata was stored 900 deep (before the limits), a dataset checked against
    it, and an audit event holding such a value."""
    from registry import audit, services
    from registry.uploads import StagedFile

    version = services.version_create(model=registered, staged=StagedFile.from_path(artifacts["h5"]), actor=alice)
    text = store_legacy_metadata(version, 900)
    dataset = services.dataset_create(model=registered, staged=StagedFile.from_path(_npz(artifacts)), role="eval",
                                      actor=alice, check_version=version)
    event = audit.record(actor=alice, action="version.update", obj=version, model=registered, version=version,
                         before={"metadata": {}}, after={"metadata": nested(900)})
    return version, dataset, event, text


def _npz(artifacts) -> Any:  # type: ignore[no-untyped-def]
    import numpy as np

    path = artifacts["h5"].parent / "legacy-eval.npz"
    if not path.exists():
        path.write_bytes(factories.npz_bytes(x=np.zeros((4, 8), np.float32), y=np.zeros(4, np.int64)))
    return path


@pytest.mark.parametrize("page", ["version-change", "version-add", "version-list", "dataset-change", "dataset-add",
                                  "dataset-list", "audit-list", "audit-change"])
def test_admin_pages_render_with_legacy_deep_json(page, admin_client, legacy):
    version, dataset, event, text = legacy
    url = {"version-change": f"/admin/registry/modelversion/{version.pk}/change/",
           "version-add": "/admin/registry/modelversion/add/",
           "version-list": "/admin/registry/modelversion/",
           "dataset-change": f"/admin/registry/dataset/{dataset.pk}/change/",
           "dataset-add": "/admin/registry/dataset/add/",
           "dataset-list": "/admin/registry/dataset/",
           "audit-list": "/admin/registry/auditevent/",
           "audit-change": f"/admin/registry/auditevent/{event.pk}/change/"}[page]
    response = admin_client.get(url)
    assert response.status_code == 200, response.content[:3000]
    html = response.content.decode()
    if page == "version-change":
        assert "deeper than 32 levels" in html and '"legacy"' not in html
    if page == "audit-change":
        assert "not shown" in html
    assert stored_metadata_text(version) == text


def test_admin_edit_of_a_legacy_version_keeps_its_metadata_unless_replaced(admin_client, legacy):
    version, _, _, text = legacy
    url = f"/admin/registry/modelversion/{version.pk}/change/"
    response = admin_client.post(url, {"description": "edited", "metadata_json": "", "tag_names": ""})
    assert response.status_code == 302, response.content[:3000]
    version.refresh_from_db(fields=["description"])
    assert version.description == "edited" and stored_metadata_text(version) == text
    response = admin_client.post(url, {"description": "edited", "metadata_json": '{"fresh": 1}', "tag_names": ""})
    assert response.status_code == 302
    assert json.loads(stored_metadata_text(version)) == {"fresh": 1}


@pytest.mark.parametrize("text", [nested_text(100_000), nested_text(900), nested_text(DEPTH + 1)])
def test_admin_metadata_input_too_deep_is_a_form_error(text, admin_client, version1):
    rows = Rows(version1)
    response = admin_client.post(f"/admin/registry/modelversion/{version1.pk}/change/",
                                 {"description": "x", "metadata_json": text, "tag_names": ""})
    assert response.status_code == 200
    assert f"nested at most {DEPTH} levels" in response.content.decode()
    rows.assert_unchanged()


# --- defect 6: tags and form size ------------------------------------------------------------

@pytest.mark.parametrize("tags, needle", [
    pytest.param([f"t{i}" for i in range(33)], "no more than 32", id="33-tags"),
    pytest.param([f"t{i}" for i in range(10_000)], "no more than 32", id="10000-tags"),
    pytest.param(["x" * 65], "64 characters", id="65-chars"),
    pytest.param(["<script>"], "lowercase letters", id="charset"),
    pytest.param(["two words"], "lowercase letters", id="space"),
])
def test_bad_tags_on_a_model_are_a_400(tags, needle, api):
    response = api.post("/api/v1/models/", {"name": "tagged", "tags": tags}, format="json")
    assert_error(response, 400, "validation_error", needle)
    assert not RegisteredModel.objects.filter(name="tagged").exists()


def test_thirty_two_tags_are_fine(api):
    response = api.post("/api/v1/models/", {"name": "tagged", "tags": [f"t{i}" for i in range(32)]}, format="json")
    assert response.status_code == 201 and len(response.json()["tags"]) == 32


def test_ten_thousand_comma_separated_tags_on_upload_are_a_400(api, artifacts, snapshot):
    before = snapshot()
    response = upload(api, "digits", artifacts["tflite"], tags=",".join(f"t{i}" for i in range(10_000)))
    assert_error(response, 400, "validation_error", "tags", "no more than 32")
    before.assert_nothing_left()


def test_too_many_tags_on_a_version_patch_are_a_400(api, version1):
    rows = Rows(version1)
    response = api.patch("/api/v1/models/digits/versions/1/", {"tags": [f"t{i}" for i in range(10_000)]},
                         format="json")
    assert_error(response, 400, "validation_error", "tags")
    rows.assert_unchanged()


def test_tag_limit_holds_in_the_service_for_the_admin(admin_client, registered):
    response = admin_client.post(f"/admin/registry/registeredmodel/{registered.pk}/change/", {
        "task": "classification", "description": "", "tag_names": ",".join(f"t{i}" for i in range(40)),
        "aliases-TOTAL_FORMS": "0", "aliases-INITIAL_FORMS": "0"})
    assert response.status_code == 200 and "At most 32 tags" in response.content.decode()
    assert [t.name for t in registered.tags.all()] == ["vision"]


def test_ten_megabyte_form_field_is_a_413_in_the_error_shape(api, artifacts, snapshot):
    before = snapshot()
    response = upload(api, "digits", artifacts["tflite"], description="d" * (10 * 1024 * 1024))
    assert_error(response, 413, "too_large", "form fields")
    before.assert_nothing_left()


def test_ten_megabyte_form_field_outside_the_api_is_an_html_page(admin_client, version1):
    rows = Rows(version1)
    response = admin_client.post(f"/admin/registry/modelversion/{version1.pk}/change/",
                                 {"description": "d" * (10 * 1024 * 1024), "metadata_json": "{}", "tag_names": ""})
    assert response.status_code == 413 and response["Content-Type"].startswith("text/html")
    assert "Bad request" in response.content.decode() and "too large" in response.content.decode()
    rows.assert_unchanged()


def test_ten_megabyte_json_body_is_a_413(api, version1):
    rows = Rows(version1)
    response = api.patch("/api/v1/models/digits/versions/1/", {"description": "d" * (10 * 1024 * 1024)},
                         format="json")
    assert_error(response, 413, "too_large")
    rows.assert_unchanged()


# --- one error shape -------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/api/v1/nope/", "/api/v1/models/digits/versions/abc/", "/api/elsewhere"])
def test_unknown_api_url_is_a_json_404(url, api, registered):
    assert_error(api.get(url), 404, "not_found", "no api endpoint")


def test_unknown_page_outside_the_api_is_an_html_404(client):  # type: ignore[no-untyped-def]
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")
    assert "Not found" in response.content.decode() and "Modelyard" in response.content.decode()


def test_method_not_allowed_is_json(api, registered):
    assert_error(api.put("/api/v1/models/", {}, format="json"), 405, "method_not_allowed", "put")


def test_disallowed_host_on_the_api_is_a_json_400(api):
    response = api.get("/api/v1/models/", HTTP_HOST="evil.example")
    assert_error(response, 400, "bad_request", "refused")


def test_csrf_failure_on_the_api_is_json(alice):
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="alice", password=PASSWORD)
    response = client.post("/api/v1/models/", {"name": "x"}, content_type="application/json")
    assert_error(response, 403, "permission_denied", "csrf")
    assert not RegisteredModel.objects.filter(name="x").exists()


def test_csrf_failure_view_outside_the_api_is_html(alice):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/admin/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403 and "CSRF check failed" in response.content.decode()


def assert_server_error(response, code: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A 500 in the error shape, carrying the request id in the body and the header."""
    assert response.status_code == 500, response.content[:2000]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
    error = body["error"]
    assert error["code"] == code and error["request_id"] in error["message"], error
    assert response["X-Request-ID"] == error["request_id"]
    return error


def test_unexpected_exception_is_a_logged_json_500_with_the_request_id(api, version1, caplog):
    """A real fault, no mock: metadata stored 1,000 deep before the limits cannot be decoded by
    Python's recursive JSON reader at any stack depth, so reading the version raises RecursionError."""
    store_legacy_metadata(version1, 1_000)
    with caplog.at_level(logging.ERROR):
        response = api.get("/api/v1/models/digits/versions/1/", HTTP_X_REQUEST_ID="trace-42.a")
    assert assert_server_error(response, "server_error")["request_id"] == "trace-42.a"
    logged = [r for r in caplog.records if "trace-42.a" in r.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is RecursionError


def test_integrity_failure_500_carries_a_generated_request_id(api, version1, storage_root):
    blob = next((storage_root / "blobs").rglob(version1.artifact_sha256))
    blob.write_bytes(b"tampered")
    response = api.get("/api/v1/models/digits/versions/1/artifact/", HTTP_X_REQUEST_ID="bad id\nforged")
    error = assert_server_error(response, "artifact_integrity_error")
    assert len(error["request_id"]) == 32 and "forged" not in error["request_id"]


def test_every_response_carries_a_request_id(api, registered):
    assert len(api.get("/api/v1/models/")["X-Request-ID"]) == 32
    assert api.get("/api/v1/models/", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"


@pytest.mark.parametrize("value", ["null", "0", "abc", "-1", "501", "1.5", "", "9" * 40])
def test_bad_page_size_is_a_400(value, api, registered):
    assert_error(api.get(f"/api/v1/models/?page_size={value}"), 400, "invalid_page_size", "1 to 500")


@pytest.mark.parametrize("value", ["1", "500"])
def test_page_size_in_range_is_used(value, api, registered):
    response = api.get(f"/api/v1/models/?page_size={value}")
    assert response.status_code == 200 and len(response.json()["results"]) == 1


# --- defect 7: the schema --------------------------------------------------------------------

@pytest.fixture
def schema(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    return json.loads(response.content)


def test_schema_is_yaml_by_default(client):  # type: ignore[no-untyped-def]
    response = client.get("/api/schema/")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/vnd.oai.openapi;")
    assert response.content.startswith(b"openapi:")


def test_schema_types_tags_as_arrays_of_strings(schema):
    components = schema["components"]["schemas"]
    with_tags = [name for name, c in components.items() if "tags" in c.get("properties", {})]
    assert {"ModelOutput", "VersionOutput", "ModelCreateInputRequest", "VersionCreateInputRequest"} <= set(with_tags)
    for name in with_tags:
        tags = components[name]["properties"]["tags"]
        assert tags["type"] == "array" and tags["items"]["type"] == "string", (name, tags)
    assert components["ModelCreateInputRequest"]["properties"]["tags"]["maxItems"] == 32


def test_schema_recipe_is_a_tagged_union(schema):
    recipe = schema["components"]["schemas"]["JobCreateInputRequest"]["properties"]["recipe"]
    branches = recipe["oneOf"]
    by_key: dict[str, list[Any]] = {}
    for branch in branches:
        key = "technique" if "technique" in branch["required"] else "pipeline"
        by_key.setdefault(key, []).append(branch["properties"][key])
    techniques = {v for s in by_key["technique"] for v in s["enum"]}
    assert {"prune", "ptq_int8", "auto", "measure", "prune_int8"} <= techniques
    assert {s.get("type") for s in by_key["pipeline"]} == {"string", "array"}
    prune = next(b for b in branches if b["properties"].get("technique", {}).get("enum") == ["prune"])
    assert prune["properties"]["params"]["properties"]["sparsity"]["type"] == "number"
    job = schema["components"]["schemas"]["JobOutput"]["properties"]["recipe"]
    assert len(job["oneOf"]) == len(branches)


def test_every_operation_documents_its_errors_in_the_error_shape(schema):
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            documented = set(op["responses"])
            expected = {"400", "401", "403", "404", "500"} | ({"409", "413", "415"} if method != "get" else set())
            assert expected <= documented, (method, path, documented)
            for status in expected:
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (method, path, status)


def test_page_size_is_documented_with_its_range(schema):
    params = schema["paths"]["/api/v1/models/"]["get"]["parameters"]
    page_size = next(p for p in params if p["name"] == "page_size")
    assert page_size["schema"] == {"type": "integer", "minimum": 1, "maximum": 500}


# --- the scanner itself ----------------------------------------------------------------------

@pytest.mark.parametrize("text, too_deep", [
    ('{"a": "' + "[" * 100 + '"}', False),            # brackets inside a string do not nest
    ('{"a": "\\"' + "{" * 100 + '"}', False),          # nor after an escaped quote
    ("[" * DEPTH + "]" * DEPTH, False),
    ("[" * (DEPTH + 1) + "]" * (DEPTH + 1), True),
    ("[" * (DEPTH + 1), True),                          # refused before the parser sees it is cut off
])
def test_scan_depth_counts_only_structure(text, too_deep):
    if too_deep:
        with pytest.raises(jsonlimits.JSONLimitError):
            jsonlimits.scan_depth(text, what="x")
    else:
        jsonlimits.scan_depth(text, what="x")
        assert jsonlimits.depth(json.loads(text)) <= DEPTH
