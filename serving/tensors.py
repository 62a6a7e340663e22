"""TensorProto <-> numpy, through TensorFlow's own converters so dtypes map exactly."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2

from .errors import invalid_argument
from .servable import Arrays


def to_array(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except Exception as exc:  # malformed proto: TF Serving's Tensor::FromProto failure
        raise invalid_argument(f"tensor parsing error: {alias}") from exc


def request_inputs(request: predict_pb2.PredictRequest) -> Arrays:
    return {alias: to_array(alias, proto) for alias, proto in request.inputs.items()}


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    if array.dtype.kind in ("O", "S", "U"):
        return tf.make_tensor_proto(array, dtype=tf.string)
    return tf.make_tensor_proto(array, dtype=tf.as_dtype(array.dtype))
