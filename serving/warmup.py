"""SavedModel warmup: replay <version>/assets.extra/tf_serving_warmup_requests at load.

As in saved_model_warmup_util.cc: a TFRecord file of PredictionLog, at most 1000
records; any failing record fails the load of that version.
"""
from __future__ import annotations

import logging
import os

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from . import inference
from .errors import invalid_argument
from .servable import Servable
from .tensors import request_inputs

log = logging.getLogger(__name__)

WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000


def run_warmup(servable: Servable, version_dir: str, method_check: bool = False) -> None:
    path = os.path.join(version_dir, WARMUP_PATH)
    if not os.path.exists(path):
        return
    count = 0
    try:
        for raw in tf.data.TFRecordDataset(path):
            count += 1
            if count > MAX_RECORDS:
                raise invalid_argument(
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
            _replay(servable, raw.numpy(), method_check)
    except tf.errors.OpError as exc:  # unreadable / corrupt TFRecord
        raise invalid_argument(exc.message) from exc
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
             path, count)


def _replay(servable: Servable, record: bytes, method_check: bool) -> None:
    entry = prediction_log_pb2.PredictionLog()
    entry.ParseFromString(record)
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        inference.predict(servable, request.model_spec.signature_name,
                          request_inputs(request), list(request.output_filter))
    elif kind == "classify_log":
        request = entry.classify_log.request
        inference.classify(servable, request.model_spec.signature_name, request.input,
                           method_check)
    elif kind == "regress_log":
        request = entry.regress_log.request
        inference.regress(servable, request.model_spec.signature_name, request.input,
                          method_check)
    else:
        raise invalid_argument(f"Unsupported log_type for warmup: {kind}")
