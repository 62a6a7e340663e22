"""Loaded model versions: a SavedModel or a TFLite flatbuffer behind one interface.

A servable knows its SignatureDefs (the real protos, so GetModelMetadata returns
what TF Serving would) and can run one signature on a dict of numpy arrays. All
request validation lives in inference.py so both formats behave the same.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Protocol

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from .errors import Code, ServingError, internal, invalid_argument

log = logging.getLogger(__name__)

SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
TFLITE_FILENAME = "model.tflite"

SignatureDef = meta_graph_pb2.SignatureDef
Arrays = dict[str, np.ndarray]


class Servable(Protocol):
    """One loaded model version."""

    signature_defs: dict[str, SignatureDef]

    def run(self, signature_name: str, inputs: Arrays) -> Arrays: ...

    def close(self) -> None: ...


def tf_error_to_serving(exc: tf.errors.OpError) -> ServingError:
    """TensorFlow runtime errors keep their canonical code, as in TF Serving."""
    code = next((c for c in Code if c.value[0] == exc.error_code), Code.UNKNOWN)
    return ServingError(code, exc.message)


class SavedModelServable:
    """A SavedModel loaded with tf.saved_model.load; runs its concrete signatures."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.signature_defs = _read_signature_defs(path)
        self._model = tf.saved_model.load(path, tags=[SERVE_TAG])
        self._functions = dict(self._model.signatures)

    def run(self, signature_name: str, inputs: Arrays) -> Arrays:
        function = self._functions.get(signature_name)
        if function is None:  # SignatureDef present but not callable (should not happen)
            raise internal(f"Signature {signature_name} has no concrete function")
        try:
            outputs = function(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        except tf.errors.OpError as exc:
            raise tf_error_to_serving(exc) from exc
        except (TypeError, ValueError) as exc:
            # Binding errors from tf.function: the request does not fit the signature.
            raise invalid_argument(str(exc).splitlines()[0]) from exc
        return {name: value.numpy() for name, value in outputs.items()}

    def close(self) -> None:
        # Nothing to tear down eagerly: requests that resolved this version before the
        # unload still hold a reference (TF Serving's ServableHandle); GC frees it after.
        pass


def _read_signature_defs(path: str) -> dict[str, SignatureDef]:
    """The serving MetaGraph's SignatureDefs, straight from saved_model.pb."""
    pb_path = os.path.join(path, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as handle:
        proto.ParseFromString(handle.read())
    for meta_graph in proto.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return {k: v for k, v in meta_graph.signature_def.items()
                    if not k.startswith("__")}  # __saved_model_init_op is not a signature
    raise ServingError(
        Code.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {SERVE_TAG} }}. "
        "To inspect available tag-sets in the SavedModel, please use the SavedModel "
        "CLI: `saved_model_cli`")


class TFLiteServable:
    """A model.tflite served with tf.lite.Interpreter (--prefer_tflite_model)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # an Interpreter is not thread-safe
        self._interpreter = tf.lite.Interpreter(model_path=path)
        self._interpreter.allocate_tensors()
        self._signatures = self._interpreter.get_signature_list()
        if self._signatures:
            self.signature_defs = {name: self._signature_def_from_runner(name)
                                   for name in self._signatures}
        else:
            self.signature_defs = {"serving_default": self._signature_def_from_tensors()}

    def run(self, signature_name: str, inputs: Arrays) -> Arrays:
        with self._lock:
            try:
                if self._signatures:
                    runner = self._interpreter.get_signature_runner(signature_name)
                    return {k: np.array(v) for k, v in runner(**inputs).items()}
                return self._run_by_tensor_index(inputs)
            except (ValueError, RuntimeError) as exc:
                raise invalid_argument(str(exc)) from exc

    def _run_by_tensor_index(self, inputs: Arrays) -> Arrays:
        interp = self._interpreter
        for detail in interp.get_input_details():
            value = inputs[detail["name"]]
            if tuple(detail["shape"]) != value.shape:
                interp.resize_tensor_input(detail["index"], value.shape)
        interp.allocate_tensors()
        for detail in interp.get_input_details():
            interp.set_tensor(detail["index"], inputs[detail["name"]])
        interp.invoke()
        return {d["name"]: interp.get_tensor(d["index"]).copy()
                for d in interp.get_output_details()}

    def _signature_def_from_runner(self, name: str) -> SignatureDef:
        runner = self._interpreter.get_signature_runner(name)
        sig = SignatureDef(method_name=PREDICT_METHOD)
        for key, detail in runner.get_input_details().items():
            _fill_tensor_info(sig.inputs[key], detail)
        for key, detail in runner.get_output_details().items():
            _fill_tensor_info(sig.outputs[key], detail)
        return sig

    def _signature_def_from_tensors(self) -> SignatureDef:
        sig = SignatureDef(method_name=PREDICT_METHOD)
        for detail in self._interpreter.get_input_details():
            _fill_tensor_info(sig.inputs[detail["name"]], detail)
        for detail in self._interpreter.get_output_details():
            _fill_tensor_info(sig.outputs[detail["name"]], detail)
        return sig

    def close(self) -> None:
        pass  # see SavedModelServable.close: in-flight requests keep the interpreter alive


def _fill_tensor_info(info: meta_graph_pb2.TensorInfo, detail: dict) -> None:
    info.name = detail["name"]
    info.dtype = tf.as_dtype(detail["dtype"]).as_datatype_enum
    shape = detail.get("shape_signature", detail["shape"])
    info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape]))


def load(version_dir: str, prefer_tflite: bool) -> Servable:
    """Load a version directory the way TF Serving's SavedModel adapter would."""
    tflite_path = os.path.join(version_dir, TFLITE_FILENAME)
    if prefer_tflite and os.path.exists(tflite_path):
        log.info("Loading TFLite model %s", tflite_path)
        return TFLiteServable(tflite_path)
    if not os.path.exists(os.path.join(version_dir, "saved_model.pb")):
        raise ServingError(
            Code.NOT_FOUND,
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
            f"{version_dir}. Check that the directory exists and that you have the right "
            "permissions for accessing it.")
    try:
        return SavedModelServable(version_dir)
    except ServingError:
        raise
    except tf.errors.OpError as exc:
        raise tf_error_to_serving(exc) from exc
    except Exception as exc:  # corrupt protos, missing variables, ...: load fails
        raise ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}") from exc


def dtype_name(enum_value: int) -> str:
    """DataTypeString(): DT_FLOAT -> 'float', as in TensorFlow's messages."""
    return types_pb2.DataType.Name(enum_value)[3:].lower()
