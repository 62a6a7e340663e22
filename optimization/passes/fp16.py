"""Float16 Keras model for GPU serving: float16 weights/compute, float32 outputs."""
from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np

from . import common as c
from .base import ModelHandle, Pass, PassContext, PassError
from .distill import output_layer_names, rebuild

MODES = ("float16", "mixed_float16")


class FP16(Pass):
    name = "fp16"
    label = "float16 conversion"
    accepts: ClassVar[frozenset[str]] = frozenset({"keras"})
    produces: ClassVar[str] = "keras"
    description = ("Rebuild the model in float16 for GPU serving; the output layer stays float32 so the "
                   "serving signature keeps its dtypes. 'float16' stores float16 weights (≈2x smaller); "
                   "'mixed_float16' keeps float32 weights and computes in float16.")
    spec = {"mode": c.Param(str, "float16", choices=MODES)}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return c.check_params(self.name, params, self.spec)

    def run(self, model: ModelHandle, params: dict[str, Any], ctx: PassContext) -> ModelHandle:
        params = self.validate_params(params)
        source = c.keras_model_of(self.name, model)
        ctx.checkpoint(0.0, f"{self.name}: rebuilding with dtype policy {params['mode']}")
        config = copy.deepcopy(source.get_config())
        outputs = output_layer_names(source)
        for layer in config["layers"]:
            if layer["class_name"] == "InputLayer":
                continue
            name = layer["config"].get("name")
            layer["config"]["dtype"] = "float32" if name in outputs else params["mode"]
        try:
            rebuilt = rebuild(source, config)
        except PassError:
            raise
        except Exception as exc:
            raise PassError(f"{self.name}: cannot rebuild the model with a float16 policy: {exc}") from exc
        new_weights = [np.asarray(w).astype(v.dtype.as_numpy_dtype)
                       for w, v in zip(source.get_weights(), rebuilt.weights, strict=True)]
        rebuilt.set_weights(new_weights)
        dtypes: dict[str, int] = {}
        for v in rebuilt.weights:
            dtypes[v.dtype.name] = dtypes.get(v.dtype.name, 0) + 1
        before = sum(w.nbytes for w in source.get_weights())
        after = sum(int(np.prod(v.shape)) * v.dtype.size for v in rebuilt.weights)
        note = (f"fp16: mode {params['mode']}, weights by dtype {dtypes}, {before} → {after} bytes; "
                f"output layer(s) {sorted(outputs)} kept float32")
        if params["mode"] == "mixed_float16":
            note += " (mixed precision: float16 compute on GPUs; no size gain, weights stay float32)"
        ctx.log(note)
        ctx.checkpoint(1.0, f"{self.name}: done")
        return ModelHandle(kind="keras", keras_model=rebuilt, notes=[*model.notes, note],
                           extra={**model.extra, "dtype_policy": params["mode"]})
