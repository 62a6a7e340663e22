"""Registered models, aliases, the audit trail, auth and the API docs."""
from __future__ import annotations

import pytest

from registry.models import AppendOnlyError, AuditEvent, ModelAlias, RegisteredModel
from tests.conftest import PASSWORD, upload


@pytest.mark.django_db
def test_create_and_patch_model(api, alice):
    created = api.post("/api/v1/models/", {"name": "ranker", "task": "regression", "tags": ["search"],
                                           "description": "ranks"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json() | {"created_at": None, "updated_at": None} == {
        "name": "ranker", "description": "ranks", "task": "regression", "tags": ["search"], "owner": "alice",
        "latest_version": None, "created_at": None, "updated_at": None}
    patched = api.patch("/api/v1/models/ranker/", {"description": "better", "tags": ["a", "b"]}, format="json")
    assert patched.status_code == 200 and patched.json()["tags"] == ["a", "b"]
    model = RegisteredModel.objects.get(name="ranker")
    assert model.description == "better" and model.owner == alice
    assert list(AuditEvent.objects.filter(model=model).order_by("id").values_list("action", flat=True)) == [
        "model.create", "model.update"]


@pytest.mark.django_db
def test_duplicate_and_invalid_model_names_are_refused(api, registered):
    dup = api.post("/api/v1/models/", {"name": "digits"}, format="json")
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "model_exists"
    bad = api.post("/api/v1/models/", {"name": "Bad Name!"}, format="json")
    assert bad.status_code == 400 and "lowercase" in bad.json()["error"]["message"]
    assert RegisteredModel.objects.count() == 1


@pytest.mark.django_db
def test_models_filter_by_tag(api, registered):
    api.post("/api/v1/models/", {"name": "other", "tags": ["text"]}, format="json")
    names = [m["name"] for m in api.get("/api/v1/models/?tag=vision").json()["results"]]
    assert names == ["digits"]


@pytest.mark.django_db
def test_alias_put_move_get_delete_with_history(api, registered, artifacts):
    upload(api, "digits", artifacts["tflite"])
    upload(api, "digits", artifacts["zip"])
    put = api.put("/api/v1/models/digits/aliases/champion", {"version": 1}, format="json")
    assert put.status_code == 200 and put.json()["version"] == 1
    moved = api.put("/api/v1/models/digits/aliases/champion", {"version": 2}, format="json")
    assert moved.status_code == 200 and moved.json()["version"] == 2
    assert api.get("/api/v1/models/digits/aliases/champion").json()["version"] == 2
    by_alias = api.get("/api/v1/models/digits/versions/?alias=champion").json()["results"]
    assert [v["version"] for v in by_alias] == [2] and by_alias[0]["aliases"] == ["champion"]
    moves = list(AuditEvent.objects.filter(action="alias.set").order_by("id"))
    assert [(m.before, m.after) for m in moves] == [(None, {"version": 1}), ({"version": 1}, {"version": 2})]
    assert all(m.actor.username == "alice" and m.created_at for m in moves)
    assert api.delete("/api/v1/models/digits/aliases/champion").status_code == 204
    assert not ModelAlias.objects.exists()
    assert api.get("/api/v1/models/digits/aliases/champion").status_code == 404
    assert AuditEvent.objects.filter(action="alias.delete").count() == 1


@pytest.mark.django_db
def test_alias_to_missing_version_is_404_and_changes_nothing(api, registered, artifacts):
    upload(api, "digits", artifacts["tflite"])
    api.put("/api/v1/models/digits/aliases/champion", {"version": 1}, format="json")
    response = api.put("/api/v1/models/digits/aliases/champion", {"version": 9}, format="json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "version_not_found"
    assert ModelAlias.objects.get().version.number == 1


@pytest.mark.django_db
def test_audit_events_cannot_be_updated_or_deleted(api, registered):
    event = AuditEvent.objects.get(action="model.create")
    event.comment = "rewritten"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(comment="x")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()


@pytest.mark.django_db(transaction=True)
def test_audit_rows_are_protected_by_the_database_itself(alice):
    from django.db import DatabaseError, connection, transaction

    from registry import services

    services.model_create(name="m1", owner=alice)
    event_id = AuditEvent.objects.get().pk
    for sql in ("UPDATE registry_auditevent SET comment = 'x' WHERE id = %s",
                "DELETE FROM registry_auditevent WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, [event_id])
    assert AuditEvent.objects.get().comment == ""


@pytest.mark.django_db
def test_audit_api_filters_by_model_and_is_read_only(api, registered, artifacts):
    upload(api, "digits", artifacts["tflite"])
    events = api.get("/api/v1/audit-events/?model=digits").json()["results"]
    assert {e["action"] for e in events} == {"model.create", "version.create"}
    assert api.get("/api/v1/audit-events/?model=digits&version=1").json()["count"] == 1
    before = AuditEvent.objects.count()
    assert api.post("/api/v1/audit-events/", {}, format="json").status_code in (403, 405)
    assert AuditEvent.objects.count() == before


@pytest.mark.django_db
def test_token_auth_from_username_and_password(client, alice, registered):
    response = client.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    token = response.json()["token"]
    listed = client.get("/api/v1/models/", HTTP_AUTHORIZATION=f"Token {token}")
    assert listed.status_code == 200 and listed.json()["results"][0]["name"] == "digits"
    wrong = client.post("/api/v1/auth/token/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 400 and "error" in wrong.json()


@pytest.mark.django_db
def test_reads_need_login_and_writes_need_permission(client, readonly_api, registered):
    anonymous = client.get("/api/v1/models/")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_authenticated"
    assert readonly_api.get("/api/v1/models/").status_code == 200
    denied = readonly_api.post("/api/v1/models/", {"name": "x"}, format="json")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    assert not RegisteredModel.objects.filter(name="x").exists()


@pytest.mark.django_db
def test_openapi_schema_and_swagger_ui_are_served_offline(admin_client):
    schema = admin_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for p in ["/api/v1/models/", "/api/v1/models/{name}/versions/", "/api/v1/models/{name}/aliases/{alias}"]:
        assert any(k.rstrip("/").replace("{version}", "") .startswith(p.rstrip("/")) for k in paths), p
    docs = admin_client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content and b"cdn.jsdelivr" not in docs.content
