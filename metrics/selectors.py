"""Reads of recorded measurements, named for what their callers ask."""
from __future__ import annotations

from typing import Any

from metrics import harness
from metrics.models import VersionMetrics
from registry import sql
from registry.models import Dataset, ModelVersion
from registry.serializers import drf_datetime, json_value


def reusable(version: ModelVersion, eval_dataset: Dataset) -> VersionMetrics | None:
    """The stored run of ``version`` on ``eval_dataset`` if the harness can reuse it: it kept its
    outputs and was measured by the current harness (older ones are measured again)."""
    stored = VersionMetrics.objects.filter(version=version, eval_dataset=eval_dataset).exclude(
        outputs_sha256="").first()
    if stored is None or stored.metrics.get("harness_version", 1) != harness.HARNESS_VERSION:
        return None
    return stored


def runs_by_version(ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Harness runs of these versions in one query, oldest first, each shaped as ``MetricsOutput``
    (eval dataset id, the reference's number, metrics, time): the version output's ``metrics``,
    for a whole page at once (``registry.extensions``). Written in SQL (``registry.sql``): it runs
    for every page of versions, and the ORM spent more building it than running it."""
    run, version = VersionMetrics, ModelVersion
    found: dict[int, list[dict[str, Any]]] = {}
    for version_id, eval_dataset, reference, metrics, created_at in sql.fetch(
            f"SELECT {sql.column(run, 'version')}, {sql.column(run, 'eval_dataset')}, "
            f"reference.{sql.name(version, 'number')}, {sql.column(run, 'metrics')}, {sql.column(run, 'created_at')} "
            f"FROM {sql.table(run)} "
            f"LEFT OUTER JOIN {sql.table(version)} reference ON {sql.column(run, 'reference')} = "
            f"reference.{sql.name(version, 'id')} WHERE {sql.column(run, 'version')} IN ({sql.placeholders(ids)}) "
            f"ORDER BY {sql.column(run, 'id')}", ids):
        found.setdefault(version_id, []).append({
            "eval_dataset": eval_dataset, "reference": reference, "metrics": json_value(metrics),
            "created_at": drf_datetime(sql.aware(created_at))})
    return found

