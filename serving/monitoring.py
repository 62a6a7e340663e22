"""TF Serving's Prometheus endpoint: `--monitoring_config_file` names a text MonitoringConfig,

    prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

and the REST port then answers GET <path> with TF Serving's own metric names:
`:tensorflow:serving:request_count{model_name,status}` and the histogram
`:tensorflow:serving:request_latency{model_name,API,entrypoint}` (microseconds, TF Serving's
exponential buckets 10 × 1.8^i), and with `--enable_batching` the batching session's
`:tensorflow:serving:batching_session:*` families (batching.py). Like TF Serving, the labels name
the model, not the version. A few dozen lines instead of a client library: two metric kinds, one
text format, laid out as TF Serving's exporter writes it.
"""
from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass
from pathlib import Path

LATENCY_BUCKETS_US = [10 * 1.8**i for i in range(33)]
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"


class MonitoringConfigError(ValueError):
    pass


@dataclass
class MonitoringConfig:
    enable: bool = False
    path: str = "/monitoring/prometheus/metrics"


def read_config(filename: str) -> MonitoringConfig:
    """Parse the text proto (only `prometheus_config { enable, path }` exists in it)."""
    try:
        text = Path(filename).read_text()
    except OSError as exc:
        raise MonitoringConfigError(f"Cannot read monitoring config {filename}: {exc}") from None
    text = re.sub(r"#.*", "", text)
    body = re.fullmatch(r"\s*(?:prometheus_config\s*:?\s*\{(?P<body>[^{}]*)\}\s*)?", text)
    if body is None:
        raise MonitoringConfigError(f"{filename}: expected `prometheus_config {{ enable: true, path: \"...\" }}`")
    config = MonitoringConfig()
    for key, value in re.findall(r"(\w+)\s*:\s*(\"[^\"]*\"|\w+)\s*[,;]?", body.group("body") or ""):
        if key == "enable" and value in ("true", "false"):
            config.enable = value == "true"
        elif key == "path" and value.startswith('"'):
            config.path = value.strip('"') or config.path
        else:
            raise MonitoringConfigError(f"{filename}: unknown field or value {key}: {value}")
    if not config.path.startswith("/"):
        raise MonitoringConfigError(f"{filename}: path must start with '/', got {config.path!r}")
    return config


@dataclass(frozen=True)
class Family:
    """One metric family as TF Serving exports it: its Prometheus name (TensorFlow's
    `/tensorflow/serving/...` with `/` turned into `:`), kind, help text and, for histograms,
    the bucket upper bounds (TensorFlow's Buckets::Exponential, +Inf added when rendered)."""

    name: str
    kind: str  # "counter" | "histogram"
    help: str
    bounds: tuple[float, ...] = ()


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    return tuple(scale * growth**i for i in range(count))


REQUEST_COUNT_FAMILY = Family(REQUEST_COUNT, "counter", "The total number of requests.")
REQUEST_LATENCY_FAMILY = Family(
    REQUEST_LATENCY, "histogram",
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.", tuple(LATENCY_BUCKETS_US))
Labels = tuple[tuple[str, str], ...]  # in declaration order, as TF Serving prints them


@dataclass
class _Histogram:
    buckets: list[int]
    total: float = 0.0
    count: int = 0


class ServingMetrics:
    """Counters and histograms recorded by the front ends (requests) and the batcher
    (batching.py); rendered in TF Serving's Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: list[Family] = [REQUEST_COUNT_FAMILY, REQUEST_LATENCY_FAMILY]
        self._counts: dict[tuple[str, Labels], int] = {}
        self._histograms: dict[tuple[str, Labels], _Histogram] = {}

    def register(self, *families: Family) -> None:
        """Families rendered even before their first sample (as TensorFlow's registry does)."""
        with self._lock:
            self._families += [f for f in families if f not in self._families]

    def increment(self, family: Family, labels: Labels = (), by: int = 1) -> None:
        with self._lock:
            self._counts[(family.name, labels)] = self._counts.get((family.name, labels), 0) + by

    def observe(self, family: Family, value: float, labels: Labels = ()) -> None:
        with self._lock:
            hist = self._histograms.get((family.name, labels))
            if hist is None:
                hist = self._histograms[(family.name, labels)] = _Histogram([0] * (len(family.bounds) + 1))
            hist.buckets[bisect.bisect_left(family.bounds, value)] += 1
            hist.total += value
            hist.count += 1

    def record(self, *, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """One inference request (Predict/Classify/Regress over gRPC or REST)."""
        self.increment(REQUEST_COUNT_FAMILY, (("model_name", model_name), ("status", status)))
        self.observe(REQUEST_LATENCY_FAMILY, seconds * 1e6,
                     (("model_name", model_name), ("API", api), ("entrypoint", entrypoint)))

    def render(self) -> str:
        """Prometheus text format 0.0.4, laid out like TF Serving's PrometheusExporter."""
        with self._lock:
            families = list(self._families)
            counts = dict(self._counts)
            histograms = {k: _Histogram(list(v.buckets), v.total, v.count) for k, v in self._histograms.items()}
        lines: list[str] = []
        for family in families:
            lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
            if family.kind == "counter":
                lines += [f"{family.name}{{{_labels(labels)}}} {n}"
                          for (name, labels), n in sorted(counts.items()) if name == family.name]
            else:
                for (name, labels), hist in sorted(histograms.items()):
                    if name == family.name:
                        lines += _histogram_lines(family, labels, hist)
        return "\n".join(lines) + "\n"


def _histogram_lines(family: Family, labels: Labels, hist: _Histogram) -> list[str]:
    prefix = _labels(labels) + ("," if labels else "")
    lines, cumulative = [], 0
    for bound, n in zip([f"{b:g}" for b in family.bounds] + ["+Inf"], hist.buckets):
        cumulative += n
        lines.append(f'{family.name}_bucket{{{prefix}le="{bound}"}} {cumulative}')
    lines.append(f"{family.name}_sum{{{_labels(labels)}}} {hist.total:g}")
    lines.append(f"{family.name}_count{{{_labels(labels)}}} {hist.count}")
    return lines


def _labels(labels: Labels) -> str:
    return ",".join(f'{key}="{_esc(value)}"' for key, value in labels)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
