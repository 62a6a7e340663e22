"""Transfer learning: keep the feature layers frozen, train a new classification head."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import common as c
from .base import ModelHandle, Pass, PassContext, PassError


class Finetune(Pass):
    name = "finetune"
    label = "fine-tuning"
    accepts: ClassVar[frozenset[str]] = frozenset({"keras"})
    produces: ClassVar[str] = "keras"
    needs: ClassVar[frozenset[str]] = frozenset({"train"})
    description = ("Transfer learning: freeze every layer below the head, replace the head with a new "
                   "Dense(softmax) sized for the training labels, train it.")
    spec = {
        "num_classes": c.Param(int, optional=True, lo=2, hi=1_000_000),
        "unfreeze": c.Param(int, 0, lo=0, hi=10_000),  # how many layers below the head also train
        **c.TRAINING_PARAMS,
        # Only a fresh head trains: 3 epochs at 1e-3 reached 0.84 on digits, 3 at 1e-2 reached 0.97.
        "epochs": c.Param(int, 5, lo=1, hi=1000),
        "learning_rate": c.Param(float, 5e-3, lo=0, hi=10, lo_open=True),
    }

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return c.check_params(self.name, params, self.spec)

    def run(self, model: ModelHandle, params: dict[str, Any], ctx: PassContext) -> ModelHandle:
        params = self.validate_params(params)
        if ctx.task != "classification":
            raise PassError(f"finetune trains a classification head; this model's task is {ctx.task!r}")
        train = c.require_data(self.name, ctx.train, "train")
        k = c.keras()
        base = c.fresh_copy(c.keras_model_of(self.name, model))
        if len(base.inputs) != 1 or len(base.outputs) != 1:
            raise PassError("finetune supports models with one input and one output")
        y = np.asarray(train.y)
        if y.ndim >= 2 and y.shape[-1] > 1:
            y = np.argmax(y, axis=-1)
        y = y.reshape(-1).astype("int64")
        if y.min() < 0:
            raise PassError("finetune: labels must be integers 0..K-1")
        n_classes = params["num_classes"] or int(y.max()) + 1
        if y.max() >= n_classes:
            raise PassError(f"finetune: label {int(y.max())} does not fit num_classes={n_classes}")

        # The head: the last layer with weights (a trailing Activation/Softmax goes with it).
        layers = [layer for layer in base.layers if not isinstance(layer, k.layers.InputLayer)]
        head_idx = len(layers) - 1
        while head_idx >= 0 and not layers[head_idx].weights:
            head_idx -= 1
        if head_idx <= 0:
            raise PassError("finetune: the model needs at least one feature layer below its head")
        head = layers[head_idx]
        features = head.input
        frozen = layers[:head_idx]
        for i, layer in enumerate(frozen):
            layer.trainable = i >= len(frozen) - params["unfreeze"]
        h = k.layers.Flatten()(features) if len(features.shape) > 2 else features
        trailing = layers[head_idx + 1:]
        if trailing and all(isinstance(t, (k.layers.Softmax, k.layers.Activation)) for t in trailing):
            # Dense → Softmax layer: keep both names so the serving outputs keep their key.
            out = k.layers.Softmax(name=trailing[-1].name)(k.layers.Dense(n_classes, name=head.name)(h))
        else:
            out = k.layers.Dense(n_classes, activation="softmax", name=head.name)(h)
        tuned = k.Model(base.inputs, out, name=base.name)
        ctx.checkpoint(0.0, f"{self.name}: training the new head ({n_classes} classes)")
        tuned.compile(optimizer=k.optimizers.Adam(params["learning_rate"]),
                      loss=k.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        tuned.fit(np.asarray(train.x), y, epochs=params["epochs"], batch_size=params["batch_size"],
                  verbose=0, callbacks=[c.checkpoint_callback(ctx, params["epochs"], self.name)])
        trainable = sum(int(np.prod(w.shape)) for w in tuned.trainable_weights)
        note = (f"finetune: new head {head.name!r} with {n_classes} classes; "
                f"{len(frozen) - params['unfreeze'] if params['unfreeze'] < len(frozen) else 0} layer(s) "
                f"frozen, {trainable} trainable parameters")
        ctx.log(note)
        return ModelHandle(kind="keras", keras_model=tuned, notes=[*model.notes, note],
                           extra={**model.extra, "num_classes": n_classes})
