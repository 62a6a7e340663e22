"""TF Serving warmup files: ``<version>/assets.extra/tf_serving_warmup_requests``.

A TFRecord of ``tensorflow.serving.PredictionLog`` (at most 1000 records), which
tensorflow_model_server replays when it loads the version (``--enable_model_warmup``, on by
default; a failing record fails the load). The project's own server reads the same file
(``serving/warmup.py``). Django-free.

The bytes are deterministic: inputs are written in sorted name order, each record is serialized
with ``deterministic=True`` (the ``inputs`` map has no defined order otherwise), and TFRecord
framing (length + masked CRC32C) has no timestamps.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

WARMUP_RELATIVE_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000


class WarmupError(ValueError):
    """The warmup requests cannot be written (too many, empty, not convertible to tensors)."""


def build_prediction_logs(model_name: str, requests: Sequence[Mapping[str, Any]],
                          signature_name: str = "serving_default") -> list[bytes]:
    """Serialized ``PredictionLog`` records, one per request (``{input name: array}``)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if not requests:
        raise WarmupError("no warmup requests given")
    if len(requests) > MAX_RECORDS:
        raise WarmupError(f"{len(requests)} warmup requests: TF Serving reads at most {MAX_RECORDS}")
    records = []
    for i, inputs in enumerate(requests):
        if not inputs:
            raise WarmupError(f"warmup request {i} has no inputs")
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature_name
        for name in sorted(inputs):
            try:
                request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(inputs[name])))
            except (TypeError, ValueError) as exc:
                raise WarmupError(f"warmup request {i}, input {name!r}: {exc}") from exc
        entry = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(entry.SerializeToString(deterministic=True))
    return records


def write_warmup_file(path: str | os.PathLike[str], model_name: str,
                      requests: Sequence[Mapping[str, Any]],
                      signature_name: str = "serving_default") -> Path:
    """Write ``requests`` as a TFRecord of PredictionLog(predict_log) at ``path``."""
    import tensorflow as tf

    records = build_prediction_logs(model_name, requests, signature_name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:  # no compression: plain framing, no header
        for record in records:
            writer.write(record)
    return path


def read_warmup_file(path: str | os.PathLike[str]) -> list[Any]:
    """The PredictionLog records of a warmup file (for checks and tests)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for raw in tf.data.TFRecordDataset(str(path)):
        entry = prediction_log_pb2.PredictionLog()
        entry.ParseFromString(raw.numpy())
        logs.append(entry)
    return logs
