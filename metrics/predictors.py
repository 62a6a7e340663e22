"""Load a registered artifact (SavedModel directory, tf_keras file, TFLite file) behind one small
interface so the metrics harness measures a parent and its variants identically.

``load_predictor(path, fmt)`` returns a :class:`Predictor`:

- ``predict(x) -> np.ndarray``: batched inference on float inputs; always returns float32 outputs
  (quantized TFLite outputs are dequantized). Input is cast (or, for int8/uint8 TFLite inputs,
  quantized with the tensor's scale / zero point) to what the model expects.
- ``input_dtype``: the model's own input tensor dtype (``int8`` for a full-integer TFLite model).
- ``input_name`` / ``output_name``: the single input, and the output used (the single one, or the
  first in sorted name order).
- ``weights() -> list[np.ndarray]``: the model's weight arrays as float32. See ``weight_tensors``.

Weight arrays per format (an approximation; counts differ legitimately across formats):

- SavedModel: the loaded object's ``variables`` (all, trainable and not; Keras-saved models also
  expose ``trainable_variables``); if the object has none, the variables captured by the
  ``serving_default`` function.
- tf_keras: ``model.weights`` (includes e.g. BatchNorm moving statistics).
- TFLite: the *constant* tensors of the main subgraph, i.e. tensors backed by a non-empty buffer in
  the flatbuffer, whose dtype is floating point or which carry quantization parameters (so int32
  shape / axis constants are skipped, quantized int32 biases are kept), of rank >= 1, and that
  ``interpreter.get_tensor`` can read. Quantized tensors are dequantized (per-tensor or per-axis).
  Float16 weights are read as stored (fp16, cast to float32). The converter folds BatchNorm into
  kernels, transposes Dense kernels to [out, in], drops all-zero biases and may keep both a float
  and a quantized copy in rare hybrid cases, so parameter counts are close to, not always equal
  to, the Keras ones (equal for a plain trained Dense stack).

No Django here; not thread-safe.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

FORMATS = ("saved_model", "keras", "tflite")
_CHUNK = 256  # rows per inference call for large inputs


@dataclass
class WeightTensor:
    """One weight array with what is needed to reason about it.

    ``quantized_axis`` is the channel axis of a per-axis quantized TFLite tensor (values inside
    one channel share a scale), else ``None``."""

    name: str
    values: np.ndarray  # float32
    quantized_axis: int | None = None


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int

    def as_dict(self) -> dict[str, float | int]:
        return {"scale": self.scale, "zero_point": self.zero_point}


class Predictor:
    """Common interface; see the module docstring."""

    fmt: str
    input_name: str
    output_name: str
    input_dtype: np.dtype
    input_shape: tuple[int | None, ...]  # without the batch dimension
    input_quantization: Quantization | None = None
    output_quantization: Quantization | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.shape[0] <= _CHUNK:
            return self._predict_batch(x)
        parts = [self._predict_batch(x[i:i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)]
        return np.concatenate(parts, axis=0)

    def _predict_batch(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def weight_tensors(self) -> list[WeightTensor]:
        raise NotImplementedError

    def weights(self) -> list[np.ndarray]:
        return [w.values for w in self.weight_tensors()]

    def _cast_input(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x).astype(self.input_dtype, copy=False)


def load_predictor(path: Path, fmt: str) -> Predictor:
    path = Path(path)
    if fmt == "saved_model":
        return SavedModelPredictor(path)
    if fmt == "keras":
        return KerasPredictor(path)
    if fmt == "tflite":
        return TFLitePredictor(path)
    raise ValueError(f"Unknown model format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------
# SavedModel


class SavedModelPredictor(Predictor):
    fmt = "saved_model"

    def __init__(self, directory: Path):
        import tensorflow as tf

        if not directory.is_dir():
            raise ValueError(f"SavedModel path {directory} is not a directory (unpack the .zip first)")
        self._loaded = tf.saved_model.load(str(directory))
        signatures = getattr(self._loaded, "signatures", {})
        if "serving_default" not in signatures:
            raise ValueError(f"SavedModel has no serving_default signature (has: {sorted(signatures)})")
        self._fn = signatures["serving_default"]
        inputs = self._fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"serving_default must take exactly one input; it takes {sorted(inputs)}")
        self.input_name, spec = next(iter(inputs.items()))
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
        self.input_shape = tuple(spec.shape.as_list()[1:]) if spec.shape.rank else ()
        outputs = self._fn.structured_outputs
        self.output_name = sorted(outputs)[0]

    def _predict_batch(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        result = self._fn(**{self.input_name: tf.constant(self._cast_input(x))})
        return np.asarray(result[self.output_name].numpy(), dtype=np.float32)

    def weight_tensors(self) -> list[WeightTensor]:
        variables = list(getattr(self._loaded, "variables", None) or [])
        if not variables:
            variables = list(getattr(self._loaded, "trainable_variables", None) or [])
        if not variables:
            variables = list(self._fn.variables)
        seen: set[int] = set()
        out = []
        for v in variables:
            if id(v) in seen or not v.dtype.is_floating:
                continue
            seen.add(id(v))
            out.append(WeightTensor(v.name, np.asarray(v.numpy(), dtype=np.float32)))
        return out


# --------------------------------------------------------------------------------------------
# tf_keras (.keras / .h5)


class KerasPredictor(Predictor):
    fmt = "keras"

    def __init__(self, file: Path):
        import tensorflow as tf
        import tf_keras as keras

        self.model = keras.models.load_model(str(file), compile=False)
        if len(self.model.inputs) != 1:
            raise ValueError(f"Model must take exactly one input; it takes {len(self.model.inputs)}")
        tensor = self.model.inputs[0]
        self.input_name = self.model.input_names[0]
        self.input_dtype = np.dtype(tensor.dtype.as_numpy_dtype)
        self.input_shape = tuple(tensor.shape.as_list()[1:])
        names = list(self.model.output_names)
        self.output_name = sorted(names)[0]
        self._output_index = names.index(self.output_name)
        model = self.model
        # A traced call, like a SavedModel signature: no per-call Python overhead of predict().
        self._fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)

    def _predict_batch(self, x: np.ndarray) -> np.ndarray:
        result = self._fn(self._cast_input(x))
        if isinstance(result, (list, tuple)):
            result = result[self._output_index]
        elif isinstance(result, dict):
            result = result[self.output_name]
        return np.asarray(result.numpy(), dtype=np.float32)

    def weight_tensors(self) -> list[WeightTensor]:
        return [WeightTensor(w.name, np.asarray(w.numpy(), dtype=np.float32))
                for w in self.model.weights if w.dtype.is_floating]


# --------------------------------------------------------------------------------------------
# TFLite


def _quantization(detail: dict[str, Any]) -> Quantization | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
        return Quantization(float(scale), int(zero_point))
    return None


def _constant_tensor_indices(model_bytes: bytes) -> set[int] | None:
    """Indices of main-subgraph tensors backed by a non-empty flatbuffer buffer, or None if the
    schema module is unavailable / the model cannot be parsed."""
    try:
        from tensorflow.lite.python import schema_py_generated as schema

        model = schema.Model.GetRootAsModel(model_bytes, 0)
        subgraph = model.Subgraphs(0)
        constants = set()
        for i in range(subgraph.TensorsLength()):
            buffer_index = subgraph.Tensors(i).Buffer()
            if buffer_index <= 0 or buffer_index >= model.BuffersLength():
                continue
            buffer = model.Buffers(buffer_index)
            if buffer.DataLength() > 0 or buffer.Offset() > 0:  # offset: data stored after the flatbuffer (>2 GB models)
                constants.add(i)
        return constants
    except Exception:  # noqa: BLE001 - fall back to the op graph below
        return None


class TFLitePredictor(Predictor):
    fmt = "tflite"
    max_cached_interpreters = 4

    def __init__(self, file: Path):
        self._content = Path(file).read_bytes()
        self._interpreters: OrderedDict[int, Any] = OrderedDict()
        base = self._new_interpreter()
        inputs = base.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"TFLite model must take exactly one input; it takes {len(inputs)}")
        self._input = inputs[0]
        outputs = sorted(base.get_output_details(), key=lambda d: d["name"])
        self._output = outputs[0]
        self.input_name = self._input["name"]
        self.output_name = self._output["name"]
        self.input_dtype = np.dtype(self._input["dtype"])
        signature = self._input.get("shape_signature", self._input["shape"])
        self.input_shape = tuple(None if d < 0 else int(d) for d in signature[1:])
        self._native_batch = int(self._input["shape"][0]) if len(self._input["shape"]) else 1
        self._resizable = len(signature) > 0 and int(signature[0]) == -1
        self.input_quantization = _quantization(self._input)
        self.output_quantization = _quantization(self._output)
        self._interpreters[self._native_batch] = base
        self._base = base

    def _new_interpreter(self) -> Any:
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_content=self._content)
        interpreter.allocate_tensors()
        return interpreter

    def _interpreter_for(self, batch: int) -> Any:
        """One interpreter per batch size (LRU-cached), so alternating batch sizes do not
        re-allocate on every call."""
        if batch in self._interpreters:
            self._interpreters.move_to_end(batch)
            return self._interpreters[batch]
        interpreter = self._new_interpreter()
        shape = list(self._input["shape"])
        shape[0] = batch
        interpreter.resize_tensor_input(self._input["index"], shape, strict=False)
        interpreter.allocate_tensors()
        self._interpreters[batch] = interpreter
        while len(self._interpreters) > self.max_cached_interpreters:
            self._interpreters.popitem(last=False)
        return interpreter

    def _cast_input(self, x: np.ndarray) -> np.ndarray:
        q = self.input_quantization
        if q is None:
            return np.asarray(x).astype(self.input_dtype, copy=False)
        info = np.iinfo(self.input_dtype)
        quantized = np.asarray(x, dtype=np.float32) * np.float32(1.0 / q.scale)
        quantized += q.zero_point
        np.rint(quantized, out=quantized)
        np.clip(quantized, info.min, info.max, out=quantized)
        return quantized.astype(self.input_dtype)

    def _invoke(self, interpreter: Any, x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(self._input["index"], x)
        interpreter.invoke()
        raw = interpreter.get_tensor(self._output["index"])
        q = self.output_quantization
        if q is not None:
            return ((raw.astype(np.float32) - q.zero_point) * q.scale).astype(np.float32)
        return np.asarray(raw, dtype=np.float32)

    def _predict_batch(self, x: np.ndarray) -> np.ndarray:
        x = self._cast_input(x)
        batch = x.shape[0]
        if batch == self._native_batch or self._resizable:
            return self._invoke(self._interpreter_for(batch), x)
        try:
            return self._invoke(self._interpreter_for(batch), x)
        except (ValueError, RuntimeError):
            if self._native_batch != 1:
                raise
            # A model with a fixed batch of 1 that refuses to resize: run row by row.
            self._interpreters.pop(batch, None)
            base = self._interpreter_for(1)
            return np.concatenate([self._invoke(base, x[i:i + 1]) for i in range(batch)], axis=0)

    def weight_tensors(self) -> list[WeightTensor]:
        interpreter = self._base
        constants = _constant_tensor_indices(self._content)
        if constants is None:
            constants = self._constants_from_ops(interpreter)
        io_indices = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
        out = []
        for detail in interpreter.get_tensor_details():
            index = detail["index"]
            if index not in constants or index in io_indices:
                continue
            dtype = np.dtype(detail["dtype"])
            params = detail.get("quantization_parameters") or {}
            scales = np.asarray(params.get("scales", []), dtype=np.float32)
            quantized = scales.size > 0 and np.issubdtype(dtype, np.integer)
            if not (np.issubdtype(dtype, np.floating) or quantized):
                continue  # int32 shapes, axes, booleans...
            if len(detail["shape"]) < 1:
                continue
            try:
                raw = np.array(interpreter.get_tensor(index))
            except (ValueError, RuntimeError):
                continue
            axis = None
            if quantized:
                zero_points = np.asarray(params.get("zero_points", np.zeros_like(scales)), dtype=np.float32)
                if zero_points.size != scales.size:  # absent, or one shared zero point
                    zero_points = np.broadcast_to(zero_points if zero_points.size else np.zeros(1, np.float32),
                                                  scales.shape).astype(np.float32)
                if scales.size > 1:
                    axis = int(params.get("quantized_dimension", 0))
                    shape = [1] * raw.ndim
                    shape[axis] = scales.size
                    scales, zero_points = scales.reshape(shape), zero_points.reshape(shape)
                values = (raw.astype(np.float32) - zero_points) * scales
            else:
                values = raw.astype(np.float32)
            out.append(WeightTensor(detail["name"], values, axis))
        return out

    @staticmethod
    def _constants_from_ops(interpreter: Any) -> set[int]:
        """Fallback: tensors read by an op, written by none, and not graph inputs."""
        ops = interpreter._get_ops_details()  # noqa: SLF001 - no public equivalent
        produced = {i for op in ops for i in op["outputs"]}
        consumed = {i for op in ops for i in op["inputs"] if i >= 0}
        inputs = {d["index"] for d in interpreter.get_input_details()}
        return consumed - produced - inputs
