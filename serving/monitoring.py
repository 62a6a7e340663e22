"""TF Serving's Prometheus endpoint: `--monitoring_config_file` names a text MonitoringConfig,

    prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

and the REST port then answers GET <path> with TF Serving's own metric names:
`:tensorflow:serving:request_count{model_name,status}` and the histogram
`:tensorflow:serving:request_latency{model_name,API,entrypoint}` (microseconds, TF Serving's
exponential buckets 10 × 1.8^i). Like TF Serving, the labels name the model, not the version.
A few dozen lines instead of a client library: two metric kinds, one text format.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
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


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_US))
    total: float = 0.0
    count: int = 0


class ServingMetrics:
    """Request counts and latencies, recorded by the gRPC and REST front ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, str, str], _Histogram] = {}

    def record(self, *, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        micros = seconds * 1e6
        with self._lock:
            self._counts[(model_name, status)] = self._counts.get((model_name, status), 0) + 1
            hist = self._latency.setdefault((model_name, api, entrypoint), _Histogram())
            for i, bound in enumerate(LATENCY_BUCKETS_US):
                if micros <= bound:
                    hist.buckets[i] += 1
                    break
            hist.total += micros
            hist.count += 1

    def render(self) -> str:
        """Prometheus text format 0.0.4."""
        with self._lock:
            counts = dict(self._counts)
            latency = {k: _Histogram(list(v.buckets), v.total, v.count) for k, v in self._latency.items()}
        lines = [f"# HELP {REQUEST_COUNT} The total number of requests.", f"# TYPE {REQUEST_COUNT} counter"]
        lines += [f'{REQUEST_COUNT}{{model_name="{_esc(m)}",status="{s}"}} {n}' for (m, s), n in sorted(counts.items())]
        lines += [f"# HELP {REQUEST_LATENCY} Distribution of wall time (in microseconds) for Tensorflow Serving "
                  "request.", f"# TYPE {REQUEST_LATENCY} histogram"]
        for (model, api, entry), hist in sorted(latency.items()):
            labels = f'model_name="{_esc(model)}",API="{api}",entrypoint="{entry}"'
            cumulative = 0
            for bound, n in zip(LATENCY_BUCKETS_US, hist.buckets):
                cumulative += n
                lines.append(f'{REQUEST_LATENCY}_bucket{{{labels},le="{bound:g}"}} {cumulative}')
            lines.append(f'{REQUEST_LATENCY}_bucket{{{labels},le="+Inf"}} {hist.count}')
            lines.append(f"{REQUEST_LATENCY}_sum{{{labels}}} {hist.total:g}")
            lines.append(f"{REQUEST_LATENCY}_count{{{labels}}} {hist.count}")
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
