"""Helpers shared by the passes: tf_keras access, parameter checking, guards, training glue.

Everything TensorFlow-related is imported lazily so importing the registry (``PASSES``,
``parse_recipe``) stays cheap for the web process.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .base import Arrays, ModelHandle, PassContext, PassError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

KIND_LABEL = {"keras": "a Keras model", "saved_model": "a SavedModel", "tflite": "a TFLite model"}

_MISSING = object()


def tf():  # noqa: D103
    import tensorflow

    return tensorflow


def keras():  # noqa: D103
    import tf_keras

    return tf_keras


def tfmot():  # noqa: D103
    import tensorflow_model_optimization

    return tensorflow_model_optimization


# ----------------------------------------------------------------------------- parameters


class Param:
    """One parameter: its type, default and allowed range or choices."""

    def __init__(self, kind: type, default: Any = _MISSING, *, lo: float | None = None,
                 hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
                 choices: tuple[Any, ...] | None = None, optional: bool = False) -> None:
        self.kind, self.default, self.lo, self.hi = kind, default, lo, hi
        self.lo_open, self.hi_open, self.choices, self.optional = lo_open, hi_open, choices, optional

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"in {left}{lo}, {hi}{right}"

    def check(self, pass_name: str, name: str, value: Any) -> Any:
        where = f"{pass_name}: parameter {name!r}"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise PassError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
                raise PassError(f"{where} must be an integer, got {value!r}")
            value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PassError(f"{where} must be a number, got {value!r}")
            value = float(value)
        elif self.kind is str:
            if not isinstance(value, str):
                raise PassError(f"{where} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise PassError(f"{where} must be {self.describe_range()}, got {value!r}")
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise PassError(f"{where} must be {self.describe_range()}, got {value!r}")
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise PassError(f"{where} must be {self.describe_range()}, got {value!r}")
        return value


def check_params(pass_name: str, params: dict[str, Any] | None, spec: dict[str, Param]) -> dict[str, Any]:
    """Fill defaults, reject unknown names and values out of range, with a message naming them."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise PassError(f"{pass_name}: params must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(spec))
    if unknown:
        known = ", ".join(sorted(spec)) or "none"
        raise PassError(f"{pass_name}: unknown parameter(s) {', '.join(map(repr, unknown))} "
                        f"(known: {known})")
    out: dict[str, Any] = {}
    for name, p in spec.items():
        if name in params and params[name] is not None:
            out[name] = p.check(pass_name, name, params[name])
        elif p.default is not _MISSING:
            out[name] = p.default
        elif p.optional:
            out[name] = None
        else:
            raise PassError(f"{pass_name}: parameter {name!r} is required")
    return out


TRAINING_PARAMS = {
    "epochs": Param(int, 2, lo=1, hi=1000),
    "batch_size": Param(int, 32, lo=1, hi=65536),
    "learning_rate": Param(float, 1e-4, lo=0, hi=10, lo_open=True),
}


# ----------------------------------------------------------------------------- guards


def require_kind(pass_name: str, accepts: frozenset[str], handle: ModelHandle) -> None:
    if handle.kind not in accepts:
        needs = " or ".join(KIND_LABEL.get(k, k) for k in sorted(accepts))
        raise PassError(f"{pass_name} needs {needs}, got {KIND_LABEL.get(handle.kind, handle.kind)}")


def require_tf_keras(pass_name: str, model: Any) -> Any:
    """tfmot only understands Keras 2 (tf_keras) models; a Keras 3 model fails or, for
    clustering, silently yields None. Refuse anything else up front."""
    k = keras()
    if model is None:
        raise PassError(f"{pass_name}: the handle has no Keras model in memory")
    if not isinstance(model, k.Model):
        mod = type(model).__module__
        hint = ""
        if mod.startswith("keras") and not mod.startswith("keras.src.legacy"):
            hint = (" It looks like a Keras 3 model: tfmot has no Keras 3 support. Re-save it with "
                    "tf_keras (Keras 2) as a SavedModel or .h5 and upload that version.")
        raise PassError(f"{pass_name} needs a tf_keras (Keras 2) model, got "
                        f"{mod}.{type(model).__name__}.{hint}")
    return model


def keras_model_of(pass_name: str, handle: ModelHandle) -> Any:
    if handle.kind != "keras":
        raise PassError(f"{pass_name} needs a Keras model, got {KIND_LABEL.get(handle.kind, handle.kind)}")
    return require_tf_keras(pass_name, handle.keras_model)


def fresh_copy(model: Any) -> Any:
    """A structurally identical model with copied weights, so wrapping/training never mutates the
    caller's model (tfmot wrappers reuse the original layer objects)."""
    k = keras()
    try:
        clone = k.models.clone_model(model)
    except Exception as exc:  # subclassed models cannot be cloned
        raise PassError(f"cannot copy the model for optimization ({exc}); only Sequential and "
                        "functional tf_keras models are supported") from exc
    clone.set_weights(model.get_weights())
    return clone


def require_data(pass_name: str, arrays: Arrays | None, role: str, *, labels: bool = True) -> Arrays:
    if arrays is None or arrays.x is None or len(arrays.x) == 0:
        raise PassError(f"{pass_name} needs a {role} dataset; attach one to the job")
    if labels and arrays.y is None:
        raise PassError(f"{pass_name} needs labels (y) in the {role} dataset")
    return arrays


def calibration_x(ctx: PassContext, pass_name: str, max_samples: int = 500) -> np.ndarray:
    arrays = ctx.calibration if ctx.calibration is not None else ctx.train
    arrays = require_data(pass_name, arrays, "calibration", labels=False)
    return np.asarray(arrays.x[:max_samples])


# ----------------------------------------------------------------------------- training glue


def final_activation(model: Any) -> str | None:
    """'softmax' / 'sigmoid' / 'linear' / ... of the model's output, if it can be seen."""
    k = keras()
    last = model.layers[-1]
    while hasattr(last, "layer") and isinstance(last.layer, k.layers.Layer):  # tfmot wrappers
        last = last.layer
    if isinstance(last, k.layers.Softmax):
        return "softmax"
    act = getattr(last, "activation", None)
    if act is None:
        return None
    name = getattr(act, "__name__", None) or str(act)
    return name


def loss_and_metrics(model: Any, ctx: PassContext, y: np.ndarray) -> tuple[Any, list[Any]]:
    """The loss to fine-tune with, chosen from the task and the output layer."""
    k = keras()
    act = final_activation(model)
    if ctx.task == "classification":
        out_dim = int(model.outputs[0].shape[-1] or 1)
        y = np.asarray(y)
        if out_dim == 1:
            return k.losses.BinaryCrossentropy(from_logits=act != "sigmoid"), ["accuracy"]
        if y.ndim >= 2 and y.shape[-1] == out_dim and y.ndim == len(model.outputs[0].shape):
            return k.losses.CategoricalCrossentropy(from_logits=act != "softmax"), ["accuracy"]
        return k.losses.SparseCategoricalCrossentropy(from_logits=act != "softmax"), ["accuracy"]
    if ctx.task == "regression":
        return k.losses.MeanSquaredError(), []
    raise PassError(f"fine-tuning needs task 'classification' or 'regression' to choose a loss; "
                    f"the model's task is {ctx.task!r}")


def compile_for_task(model: Any, ctx: PassContext, y: np.ndarray, learning_rate: float,
                     reference: Any = None) -> None:
    """Compile with the task's loss; ``reference`` is the unwrapped source model whose output
    activation decides from_logits (tfmot wrappers hide it)."""
    k = keras()
    loss, metrics = loss_and_metrics(reference if reference is not None else model, ctx, y)
    model.compile(optimizer=k.optimizers.Adam(learning_rate=learning_rate), loss=loss, metrics=metrics)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def checkpoint_callback(ctx: PassContext, epochs: int, label: str, start: float = 0.0,
                        span: float = 1.0) -> Any:
    """A Keras callback that reports progress and honours cancellation at every epoch end."""
    k = keras()

    class _Checkpoint(k.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            shown = ", ".join(f"{key}={val:.4g}" for key, val in sorted(logs.items())
                              if isinstance(val, (int, float)))
            ctx.log(f"{label}: epoch {epoch + 1}/{epochs} {shown}".rstrip())
            ctx.checkpoint(start + span * (epoch + 1) / epochs, f"{label}: epoch {epoch + 1}/{epochs}")

    return _Checkpoint()


def fit(model: Any, ctx: PassContext, params: dict[str, Any], label: str, callbacks: list | None = None,
        start: float = 0.0, span: float = 1.0) -> Any:
    train = ctx.train
    return model.fit(np.asarray(train.x), np.asarray(train.y), epochs=params["epochs"],
                     batch_size=params["batch_size"], verbose=0, shuffle=True,
                     callbacks=[*(callbacks or []), checkpoint_callback(ctx, params["epochs"], label,
                                                                         start, span)])


def kernel_weights(model: Any) -> list[tuple[str, np.ndarray]]:
    """(name, value) of every kernel-like weight (Dense/Conv kernels, ≥ 2 dims)."""
    out = []
    for w in model.weights:
        if len(w.shape) >= 2 and ("kernel" in w.name or "embeddings" in w.name):
            out.append((w.name, w.numpy()))
    return out


# ----------------------------------------------------------------------------- tflite


def tflite_constant_tensors(tflite_bytes: bytes, with_data: bool = False) -> list[dict[str, Any]]:
    """Constant (weight) tensors of a TFLite flatbuffer: name, dtype name, number of elements
    (and the raw bytes as ``data`` when asked)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    out = []
    for sg in model.subgraphs:
        for t in sg.tensors:
            buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
            has_data = buf is not None and ((buf.data is not None and len(buf.data) > 0)
                                            or (getattr(buf, "size", 0) or 0) > 0)
            if not has_data:
                continue
            shape = list(t.shape) if t.shape is not None else []
            out.append({"name": t.name.decode() if isinstance(t.name, bytes) else str(t.name),
                        "dtype": type_names.get(t.type, str(t.type)).lower(),
                        "elements": int(np.prod(shape)) if shape else 1, "shape": shape,
                        **({"data": bytes(bytearray(buf.data))} if with_data and buf.data is not None
                           else {})})
    return out


def float_weight_note(tflite_bytes: bytes, what: str) -> tuple[str, dict[str, Any]]:
    """A note on which weight tensors stayed float32 in the converted model (the converter leaves
    tensors under 1024 elements unquantized in dynamic-range mode)."""
    consts = tflite_constant_tensors(tflite_bytes)
    float_w = [c for c in consts if c["dtype"] == "float32" and len(c["shape"]) >= 2]
    small = [c for c in float_w if c["elements"] < 1024]
    by_dtype: dict[str, int] = {}
    for c in consts:
        by_dtype[c["dtype"]] = by_dtype.get(c["dtype"], 0) + 1
    summary = ", ".join(f"{n} {d}" for d, n in sorted(by_dtype.items()))
    if float_w:
        note = (f"{what}: {len(float_w)} weight tensor(s) stayed float32"
                f" ({len(small)} of them under 1024 elements, which the converter does not quantize:"
                f" {', '.join(c['name'] for c in small[:8])}{'…' if len(small) > 8 else ''}); "
                f"no size gain from those. Constant tensors: {summary}.")
    else:
        note = f"{what}: every weight tensor was converted. Constant tensors: {summary}."
    return note, {"float_weight_tensors": len(float_w), "float_small_weight_tensors": len(small),
                  "constant_tensors_by_dtype": by_dtype}
