"""Knowledge distillation: a narrower student learns from the teacher's softened logits.

loss = alpha * CE(y, student) + (1 - alpha) * KL(softmax(t/T) || softmax(s/T)) * T^2
(Hinton et al.; keras.io "Knowledge Distillation" example: alpha 0.1, T 10).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from . import common as c
from .base import ModelHandle, Pass, PassContext, PassError

WIDTH_KEYS = {  # layer class → the config entry that sets its width
    "Dense": "units", "Conv1D": "filters", "Conv2D": "filters", "Conv3D": "filters",
    "SeparableConv1D": "filters", "SeparableConv2D": "filters", "Conv1DTranspose": "filters",
    "Conv2DTranspose": "filters", "Conv3DTranspose": "filters", "LSTM": "units", "GRU": "units",
    "SimpleRNN": "units", "LocallyConnected1D": "filters", "LocallyConnected2D": "filters",
}


def rebuild(model: Any, config: dict) -> Any:
    k = c.keras()
    cls = type(model)
    if isinstance(model, k.Sequential):
        return k.Sequential.from_config(config)
    if cls.__name__ in ("Functional", "Model"):
        return k.Model.from_config(config)
    raise PassError(f"distill: cannot rebuild a {cls.__name__} from its config; only Sequential and "
                    "functional tf_keras models are supported")


def output_layer_names(model: Any) -> set[str]:
    return {t._keras_history.layer.name for t in model.outputs}  # noqa: SLF001


def _head_layer_names(model: Any) -> set[str]:
    """The output layers plus, behind a weightless output (Softmax/Activation/Dropout...), the layer
    that sets the number of classes: their widths must not change."""
    k = c.keras()
    names: set[str] = set()
    for t in model.outputs:
        layer = t._keras_history.layer  # noqa: SLF001
        names.add(layer.name)
        while not layer.weights and not isinstance(layer, k.layers.InputLayer):
            inp = layer.input
            if isinstance(inp, (list, tuple)) or not hasattr(inp, "_keras_history"):
                break
            layer = inp._keras_history.layer  # noqa: SLF001
            names.add(layer.name)
    return names


def _layer_configs(config: dict) -> list[dict]:
    return config["layers"]


def scaled_config(model: Any, width: float) -> dict:
    """The model's config with every hidden Dense/Conv/RNN width scaled (min 1); output kept."""
    config = copy.deepcopy(model.get_config())
    outputs = _head_layer_names(model)
    for layer in _layer_configs(config):
        cfg = layer["config"]
        layer.pop("build_config", None)  # input shapes change with the widths
        key = WIDTH_KEYS.get(layer["class_name"])
        if key and cfg.get("name") not in outputs and isinstance(cfg.get(key), int):
            cfg[key] = max(1, int(round(cfg[key] * width)))
    return config


def _softmax_mode(model: Any) -> str:
    k = c.keras()
    last = model.layers[-1]
    if isinstance(last, k.layers.Softmax):
        return "softmax_layer"
    act = c.final_activation(model)
    if isinstance(last, k.layers.Activation) and act == "softmax":
        return "softmax_layer"
    if act == "softmax":
        return "dense_softmax"
    if act in (None, "linear"):
        return "logits"
    raise PassError(f"distill: the model's output activation is {act!r}; distillation here needs "
                    "softmax probabilities or raw logits over ≥ 2 classes")


def logits_view(model: Any) -> tuple[Any, Callable[[], Any]]:
    """(a model that outputs logits, a function giving the final model with the original outputs).
    Training the logits model trains what the second returns."""
    k = c.keras()
    mode = _softmax_mode(model)
    if mode == "logits":
        return model, lambda: model
    if mode == "softmax_layer":
        logits = k.Model(model.inputs, model.layers[-1].input)
        return logits, lambda: model
    config = copy.deepcopy(model.get_config())
    last_name = model.layers[-1].name
    for layer in _layer_configs(config):
        if layer["config"].get("name") == last_name:
            layer["config"]["activation"] = "linear"
    logits = rebuild(model, config)
    logits.set_weights(model.get_weights())

    def finalize() -> Any:
        model.set_weights(logits.get_weights())
        return model

    return logits, finalize


def count_params(model: Any) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


class Distill(Pass):
    name = "distill"
    label = "distillation"
    accepts: ClassVar[frozenset[str]] = frozenset({"keras"})
    produces: ClassVar[str] = "keras"
    needs: ClassVar[frozenset[str]] = frozenset({"train"})
    description = "Knowledge distillation into a narrower student (width factor) or an uploaded one."
    spec = {
        "width": c.Param(float, 0.25, lo=0, hi=1, lo_open=True),
        "alpha": c.Param(float, 0.1, lo=0, hi=1),
        "temperature": c.Param(float, 10.0, lo=0, hi=1000, lo_open=True),
        **c.TRAINING_PARAMS,
        # A student starts from scratch: 5 epochs at 1e-3 left the digits student at 0.76 accuracy;
        # 10 at 3e-3 matches the teacher within a point.
        "epochs": c.Param(int, 10, lo=1, hi=1000),
        "learning_rate": c.Param(float, 3e-3, lo=0, hi=10, lo_open=True),
    }

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return c.check_params(self.name, params, self.spec)

    def run(self, model: ModelHandle, params: dict[str, Any], ctx: PassContext) -> ModelHandle:
        params = self.validate_params(params)
        if ctx.task != "classification":
            raise PassError(f"distill works on classification models only; this model's task is {ctx.task!r}")
        train = c.require_data(self.name, ctx.train, "train")
        tf = c.tf()
        source = c.keras_model_of(self.name, model)
        if ctx.teacher is not None:  # an uploaded student learns from the source version
            teacher = ctx.teacher.keras_model if isinstance(ctx.teacher, ModelHandle) else ctx.teacher
            teacher = c.require_tf_keras(self.name, teacher)
            student = c.fresh_copy(source)
            how = "uploaded student"
        else:
            teacher = source
            student = rebuild(source, scaled_config(source, params["width"]))
            how = f"student at width {params['width']:g}"
        n_out = int(teacher.outputs[0].shape[-1] or 1)
        if n_out < 2 or int(student.outputs[0].shape[-1] or 1) != n_out:
            raise PassError(f"distill: teacher and student must both output the same number (≥ 2) of "
                            f"classes; got {n_out} and {student.outputs[0].shape[-1]}")
        ctx.checkpoint(0.0, f"{self.name}: computing teacher logits")
        teacher_logits_model, _ = logits_view(c.fresh_copy(teacher))
        student_logits, finalize = logits_view(student)

        x = np.asarray(train.x)
        y = np.asarray(train.y)
        if y.ndim >= 2 and y.shape[-1] == n_out:
            y = np.argmax(y, axis=-1)
        y = y.astype("int64").reshape(-1)
        t_logits = teacher_logits_model.predict(x, batch_size=256, verbose=0).astype("float32")

        alpha, temp = params["alpha"], float(params["temperature"])
        optimizer = c.keras().optimizers.Adam(learning_rate=params["learning_rate"])
        ce = c.keras().losses.SparseCategoricalCrossentropy(from_logits=True)
        kl = c.keras().losses.KLDivergence()

        @tf.function
        def step(xb, yb, tb):  # type: ignore[no-untyped-def]
            with tf.GradientTape() as tape:
                s = student_logits(xb, training=True)
                hard = ce(yb, s)
                soft = kl(tf.nn.softmax(tb / temp), tf.nn.softmax(s / temp)) * temp ** 2
                loss = alpha * hard + (1 - alpha) * soft
            grads = tape.gradient(loss, student_logits.trainable_variables)
            optimizer.apply_gradients(zip(grads, student_logits.trainable_variables))
            return loss, hard

        bs = params["batch_size"]
        epochs = params["epochs"]
        rng = np.random.default_rng(0)
        for epoch in range(epochs):
            order = rng.permutation(len(x))
            losses, hards = [], []
            for i in range(0, len(x), bs):
                idx = order[i:i + bs]
                loss, hard = step(tf.constant(x[idx]), tf.constant(y[idx]), tf.constant(t_logits[idx]))
                losses.append(float(loss))
                hards.append(float(hard))
            ctx.log(f"{self.name}: epoch {epoch + 1}/{epochs} loss={np.mean(losses):.4g} "
                    f"student_ce={np.mean(hards):.4g}")
            ctx.checkpoint((epoch + 1) / epochs, f"{self.name}: epoch {epoch + 1}/{epochs}")

        final = finalize()
        tp, sp = count_params(teacher), count_params(final)
        note = (f"distill: {how}, {sp} parameters vs the teacher's {tp} "
                f"({tp / max(1, sp):.1f}x fewer); alpha {alpha:g}, T {temp:g}, {epochs} epochs")
        if not math.isfinite(float(np.mean(losses))):
            raise PassError(f"{self.name}: training diverged (loss is not finite); lower learning_rate")
        ctx.log(note)
        return ModelHandle(kind="keras", keras_model=final, notes=[*model.notes, note],
                           extra={**model.extra, "teacher_params": tp, "student_params": sp})
