"""What the compare page and a release's diff show: metrics side by side with units and ratios
against the parent, charts, signature and metadata differences; and the release stepper."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from console import charts, formatting, selectors
from registry.models import ModelVersion, RegisteredModel
from releases.models import Release


@dataclass
class MetricRow:
    label: str
    key: str
    fmt: Callable[[Any], str]
    better: str = ""  # "low" / "high": how the ratio vs the parent reads


METRIC_ROWS = [
    MetricRow("Accuracy", "accuracy", formatting.percent, "high"),
    MetricRow("MSE", "mse", lambda v: formatting.DASH if v is None else f"{float(v):.4g}", "low"),
    MetricRow("Size (as served)", "size_bytes", formatting.size, "low"),
    MetricRow("Gzipped size", "gzipped_bytes", formatting.size, "low"),
    MetricRow("Artifact", "artifact_bytes", formatting.size, "low"),
    MetricRow("Latency p50", "latency_ms_p50", formatting.ms, "low"),
    MetricRow("Latency p95", "latency_ms_p95", formatting.ms, "low"),
    MetricRow("Throughput", "throughput_per_s", lambda v: formatting.DASH if v is None else f"{float(v):,.0f}/s",
              "high"),
    MetricRow("Sparsity", "sparsity", lambda v: formatting.percent(v, 1)),
    MetricRow("Agreement with parent", "agreement", lambda v: formatting.percent(v, 1)),
]


def _ratio_text(row: MetricRow, mine: Any, parent: Any) -> str:
    """How this version compares with its parent on one metric, in words with units."""
    try:
        a, b = float(mine), float(parent)
    except (TypeError, ValueError):
        return ""
    if row.key == "accuracy":
        return formatting.points(a - b)
    if row.better == "low" and a > 0:
        return f"{b / a:.2f}× smaller" if b >= a else f"{a / b:.2f}× larger" if b > 0 else ""
    if row.better == "high" and b > 0:
        return f"{a / b:.2f}× higher" if a >= b else f"{b / a:.2f}× lower"
    return ""


def compare_context(model: RegisteredModel, numbers: list[int]) -> dict[str, Any]:
    versions = selectors.compare_versions(model, numbers)
    metrics = {v.pk: selectors.primary_metrics(v) for v in versions}
    by_pk = {v.pk: v for v in versions}
    table = []
    for row in METRIC_ROWS:
        cells = []
        for v in versions:
            value = metrics[v.pk].get(row.key)
            parent = by_pk.get(v.parent_id) if v.parent_id else None
            ratio = _ratio_text(row, value, metrics[parent.pk].get(row.key)) if parent else ""
            cells.append({"text": row.fmt(value), "ratio": ratio})
        if any(c["text"] != formatting.DASH for c in cells):
            table.append({"label": row.label, "cells": cells})
    return {
        "model": model, "versions": versions, "table": table, "numbers": [v.number for v in versions],
        "all_numbers": list(ModelVersion.objects.filter(model=model).order_by("-number")
                            .values_list("number", flat=True)[:200]),
        "techniques": [selectors.technique_of(v) for v in versions],
        "size_chart": _chart(versions, metrics, "gzipped_bytes", "size-accuracy",
                             "Gzipped size vs accuracy", "gzipped size (smaller is better)", formatting.size),
        "latency_chart": _chart(versions, metrics, "latency_ms_p50", "latency-accuracy",
                                "p50 latency vs accuracy", "p50 latency (lower is better)", formatting.ms),
        "signature": _diff_rows(versions, lambda v: v.signature or {}),
        "metadata": _diff_rows(versions, lambda v: v.metadata or {}),
        "jobs": selectors.auto_jobs(versions),
    }


def _chart(versions: list[ModelVersion], metrics: dict[int, dict[str, Any]], x_key: str, chart_id: str,
           title: str, x_label: str, x_fmt: Callable[[Any], str]) -> Any:
    points = [charts.Point(f"v{v.number}", f"v{v.number} {selectors.technique_of(v)}",
                           float(metrics[v.pk][x_key]), float(metrics[v.pk]["accuracy"]))
              for v in versions if metrics[v.pk].get(x_key) is not None
              and metrics[v.pk].get("accuracy") is not None]
    return charts.scatter(points, title=title, x_label=x_label, y_label="accuracy (higher is better)",
                          chart_id=chart_id, x_fmt=x_fmt, y_fmt=lambda v: formatting.percent(v, 1))


def _diff_rows(versions: list[ModelVersion], get: Callable[[ModelVersion], dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per top-level key, one cell per version; ``differs`` when not all cells agree."""
    docs = [get(v) for v in versions]
    keys = sorted({k for d in docs for k in d})
    rows = []
    for key in keys:
        cells = [json.dumps(d[key], sort_keys=True) if key in d else formatting.DASH for d in docs]
        rows.append({"key": key, "cells": cells, "differs": len(set(cells)) > 1})
    return rows


def release_diff(mine: ModelVersion, theirs: ModelVersion | None) -> list[dict[str, Any]]:
    """This release's version against the one live in its environment, metric by metric."""
    if theirs is None:
        return []
    a, b = selectors.primary_metrics(mine), selectors.primary_metrics(theirs)
    rows = []
    for row in METRIC_ROWS[:7]:
        if a.get(row.key) is None and b.get(row.key) is None:
            continue
        rows.append({"label": row.label, "mine": row.fmt(a.get(row.key)), "theirs": row.fmt(b.get(row.key)),
                     "change": _ratio_text(row, a.get(row.key), b.get(row.key))})
    same_sig = json.dumps(mine.signature, sort_keys=True) == json.dumps(theirs.signature, sort_keys=True)
    rows.append({"label": "Signature", "mine": "same" if same_sig else "differs", "theirs": "",
                 "change": "" if same_sig else "clients may break"})
    changed = sorted(k for k in set(mine.metadata or {}) | set(theirs.metadata or {})
                     if (mine.metadata or {}).get(k) != (theirs.metadata or {}).get(k))
    rows.append({"label": "Metadata", "mine": ", ".join(changed) + " changed" if changed else "same",
                 "theirs": "", "change": ""})
    return rows


ReleaseState = Release.State


def stepper(release: Release) -> list[dict[str, str]]:
    """The pipeline draft → … → live, each step done, current, failed or to do."""
    names = [ReleaseState.DRAFT, ReleaseState.PENDING_APPROVAL, ReleaseState.APPROVED]
    if release.environment.build_image:
        names += [ReleaseState.IMAGE_BUILDING, ReleaseState.IMAGE_READY]
    names += [ReleaseState.PROMOTING, ReleaseState.LIVE]
    state = release.state
    order = {s: i for i, s in enumerate(names)}
    if state == ReleaseState.CANARY:
        current = order[ReleaseState.PROMOTING] + 0.5
    elif state in order:
        current = order[state]
    elif state in (ReleaseState.ROLLING_BACK, ReleaseState.ROLLED_BACK, ReleaseState.SUPERSEDED):
        current = len(names)  # it went live, then was replaced
    elif state == ReleaseState.FAILED and release.failure_step.startswith("rollback"):
        current = order[ReleaseState.LIVE]  # it went live; going back failed
    elif state == ReleaseState.FAILED:
        step = release.failure_step
        current = order[ReleaseState.PROMOTING] if step.startswith("promote") else order.get(ReleaseState.IMAGE_BUILDING, order[ReleaseState.APPROVED])
    else:  # rejected, cancelled: stopped after the last decision point reached
        current = order[ReleaseState.APPROVED] if release.decided_at else order[ReleaseState.PENDING_APPROVAL]
    steps = []
    for i, name in enumerate(names):
        if i < current:
            status = "done"
        elif i == current or (i == int(current) and current % 1):
            status = "failed" if state in (ReleaseState.FAILED, ReleaseState.REJECTED, ReleaseState.CANCELLED) else "current"
        else:
            status = "todo"
        if name == ReleaseState.LIVE and state == ReleaseState.LIVE:
            status = "done"
        steps.append({"name": name, "label": Release.State(name).label.replace("_", " "), "status": status})
    return steps
