"""Quantization-aware training (plain, prune-preserving, cluster-preserving, both), then int8
TFLite."""
from __future__ import annotations

from typing import Any, ClassVar

from . import common as c
from .base import ModelHandle, Pass, PassContext, PassError
from .ptq import convert

SCHEMES = ("default", "pqat", "cqat", "pcqat")


def _quantize(model: Any, scheme: str) -> Any:
    tfmot = c.tfmot()
    q = tfmot.quantization.keras
    if scheme == "default":
        return q.quantize_model(model)
    combine = tfmot.experimental.combine
    chosen = {
        "pqat": lambda: combine.Default8BitPrunePreserveQuantizeScheme(),
        "cqat": lambda: combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
        "pcqat": lambda: combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True),
    }[scheme]()
    return q.quantize_apply(q.quantize_annotate_model(model), chosen)


class QAT(Pass):
    name = "qat"
    label = "quantization-aware training"
    accepts: ClassVar[frozenset[str]] = frozenset({"keras"})
    produces: ClassVar[str] = "tflite"
    needs: ClassVar[frozenset[str]] = frozenset({"train"})
    description = ("Quantization-aware fine-tuning, exported as an int8 TFLite model; schemes that "
                   "preserve earlier pruning (pqat), clustering (cqat) or both (pcqat).")
    spec = {
        "scheme": c.Param(str, "default", choices=SCHEMES),
        **c.TRAINING_PARAMS,
        "epochs": c.Param(int, 1, lo=1, hi=1000),
        "learning_rate": c.Param(float, 1e-4, lo=0, hi=10, lo_open=True),
    }

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return c.check_params(self.name, params, self.spec)

    def run(self, model: ModelHandle, params: dict[str, Any], ctx: PassContext) -> ModelHandle:
        params = self.validate_params(params)
        source = c.keras_model_of(self.name, model)
        train = c.require_data(self.name, ctx.train, "train")
        tf = c.tf()
        ctx.checkpoint(0.0, f"{self.name}: inserting fake-quant ({params['scheme']})")
        work = c.fresh_copy(source)
        try:
            qmodel = _quantize(work, params["scheme"])
        except (ValueError, RuntimeError) as exc:
            raise PassError(f"{self.name}: tfmot cannot quantize this model: {exc}") from exc
        c.compile_for_task(qmodel, ctx, train.y, params["learning_rate"], reference=source)
        c.fit(qmodel, ctx, params, self.name, span=0.85)
        converter = tf.lite.TFLiteConverter.from_keras_model(qmodel)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        data = convert(converter, self.name)
        note, stats = c.float_weight_note(data, f"qat[{params['scheme']}]")
        ctx.log(note)
        ctx.checkpoint(1.0, f"{self.name}: converted ({len(data)} bytes)")
        return ModelHandle(kind="tflite", tflite_bytes=data, notes=[*model.notes, note],
                           extra={**model.extra, **stats, "quantization": f"qat:{params['scheme']}"})
