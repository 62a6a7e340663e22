"""Post-training quantization to TFLite: dynamic range, float16, full integer (int8)."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import common as c
from .base import ModelHandle, Pass, PassContext, PassError


def make_converter(handle: ModelHandle, pass_name: str) -> Any:
    tf = c.tf()
    if handle.kind == "keras":
        model = c.require_tf_keras(pass_name, handle.keras_model)
        return tf.lite.TFLiteConverter.from_keras_model(model)
    if handle.kind == "saved_model":
        if handle.saved_model_dir is None:
            raise PassError(f"{pass_name}: the SavedModel handle has no directory")
        return tf.lite.TFLiteConverter.from_saved_model(str(handle.saved_model_dir))
    raise PassError(f"{pass_name} needs a Keras model or a SavedModel, got "
                    f"{c.KIND_LABEL.get(handle.kind, handle.kind)}")


def convert(converter: Any, pass_name: str) -> bytes:
    try:
        return converter.convert()
    except Exception as exc:  # the converter's messages are long; keep the first line useful
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PassError(f"{pass_name}: TFLite conversion failed: {first}") from exc


def _input_dtype(handle: ModelHandle) -> Any:
    tf = c.tf()
    if handle.kind == "keras":
        return handle.keras_model.inputs[0].dtype
    loaded = tf.saved_model.load(str(handle.saved_model_dir))
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        return tf.float32
    specs = list(sig.structured_input_signature[1].values())
    return specs[0].dtype if specs else tf.float32


class _PTQ(Pass):
    accepts: ClassVar[frozenset[str]] = frozenset({"keras", "saved_model"})
    produces: ClassVar[str] = "tflite"
    label: ClassVar[str] = "post-training quantization"

    spec: ClassVar[dict[str, c.Param]] = {}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return c.check_params(self.name, params, self.spec)

    def configure(self, converter: Any, handle: ModelHandle, params: dict[str, Any],
                  ctx: PassContext) -> None:
        raise NotImplementedError

    def run(self, model: ModelHandle, params: dict[str, Any], ctx: PassContext) -> ModelHandle:
        params = self.validate_params(params)
        c.require_kind(self.name, self.accepts, model)
        ctx.checkpoint(0.0, f"{self.name}: preparing converter")
        converter = make_converter(model, self.name)
        self.configure(converter, model, params, ctx)
        ctx.checkpoint(0.2, f"{self.name}: converting")
        data = convert(converter, self.name)
        note, stats = c.float_weight_note(data, self.name)
        ctx.log(note)
        out = ModelHandle(kind="tflite", tflite_bytes=data, notes=[*model.notes, note],
                          extra={**model.extra, **stats, "quantization": self.name})
        ctx.checkpoint(1.0, f"{self.name}: converted ({len(data)} bytes)")
        return out


PER_CHANNEL_DENSE = c.Param(bool, False)


def _dense_quantization(converter, params) -> None:  # type: ignore[no-untyped-def]
    """Per-tensor Dense kernels by default (as QAT produces): per-channel scales and zero points
    cost 6.7% of the file on a 463k-parameter MLP for no accuracy (bench/optimization.py)."""
    converter._experimental_disable_per_channel_quantization_for_dense_layers = not params["per_channel_dense"]


class PTQDynamic(_PTQ):
    name = "ptq_dynamic"
    description = "Dynamic-range quantization: int8 weights, float activations (≈4x smaller)."
    spec = {"per_channel_dense": PER_CHANNEL_DENSE}

    def configure(self, converter, handle, params, ctx):  # type: ignore[no-untyped-def]
        converter.optimizations = [c.tf().lite.Optimize.DEFAULT]
        _dense_quantization(converter, params)


class PTQFloat16(_PTQ):
    name = "ptq_float16"
    description = "Float16 weights in TFLite (≈2x smaller, GPU delegate friendly)."

    def configure(self, converter, handle, params, ctx):  # type: ignore[no-untyped-def]
        tf = c.tf()
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]


class PTQInt8(_PTQ):
    name = "ptq_int8"
    needs = frozenset({"calibration"})
    description = "Full-integer quantization with a representative dataset (int8 ops only)."
    spec = {
        "int8_io": c.Param(bool, False),
        "calibration_samples": c.Param(int, 300, lo=1, hi=10000),
        "per_channel_dense": PER_CHANNEL_DENSE,
    }

    def configure(self, converter, handle, params, ctx):  # type: ignore[no-untyped-def]
        tf = c.tf()
        x = c.calibration_x(ctx, self.name, params["calibration_samples"])
        if len(x) < 100:
            ctx.log(f"{self.name}: only {len(x)} calibration samples (100–500 recommended)")
        dtype = _input_dtype(handle)
        x = x.astype(np.dtype(dtype.as_numpy_dtype))

        def representative_dataset():  # type: ignore[no-untyped-def]
            for i in range(len(x)):
                yield [x[i:i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        _dense_quantization(converter, params)
        if params["int8_io"]:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        ctx.log(f"{self.name}: calibrating on {len(x)} samples, int8 io={params['int8_io']}")
