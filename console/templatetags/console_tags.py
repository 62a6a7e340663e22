"""Template filters for units (see console.formatting) and small helpers."""
from __future__ import annotations

import json
from typing import Any

from django import template

from console import formatting

register = template.Library()

register.filter("size", formatting.size)
register.filter("pct", formatting.percent)
register.filter("pts", formatting.points)
register.filter("ms", formatting.ms)
register.filter("ratio", formatting.ratio)
register.filter("progress_pct", formatting.progress)


@register.filter
def get(mapping: Any, key: Any) -> Any:
    """``{{ row|get:"accuracy" }}`` for dict keys a template cannot spell."""
    if mapping is None:
        return None
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def state_class(state: str) -> str:
    """A CSS class for a state badge: ok, warn, bad, or plain."""
    if state in ("live", "succeeded", "ready", "approved", "image_ready"):
        return "ok"
    if state in ("failed", "rejected", "rolled_back", "cancelled"):
        return "bad"
    if state in ("pending_approval", "running", "queued", "promoting", "image_building", "canary", "retrying",
                 "rolling_back"):
        return "warn"
    return "plain"


@register.filter
def get_item(sequence: Any, index: int) -> Any:
    try:
        return sequence[index]
    except (IndexError, TypeError, KeyError):
        return None


@register.filter
def gate_number(value: Any, gate: str) -> str:
    """A gate's measured value or limit in the gate's one unit."""
    if gate == "max_accuracy_drop":
        return formatting.DASH if value is None else f"{float(value) * 100:.2f} pt drop"
    if gate == "max_p95_latency_ms":
        return formatting.ms(value)
    if gate == "min_size_reduction":
        return formatting.ratio(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or formatting.DASH
    return formatting.DASH if value is None else str(value)


@register.filter
def pretty_json(value: Any) -> str:
    """A JSON document indented for a <pre> (escaped by the template like any text)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)
