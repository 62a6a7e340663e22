"""Moving VersionMetrics (optimization → metrics) and IdempotencyKey (integrations → registry)
keeps an existing database's rows, ids and permission grants.

The test database is migrated back to the state before the move (tables
``optimization_versionmetrics`` and ``integrations_idempotencykey``), rows are written there with
the historical models, a group is given the old permission, and the database is migrated forward
again: each row is found through the moved model with its id and values, the group now holds the
new app's permission, and a new row gets the next id."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from metrics.models import VersionMetrics
from registry.models import Dataset, IdempotencyKey, ModelVersion, RegisteredModel

BEFORE_THE_MOVE = [
    ("optimization", "0003_version_metrics_plural"),
    ("integrations", "0001_initial"),
    ("registry", "0002_audit_append_only"),
    ("metrics", None),
]


def _tables() -> set[str]:
    return set(connection.introspection.table_names())


@pytest.fixture
def before_the_move() -> Iterator[MigrationExecutor]:
    """The database as it was before the move; migrated to the latest state afterwards, whatever
    the test did (the other tests share this database)."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE_THE_MOVE)
    try:
        yield executor
    finally:
        executor = MigrationExecutor(connection)  # a fresh loader: what is applied now
        executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_moved_models_keep_their_rows_ids_and_permissions(before_the_move, alice) -> None:
    executor = before_the_move
    assert {"optimization_versionmetrics", "integrations_idempotencykey"} <= _tables()
    assert not {"metrics_versionmetrics", "registry_idempotencykey"} & _tables()
    old = executor.loader.project_state(BEFORE_THE_MOVE[:3]).apps  # the registry's tables as they were then
    old_model = old.get_model("registry", "RegisteredModel").objects.create(
        name="moved", owner_id=alice.pk, task="classification")
    old_version = old.get_model("registry", "ModelVersion").objects.create(
        model=old_model, number=1, format="saved_model", artifact_sha256="a" * 64, artifact_size=1,
        artifact_filename="m.zip", created_by_id=alice.pk)
    old_dataset = old.get_model("registry", "Dataset").objects.create(
        model=old_model, name="eval.npz", role="eval", sha256="b" * 64, size_bytes=1, arrays={}, created_by_id=alice.pk)
    version, dataset = old_version, old_dataset  # ids, until the current models can read them
    old_metrics = old.get_model("optimization", "VersionMetrics").objects.create(
        version_id=version.pk, eval_dataset_id=dataset.pk, metrics={"accuracy": 0.97, "harness_version": 2},
        samples={"inputs": [[0.5]]}, outputs_sha256="c" * 64)
    old_key = old.get_model("integrations", "IdempotencyKey").objects.create(
        user_id=alice.pk, key="push-1", method="POST", path="/api/v1/models/", fingerprint="d" * 64,
        status_code=201, response={"name": "moved"})
    readers = Group.objects.create(name="metric-readers")
    readers.permissions.add(Permission.objects.get(content_type__app_label="optimization",
                                                   codename="view_versionmetrics"))

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    model, version = RegisteredModel.objects.get(pk=old_model.pk), ModelVersion.objects.get(pk=old_version.pk)
    dataset = Dataset.objects.get(pk=old_dataset.pk)

    assert {"metrics_versionmetrics", "registry_idempotencykey"} <= _tables()
    assert not {"optimization_versionmetrics", "integrations_idempotencykey"} & _tables()
    moved = VersionMetrics.objects.get(pk=old_metrics.pk)
    assert (moved.version, moved.eval_dataset, moved.metrics["accuracy"], moved.samples, moved.outputs_sha256) == (
        version, dataset, 0.97, {"inputs": [[0.5]]}, "c" * 64)
    assert list(version.metrics.all()) == [moved]
    key = IdempotencyKey.objects.get(pk=old_key.pk)
    assert (key.user, key.key, key.status_code, key.response) == (alice, "push-1", 201, {"name": "moved"})
    assert list(readers.permissions.values_list("content_type__app_label", "codename")) == [
        ("metrics", "view_versionmetrics")]
    # The ids go on from the moved rows (PostgreSQL's identity sequence moved with the table).
    other = Dataset.objects.create(model=model, name="eval2.npz", role="eval", sha256="e" * 64, size_bytes=1,
                                   arrays={}, created_by=alice)
    assert VersionMetrics.objects.create(version=version, eval_dataset=other, metrics={}).pk > moved.pk
    assert IdempotencyKey.objects.create(user=alice, key="push-2", method="POST", path="/").pk > key.pk
