"""The metrics harness: measure a parent and its variants identically on the eval set.

``measure(...) -> (metrics, outputs)``. ``metrics`` is a JSON-serializable dict; ``outputs`` are the
model's raw (float32, dequantized) predictions on ``eval_x``. When measuring a parent, keep both
via ``parent_reference(metrics, outputs)`` and pass that as ``parent=`` when measuring each
variant, so the parent is run once and every comparison uses the same numbers.

Definitions (also returned in ``metrics["definitions"]`` so stored results explain themselves):

- ``size_bytes``: the model *payload* as it is loaded and served: a ``.tflite`` / ``.keras`` /
  ``.h5`` file as is; for a SavedModel, the total of the unpacked directory's files. So, like the
  gzipped size, it does not depend on how the user zipped the upload (stored or deflated).
- ``artifact_bytes``: the artifact exactly as registered (the .zip for a SavedModel, else the file).
- ``gzipped_bytes``: gzip level 9 (header mtime 0, no file name) of the model *payload*: a
  ``.tflite`` / ``.keras`` / ``.h5`` file as is; for a SavedModel directory, a deterministic
  uncompressed tar of the unpacked directory (entries sorted by path, relative names, mtime 0,
  uid/gid 0, no owner names, modes normalised to 0644 / 0755), then gzipped. So the number does
  not depend on how the user zipped the upload.
- ``size_ratio`` / ``gzipped_ratio`` / ``artifact_ratio``: parent / variant, so 4.0 means 4x smaller.
- ``parameter_count`` / ``nonzero_parameters``: over all weight arrays of the predictor (see
  ``metrics.predictors`` for what that means per format).
- ``sparsity``: zeros / elements over the weight arrays with ``ndim >= 2`` (kernels of Dense,
  Conv, embeddings...; biases, BatchNorm vectors and scalars excluded) - the arrays pruning acts on.
  ``kernel_parameters`` is that denominator.
- ``unique_weight_values`` (only when ``clusters`` is given): the maximum over kernels
  (``ndim >= 2``) of the number of distinct values in one kernel; for a per-channel quantized
  TFLite kernel, the maximum over its channels (each channel has its own scale, so one centroid
  maps to a different value per channel).
- classification: ``accuracy`` = argmax(outputs) vs labels (integer labels, or one-hot / probability
  rows -> argmax; single-column outputs are thresholded at 0.5 if they look like probabilities,
  else at 0). ``accuracy_delta`` = variant - parent, as a fraction (0.01 = one point).
  ``agreement``: fraction of rows whose top-1 matches the parent's. ``kl_divergence``: mean over rows
  of KL(parent || variant); outputs whose rows are non-negative and sum to 1 (within 0.05, which
  tolerates int8-dequantized softmax) are used as probabilities (renormalised), others are
  softmaxed; both are clipped to 1e-7 before the log.
- regression: ``mse``, ``mae`` (outputs vs targets, flattened), ``mse_delta`` / ``mae_delta`` =
  variant - parent. ``agreement`` / ``kl_divergence`` are null.
- ``max_abs_diff_vs_parent``: max |variant - parent| over all outputs (any task, parent given).
- latency: ``latency_runs`` timed single-row calls (``time.perf_counter``) after warm-up;
  ``latency_ms_p50`` / ``latency_ms_p95``; ``throughput_per_s`` = rows/s at batch 32.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import platform
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from metrics.predictors import Predictor, load_predictor  # noqa: E402

THROUGHPUT_BATCH = 32
_EPS = 1e-7
_PROB_TOLERANCE = 0.05

# Bumped whenever a stored number changes meaning; a version's stored run from an older harness is
# measured again instead of reused (metrics.measure.measure_version).
# 1: size_bytes was the uploaded artifact. 2: size_bytes is the payload as served, plus artifact_bytes.
HARNESS_VERSION = 2

DEFINITIONS = {
    "size_bytes": "the payload as served: the file, or the total of an unpacked SavedModel directory's files",
    "artifact_bytes": "the registered artifact as uploaded (a SavedModel's .zip, else the file)",
    "gzipped_bytes": "gzip -9 of the file; for a SavedModel directory of a deterministic uncompressed tar of it",
    "size_ratio": "parent / variant (4.0 = 4x smaller)",
    "sparsity": "zeros / elements over weight arrays with ndim >= 2 (kernels)",
    "unique_weight_values": "max over kernels of distinct values (per channel for per-channel quantized tflite)",
    "accuracy_delta": "variant - parent, fraction",
    "kl_divergence": "mean KL(parent || variant) over rows of probabilities (softmax unless rows already sum to 1)",
    "latency": "batch 1, perf_counter, after warm-up; throughput at batch 32",
}


@dataclass
class ParentReference:
    """The parent's harness run on the eval set: its metrics and raw outputs."""

    metrics: dict[str, Any]
    outputs: np.ndarray = field(repr=False)

    def save(self, path: Path) -> None:
        """Store as an .npz (outputs + metrics JSON), for the caller to keep next to the version."""
        with open(path, "wb") as fh:
            np.savez(fh, outputs=self.outputs, metrics=np.array(json.dumps(self.metrics)))

    @classmethod
    def load(cls, path: Path) -> ParentReference:
        with np.load(path, allow_pickle=False) as data:
            return cls(metrics=json.loads(str(data["metrics"])), outputs=np.array(data["outputs"]))


def parent_reference(metrics: dict[str, Any], outputs: np.ndarray) -> ParentReference:
    return ParentReference(metrics=dict(metrics), outputs=np.asarray(outputs, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# sizes


class _CountingWriter(io.RawIOBase):
    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(memoryview(b))
        self.count += n
        return n


def _deterministic_tar(directory: Path, out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*"), key=lambda p: p.relative_to(directory).as_posix()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            elif info.isdir():
                tar.addfile(info)
            # symlinks / devices are not part of a model payload: skipped


def payload_size(payload: Path) -> int:
    """Bytes of the model as loaded: the file, or the sum of a SavedModel directory's files."""
    if payload.is_dir():
        return sum(p.stat().st_size for p in payload.rglob("*") if p.is_file() and not p.is_symlink())
    return payload.stat().st_size


def gzipped_size(payload: Path) -> int:
    """Bytes of gzip -9 of the payload (streamed; see module docstring for directories)."""
    counter = _CountingWriter()
    with gzip.GzipFile(filename="", fileobj=counter, mode="wb", compresslevel=9, mtime=0) as gz:
        if payload.is_dir():
            _deterministic_tar(payload, gz)  # type: ignore[arg-type]
        else:
            with open(payload, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    gz.write(chunk)
    return counter.count


# --------------------------------------------------------------------------------------------
# weights


def weight_stats(predictor: Predictor, clusters: int | None = None) -> dict[str, Any]:
    tensors = predictor.weight_tensors()
    total = nonzero = kernel_total = kernel_zeros = 0
    unique = 0
    for t in tensors:
        v = t.values
        nz = int(np.count_nonzero(v))
        total += v.size
        nonzero += nz
        if v.ndim >= 2:
            kernel_total += v.size
            kernel_zeros += v.size - nz
            if clusters is not None:
                if t.quantized_axis is not None:
                    moved = np.moveaxis(v, t.quantized_axis, 0).reshape(v.shape[t.quantized_axis], -1)
                    count = max(len(np.unique(row)) for row in moved)
                else:
                    count = len(np.unique(v))
                unique = max(unique, count)
    return {
        "parameter_count": total,
        "nonzero_parameters": nonzero,
        "kernel_parameters": kernel_total,
        "sparsity": (kernel_zeros / kernel_total) if kernel_total else None,
        "unique_weight_values": unique if clusters is not None else None,
        "weight_arrays": len(tensors),
    }


# --------------------------------------------------------------------------------------------
# quality


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] > 1:
        return np.argmax(y, axis=-1).ravel()
    return y.reshape(-1).astype(np.int64)


def _looks_like_probabilities(out: np.ndarray) -> bool:
    return bool(out.size) and float(out.min()) >= -_PROB_TOLERANCE and float(out.max()) <= 1 + _PROB_TOLERANCE


def _two_columns(out: np.ndarray) -> np.ndarray:
    """Rows of class scores: (N, C) as is; (N,) / (N, 1) binary outputs become (N, 2)."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
        p = out.reshape(-1)
        if not _looks_like_probabilities(p):
            p = 1.0 / (1.0 + np.exp(-p))
        p = np.clip(p, 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1)
    return out.reshape(out.shape[0], -1)


def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    return np.argmax(_two_columns(outputs), axis=1)


def probabilities(outputs: np.ndarray) -> np.ndarray:
    scores = _two_columns(outputs)
    sums = scores.sum(axis=1)
    if scores.min() >= -_PROB_TOLERANCE and np.all(np.abs(sums - 1.0) <= _PROB_TOLERANCE):
        probs = np.clip(scores, 0.0, None)
    else:
        shifted = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
    probs = np.clip(probs / probs.sum(axis=1, keepdims=True), _EPS, 1.0)
    return probs / probs.sum(axis=1, keepdims=True)


def kl_divergence(parent_outputs: np.ndarray, outputs: np.ndarray) -> float:
    p, q = probabilities(parent_outputs), probabilities(outputs)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def _quality(task: str, outputs: np.ndarray, eval_y: Any, parent: ParentReference | None) -> dict[str, Any]:
    m: dict[str, Any] = {"accuracy": None, "mse": None, "mae": None, "accuracy_delta": None,
                         "mse_delta": None, "mae_delta": None, "agreement": None, "kl_divergence": None,
                         "max_abs_diff_vs_parent": None}
    if task == "classification":
        if eval_y is not None:
            m["accuracy"] = float(np.mean(predicted_classes(outputs) == _labels(eval_y)))
        if parent is not None:
            m["agreement"] = float(np.mean(predicted_classes(outputs) == predicted_classes(parent.outputs)))
            m["kl_divergence"] = max(0.0, kl_divergence(parent.outputs, outputs))
    elif task == "regression" and eval_y is not None:
        pred = np.asarray(outputs, dtype=np.float64).reshape(-1)
        target = np.asarray(eval_y, dtype=np.float64).reshape(-1)
        if pred.size != target.size:
            raise ValueError(f"Regression outputs have {pred.size} values but targets have {target.size}")
        err = pred - target
        m["mse"], m["mae"] = float(np.mean(err ** 2)), float(np.mean(np.abs(err)))
    if parent is not None:
        pm = parent.metrics
        for key in ("accuracy", "mse", "mae"):
            if m[key] is not None and pm.get(key) is not None:
                m[f"{key}_delta"] = m[key] - float(pm[key])
        m["max_abs_diff_vs_parent"] = float(np.max(np.abs(
            np.asarray(outputs, dtype=np.float64) - np.asarray(parent.outputs, dtype=np.float64)))) if outputs.size else 0.0
    return m


# --------------------------------------------------------------------------------------------
# speed


def _timings(predictor: Predictor, eval_x: np.ndarray, latency_runs: int) -> dict[str, Any]:
    runs = max(1, int(latency_runs))
    one = eval_x[:1]
    for _ in range(max(3, min(10, runs // 5))):
        predictor.predict(one)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.predict(one)
        samples.append((time.perf_counter() - start) * 1000.0)

    reps = -(-THROUGHPUT_BATCH // max(1, len(eval_x)))
    batch = np.concatenate([eval_x] * reps, axis=0)[:THROUGHPUT_BATCH] if reps > 1 else eval_x[:THROUGHPUT_BATCH]
    for _ in range(2):
        predictor.predict(batch)
    batch_runs = max(3, runs // 5)
    start = time.perf_counter()
    for _ in range(batch_runs):
        predictor.predict(batch)
    elapsed = time.perf_counter() - start
    return {
        "latency_ms_p50": float(np.percentile(samples, 50)),
        "latency_ms_p95": float(np.percentile(samples, 95)),
        "latency_runs": runs,
        "throughput_per_s": float(THROUGHPUT_BATCH * batch_runs / elapsed) if elapsed > 0 else None,
        "throughput_batch": THROUGHPUT_BATCH,
    }


def environment() -> dict[str, Any]:
    import tensorflow as tf

    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cpus_usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus_usable = os.cpu_count()
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": cpus_usable,
        "tensorflow_version": tf.__version__,
        "platform": platform.platform(),
        "python_version": platform.python_version(),
    }


# --------------------------------------------------------------------------------------------
# entry points


def measure(*, artifact_path: Path, model_dir_or_file: Path, fmt: str, task: str, eval_x: Any, eval_y: Any,
            parent: ParentReference | None, clusters: int | None = None,
            latency_runs: int = 50, predictor: Predictor | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Measure one model on the eval set. Returns ``(metrics, outputs)``; see the module docstring."""
    artifact_path, model_dir_or_file = Path(artifact_path), Path(model_dir_or_file)
    eval_x = np.asarray(eval_x)
    if eval_x.ndim < 1 or len(eval_x) == 0:
        raise ValueError("measure needs a non-empty eval set")
    predictor = predictor or load_predictor(model_dir_or_file, fmt)  # callers that also need samples pass theirs
    outputs = np.asarray(predictor.predict(eval_x), dtype=np.float32)
    if parent is not None and parent.outputs.shape != outputs.shape:
        raise ValueError(f"Parent outputs have shape {parent.outputs.shape} but this model's are {outputs.shape}; "
                         "the parent must be measured on the same eval set")

    metrics: dict[str, Any] = {"format": fmt, "task": task, "eval_rows": int(len(eval_x))}
    metrics["size_bytes"] = payload_size(model_dir_or_file)
    metrics["gzipped_bytes"] = gzipped_size(model_dir_or_file)
    metrics["artifact_bytes"] = artifact_path.stat().st_size
    sizes = (("size_bytes", "size_ratio"), ("gzipped_bytes", "gzipped_ratio"), ("artifact_bytes", "artifact_ratio"))
    metrics.update({ratio: None for _, ratio in sizes})
    if parent is not None:
        for key, ratio in sizes:
            if parent.metrics.get(key):
                metrics[ratio] = float(parent.metrics[key]) / metrics[key]
    metrics.update(weight_stats(predictor, clusters))
    metrics.update(_quality(task, outputs, eval_y, parent))
    metrics.update(_timings(predictor, eval_x, latency_runs))
    metrics["input_name"], metrics["output_name"] = predictor.input_name, predictor.output_name
    metrics["input_dtype"] = np.dtype(predictor.input_dtype).name
    metrics["environment"] = environment()
    metrics["definitions"] = DEFINITIONS
    metrics["harness_version"] = HARNESS_VERSION
    return metrics, outputs


def sample_io(predictor: Predictor, eval_x: Any, n: int = 8) -> dict[str, Any]:
    """A few input/output pairs for promotion to replay against a serving endpoint.

    ``inputs`` are the float rows as fed to ``predictor.predict`` (cast to the input dtype unless
    the input is quantized); ``outputs`` are the predictor's float (dequantized) outputs. ``dtype``
    is the model's input tensor dtype; when ``input_quantization`` is set (full-integer TFLite),
    the endpoint expects ``round(x / scale) + zero_point`` and returns raw values to dequantize with
    ``output_quantization``."""
    x = np.asarray(eval_x)[:n]
    if predictor.input_quantization is None:
        x = x.astype(predictor.input_dtype, copy=False)
    return {
        "inputs": x.tolist(),
        "outputs": np.asarray(predictor.predict(x)).tolist(),
        "input_name": predictor.input_name,
        "output_name": predictor.output_name,
        "dtype": np.dtype(predictor.input_dtype).name,
        "input_quantization": predictor.input_quantization.as_dict() if predictor.input_quantization else None,
        "output_quantization": predictor.output_quantization.as_dict() if predictor.output_quantization else None,
    }
