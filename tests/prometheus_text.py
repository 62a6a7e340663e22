"""Read one series out of Prometheus text exposition (no Django: the serving suite uses it too)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels are exactly ``labels``, or None. (The parser
    names a counter's samples ``<family>_total`` even where the text has no suffix, as TF
    Serving's counters do.)"""
    for family in text_string_to_metric_families(text):
        names = {name, name + "_total"} if family.type == "counter" else {name}
        for s in family.samples:
            if s.name in names and s.labels == labels:
                return s.value
    return None
