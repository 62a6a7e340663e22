"""The registry's hot paths run a pinned number of SQL statements: a list page costs the same
whatever its size (nothing is fetched per row), and registering a version or moving an alias runs
a small fixed number. A change that adds a statement fails here with the statements it ran;
``bench/registry.py`` measures what they cost."""
from __future__ import annotations

import hashlib
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry import services
from registry.models import ModelAlias, ModelVersion, RegisteredModel
from tests.conftest import upload

# Counted with APIClient.force_authenticate: authentication costs nothing and the user object (with
# its permission cache) is the same across requests, so these are the view's own statements.
# COUNT, the page (joined to its rows' model, parent and creator), tags with aliases (UNION ALL), metrics
VERSION_PAGE = 4
MODEL_PAGE = 3  # COUNT, the page, tags (the owners' usernames: one more unless cached)
# get_model, savepoint, next number (UPDATE … RETURNING), INSERT version, INSERT audit row, webhook
# subscriptions (integrations), release savepoint; the output is built from what was written
REGISTER = 7
# get_model, get_version, savepoint, the alias (SELECT), UPDATE, INSERT audit row, release savepoint
ALIAS_MOVE = 7


def statements(call):  # type: ignore[no-untyped-def]
    with CaptureQueriesContext(connection) as ctx:
        response = call()
    return response, [q["sql"] for q in ctx.captured_queries]


def _versions(owner, model: RegisteredModel, n: int) -> list[ModelVersion]:  # type: ignore[no-untyped-def]
    """``n`` versions straight in the database (no TensorFlow), each with what a row shows from
    other tables: two tags, a parent (after the first), an alias on every 3rd, metrics on every 2nd."""
    from metrics.models import VersionMetrics
    from registry.models import Dataset, Tag

    tags = [Tag.objects.get_or_create(name=name)[0] for name in ("vision", "candidate")]
    dataset = Dataset.objects.create(model=model, name="eval.npz", role="eval", sha256="0" * 64, size_bytes=10,
                                     arrays={"x": {"shape": [4, 8], "dtype": "float32"}}, created_by=owner)
    rows: list[ModelVersion] = []
    for i in range(1, n + 1):
        v = ModelVersion.objects.create(
            model=model, number=i, format="tflite", artifact_sha256=hashlib.sha256(b"%d" % i).hexdigest(),
            artifact_size=1000 + i, artifact_filename=f"m{i}.tflite", signature={"inputs": [{"name": "x"}]},
            framework={"tensorflow": "2.21.0"}, parent=rows[0] if rows else None, metadata={"i": i},
            created_by=owner)
        v.tags.set(tags if i % 2 else tags[:1])
        if i % 3 == 0:
            ModelAlias.objects.create(model=model, name=f"a{i}", version=v, updated_by=owner)
        if i % 2 == 0:
            VersionMetrics.objects.create(version=v, eval_dataset=dataset, reference=rows[0],
                                          metrics={"accuracy": i / 100})
        rows.append(v)
    RegisteredModel.objects.filter(pk=model.pk).update(latest_version=n)  # as version_create keeps it
    return rows


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["", "&tag=candidate", "&parent=1", "&alias=a9"])
def test_a_version_page_costs_the_same_statements_whatever_its_size(api, alice, registered, query):
    _versions(alice, registered, 40)
    small, small_sql = statements(lambda: api.get(f"/api/v1/models/digits/versions/?page_size=2{query}"))
    large, large_sql = statements(lambda: api.get(f"/api/v1/models/digits/versions/?page_size=40{query}"))
    assert small.status_code == large.status_code == 200
    assert len(large.json()["results"]) > len(small.json()["results"]) or query == "&alias=a9"
    assert len(small_sql) == len(large_sql) == VERSION_PAGE, "\n".join(large_sql)


@pytest.mark.django_db
def test_a_version_page_shows_what_each_row_references(api, alice, registered):
    """The rows built from the page's batched reads say what the database holds."""
    _versions(alice, registered, 7)
    page = api.get("/api/v1/models/digits/versions/?page_size=3&page=2").json()
    assert page["count"] == 7 and [r["version"] for r in page["results"]] == [4, 3, 2]
    v4, v3, v2 = page["results"]
    assert (v4["tags"], v3["tags"], v3["aliases"], v4["aliases"]) == (["vision"], ["candidate", "vision"], ["a3"], [])
    assert (v4["parent"], v4["model"], v4["created_by"], v4["metadata"]) == (1, "digits", "alice", {"i": 4})
    assert [m["metrics"] for m in v4["metrics"]] == [{"accuracy": 0.04}] and v3["metrics"] == []
    assert v4["metrics"][0]["reference"] == 1 and v4["metrics"][0]["created_at"].endswith("Z")
    assert v2 == api.get("/api/v1/models/digits/versions/2/").json()  # a row is what the detail shows
    first = api.get("/api/v1/models/digits/versions/1/").json()
    assert (first["parent"], first["metrics"]) == (None, [])


@pytest.mark.django_db
def test_a_model_page_costs_the_same_statements_whatever_its_size(api, alice):
    for i in range(30):
        services.model_create(name=f"m{i:02d}", owner=alice, tags=["vision", f"t{i}"])
    small, small_sql = statements(lambda: api.get("/api/v1/models/?page_size=2"))
    large, large_sql = statements(lambda: api.get("/api/v1/models/?page_size=30"))
    assert len(large.json()["results"]) == 30
    # one more for the owners' usernames: the user of force_authenticate is another object
    assert len(small_sql) == len(large_sql) == MODEL_PAGE + 1, "\n".join(large_sql)
    assert large.json()["results"][3]["tags"] == ["t3", "vision"]


@pytest.mark.django_db
def test_the_model_list_shows_the_latest_version_kept_by_registering(api, registered, artifacts):
    assert api.get("/api/v1/models/digits/").json()["latest_version"] is None
    for _ in range(2):
        upload(api, "digits", artifacts["tflite"])
    [row] = api.get("/api/v1/models/").json()["results"]
    assert row["latest_version"] == 2 and row["owner"] == "alice" and row["tags"] == ["vision"]
    registered.refresh_from_db()
    assert registered.latest_version == 2


@pytest.mark.django_db
def test_registering_runs_a_fixed_number_of_statements_and_returns_what_it_wrote(api, registered, artifacts):
    upload(api, "digits", artifacts["tflite"])  # warm the inspector; v1
    response, sql = statements(lambda: upload(api, "digits", artifacts["tflite"], description="again"))
    assert response.status_code == 201, response.content
    assert len(sql) == REGISTER, "\n".join(sql)
    assert not any(q.lstrip().startswith("SELECT") and "registry_modelversion" in q for q in sql), \
        "the new version was read back"
    body = response.json()
    stored = ModelVersion.objects.get(model=registered, number=2)
    assert (body["version"], body["description"], body["sha256"]) == (2, "again", stored.artifact_sha256)
    assert body == api.get("/api/v1/models/digits/versions/2/").json()


@pytest.mark.django_db
def test_moving_an_alias_runs_a_fixed_number_of_statements(api, alice, registered):
    _versions(alice, registered, 3)
    assert api.put("/api/v1/models/digits/aliases/champion", {"version": 1}, format="json").status_code == 200
    response, sql = statements(
        lambda: api.put("/api/v1/models/digits/aliases/champion", {"version": 2}, format="json"))
    assert response.status_code == 200 and len(sql) == ALIAS_MOVE, "\n".join(sql)
    assert response.json() == api.get("/api/v1/models/digits/aliases/champion").json()
    assert response.json()["version"] == 2 and response.json()["updated_by"] == "alice"
    assert ModelAlias.objects.get(model=registered, name="champion").version.number == 2


@pytest.mark.django_db
def test_an_invalid_alias_name_is_still_a_400_naming_the_rule(api, alice, registered):
    _versions(alice, registered, 1)
    response = api.put("/api/v1/models/digits/aliases/Bad%20Name!", {"version": 1}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error" and "lowercase" in error["message"]
    assert not ModelAlias.objects.exists()


@pytest.mark.django_db
def test_a_version_counter_behind_its_rows_is_resynchronized_not_a_500(api, alice, registered, artifacts, caplog):
    """Rows inserted without the service (an import script, a restore) leave latest_version
    behind; the unique (model, number) constraint catches the clash and the counter is reset."""
    _versions(alice, registered, 3)
    RegisteredModel.objects.filter(pk=registered.pk).update(latest_version=1)
    response = upload(api, "digits", artifacts["tflite"])
    assert response.status_code == 201, response.content
    assert response.json()["version"] == 4
    registered.refresh_from_db()
    assert registered.latest_version == 4
    assert "resynchronizing" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_an_alias_created_concurrently_is_a_clear_answer_not_a_500(alice, registered):
    """Real connections: another transaction inserts the same alias and commits while this PUT
    runs. PostgreSQL lets both SELECTs find nothing; the unique constraint stops the second insert,
    which becomes a 409. SQLite's IMMEDIATE transactions queue the PUT behind the other writer,
    which then finds the alias and moves it."""
    import threading
    import time

    from django.db import connections, transaction
    from rest_framework.test import APIClient

    v1, v2 = _versions(alice, registered, 2)
    inserted, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        try:
            with transaction.atomic():
                ModelAlias.objects.create(model=registered, name="champion", version=v1, updated_by=alice)
                inserted.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert inserted.wait(10)
    client = APIClient()
    client.force_authenticate(alice)
    answer: dict[str, object] = {}
    put = threading.Thread(target=lambda: answer.update(response=client.put(
        "/api/v1/models/digits/aliases/champion", {"version": 2}, format="json")))
    put.start()
    time.sleep(1.0)  # the PUT is now waiting on the other transaction (its insert, or SQLite's lock)
    release.set()
    thread.join(20)
    put.join(60)
    response = answer["response"]
    alias = ModelAlias.objects.get(model=registered, name="champion")
    if connection.vendor == "postgresql":
        assert response.status_code == 409, response.content
        assert response.json()["error"]["code"] == "alias_race" and "retry" in response.json()["error"]["message"]
        assert alias.version_id == v1.pk
    else:
        assert response.status_code == 200, response.content
        assert alias.version_id == v2.pk
    assert json.loads(json.dumps(response.json()))  # one JSON error or alias shape, never a 500 page


@pytest.mark.django_db
def test_rows_built_directly_have_exactly_the_declared_fields(api, alice, registered):
    """The rows skip DRF's field machinery, so nothing else keeps them in line with the schema."""
    from registry.serializers import AliasOutput, ModelOutput, VersionOutput

    _versions(alice, registered, 3)
    api.put("/api/v1/models/digits/aliases/champion", {"version": 3}, format="json")
    rows = {VersionOutput: api.get("/api/v1/models/digits/versions/").json()["results"][0],
            ModelOutput: api.get("/api/v1/models/").json()["results"][0],
            AliasOutput: api.get("/api/v1/models/digits/aliases/").json()["results"][0]}
    for output, row in rows.items():
        assert list(row) == output.Meta.fields == list(output().fields), output.__name__
