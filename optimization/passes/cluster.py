"""Weight clustering (tfmot ``cluster_weights``), optionally sparsity-preserving, fine-tuned."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import common as c
from .base import ModelHandle, Pass, PassContext, PassError

INITS = ("linear", "kmeans_plus_plus", "density_based", "random")


def cluster_fn(preserve_sparsity: bool) -> Any:
    """tfmot's ``cluster_weights``, or its sparsity-preserving variant."""
    tfmot = c.tfmot()
    if not preserve_sparsity:
        return tfmot.clustering.keras.cluster_weights
    try:  # the experimental API is not exported through tfmot.clustering.keras.experimental in 0.8
        from tensorflow_model_optimization.python.core.clustering.keras.experimental import (
            cluster as experimental_cluster,
        )
    except ImportError as exc:  # pragma: no cover - depends on the tfmot version
        raise PassError("cluster: preserve_sparsity needs tfmot's experimental clustering API, which "
                        "this tensorflow-model-optimization version lacks") from exc
    return lambda model, **kw: experimental_cluster.cluster_weights(model, preserve_sparsity=True, **kw)


def max_unique_per_kernel(model: Any) -> int:
    return max((len(np.unique(v)) for _, v in c.kernel_weights(model)), default=0)


class Cluster(Pass):
    name = "cluster"
    label = "clustering"
    accepts: ClassVar[frozenset[str]] = frozenset({"keras"})
    produces: ClassVar[str] = "keras"
    needs: ClassVar[frozenset[str]] = frozenset({"train"})
    description = "Weight clustering: every kernel keeps at most N distinct values, fine-tuned."
    spec = {
        "number_of_clusters": c.Param(int, 16, lo=2, hi=65536),
        "init": c.Param(str, "kmeans_plus_plus", choices=INITS),
        "preserve_sparsity": c.Param(bool, False),
        **c.TRAINING_PARAMS,
        "epochs": c.Param(int, 1, lo=0, hi=1000),
        "learning_rate": c.Param(float, 1e-5, lo=0, hi=10, lo_open=True),  # tutorial: Adam 1e-5
    }

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return c.check_params(self.name, params, self.spec)

    def run(self, model: ModelHandle, params: dict[str, Any], ctx: PassContext) -> ModelHandle:
        params = self.validate_params(params)
        source = c.keras_model_of(self.name, model)
        tfmot = c.tfmot()
        init = tfmot.clustering.keras.CentroidInitialization[params["init"].upper()]
        ctx.checkpoint(0.0, f"{self.name}: wrapping layers")
        work = c.fresh_copy(source)
        zeros_before = sum(int(np.sum(v == 0)) for _, v in c.kernel_weights(work))
        try:
            clustered = cluster_fn(params["preserve_sparsity"])(
                work, number_of_clusters=params["number_of_clusters"], cluster_centroids_init=init)
        except ValueError as exc:
            raise PassError(f"{self.name}: tfmot cannot cluster this model: {exc}") from exc
        if clustered is None:  # what cluster_weights does with a Keras 3 model: no error, just None
            raise PassError(f"{self.name}: tfmot's cluster_weights returned nothing for this model — it "
                            "only supports tf_keras (Keras 2) Sequential/functional models")
        if params["epochs"] > 0:
            train = c.require_data(self.name, ctx.train, "train")
            c.compile_for_task(clustered, ctx, train.y, params["learning_rate"], reference=source)
            c.fit(clustered, ctx, params, self.name)
        stripped = tfmot.clustering.keras.strip_clustering(clustered)
        n = params["number_of_clusters"]
        worst = max_unique_per_kernel(stripped)
        note = f"cluster: {n} clusters ({params['init']}); at most {worst} distinct values per kernel"
        if params["preserve_sparsity"]:
            zeros_after = sum(int(np.sum(v == 0)) for _, v in c.kernel_weights(stripped))
            note += f"; sparsity preserved: {zeros_after} zero weights (source had {zeros_before})"
        ctx.log(note)
        ctx.checkpoint(1.0, f"{self.name}: done")
        return ModelHandle(kind="keras", keras_model=stripped, notes=[*model.notes, note],
                           extra={**model.extra, "clusters": n,
                                  "preserve_sparsity": params["preserve_sparsity"]})
