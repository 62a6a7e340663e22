"""The one small interface every optimization technique implements.

A pass takes a ``ModelHandle`` (the model in memory, in whatever form the previous step left it)
and returns a new one. Passes know nothing about Django: the job service loads the source
version into a handle, runs the recipe's passes in order, and registers the final handle as a
variant. That keeps each technique testable on a tiny model in a second.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class PassError(Exception):
    """A technique cannot run as asked (bad parameters, wrong input format, a tfmot trap).
    The message is shown to the user as the job's error, so say what to change."""


class Cancelled(Exception):
    """Raised by ``PassContext.checkpoint`` when the job was cancelled."""


@dataclass
class Arrays:
    x: np.ndarray
    y: np.ndarray | None = None


@dataclass
class ModelHandle:
    """The model between steps. Exactly one of ``keras_model`` / ``saved_model_dir`` /
    ``tflite_bytes`` is the primary form, named by ``kind``."""

    kind: str  # "keras" (a tf_keras.Model in memory), "saved_model" (a directory), "tflite" (bytes)
    keras_model: Any = None
    saved_model_dir: Path | None = None
    tflite_bytes: bytes | None = None
    notes: list[str] = field(default_factory=list)  # facts worth recording (e.g. tensors left unquantized)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"clusters": 16} for the metrics harness


@dataclass
class PassContext:
    task: str  # "classification" | "regression" | "other"
    workdir: Path  # private scratch directory for this job (inside the storage root)
    train: Arrays | None = None
    calibration: Arrays | None = None
    eval: Arrays | None = None
    progress: Callable[[float, str], None] = lambda fraction, message: None  # fraction of this pass, 0..1
    log: Callable[[str], None] = lambda line: None
    is_cancelled: Callable[[], bool] = lambda: False
    teacher: Any = None  # for distillation with an uploaded student: the source model

    def checkpoint(self, fraction: float, message: str) -> None:
        """Report progress and stop here if the job was cancelled (called per epoch / stage)."""
        self.progress(fraction, message)
        if self.is_cancelled():
            raise Cancelled(f"Cancelled during: {message}")


class Pass:
    """Subclasses set ``name``, ``accepts`` (handle kinds), ``produces`` and implement ``run``."""

    name: ClassVar[str]
    accepts: ClassVar[frozenset[str]]
    produces: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()  # dataset roles required: "train", "calibration"
    description: ClassVar[str] = ""

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return params with defaults filled in; raise PassError naming the bad one."""
        return dict(params)

    def run(self, model: ModelHandle, params: dict[str, Any], ctx: PassContext) -> ModelHandle:
        raise NotImplementedError
