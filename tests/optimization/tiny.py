"""Tiny models and data for the optimization tests, built in about a second.

scikit-learn's digits (8x8 images, 10 classes, shipped inside the package) flattened to 64 floats.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from optimization.passes.base import Arrays, ModelHandle, PassContext  # noqa: E402


@dataclass
class Digits:
    train: Arrays
    calibration: Arrays
    eval: Arrays


def digits() -> Digits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    y = d.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    train, ev = slice(0, 1400), slice(1400, None)
    return Digits(train=Arrays(x[train], y[train]), calibration=Arrays(x[:200], y[:200]),
                  eval=Arrays(x[ev], y[ev]))


def _seed() -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0) if hasattr(tf.keras.utils, "set_random_seed") else None
    np.random.seed(0)
    tf.random.set_seed(0)


def classifier(data: Digits, epochs: int = 5) -> Any:
    """64 → 128 → 64 → 10 (softmax). The 640-element output kernel is under TFLite's 1024-element
    quantization threshold, on purpose."""
    import tf_keras as keras

    _seed()
    m = keras.Sequential([
        keras.Input((64,), name="pixels"),
        keras.layers.Dense(128, activation="relu", name="hidden1"),
        keras.layers.Dense(64, activation="relu", name="hidden2"),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ], name="digits_mlp")
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.fit(data.train.x, data.train.y, epochs=epochs, batch_size=32, verbose=0)
    return m


def cnn_classifier(data: Digits, epochs: int = 4) -> Any:
    """Functional 8x8x1 CNN with a separate Softmax layer (the other logits case for distill)."""
    import tf_keras as keras

    _seed()
    inp = keras.Input((64,), name="pixels")
    h = keras.layers.Reshape((8, 8, 1))(inp)
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(10, name="logits")(h)
    out = keras.layers.Softmax(name="probs")(h)
    m = keras.Model(inp, out, name="digits_cnn")
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.fit(data.train.x, data.train.y, epochs=epochs, batch_size=32, verbose=0)
    return m


def regressor(data: Digits, epochs: int = 6) -> Any:
    """Predicts the digit's value as a number (a stand-in regression task)."""
    import tf_keras as keras

    _seed()
    m = keras.Sequential([
        keras.Input((64,), name="pixels"),
        keras.layers.Dense(48, activation="relu", name="hidden"),
        keras.layers.Dense(1, name="value"),
    ], name="digits_reg")
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    m.fit(data.train.x, data.train.y.astype("float32"), epochs=epochs, batch_size=32, verbose=0)
    return m


def keras3_model() -> Any:
    """A genuine Keras 3 model (the `keras` package), which tfmot cannot handle."""
    import keras  # Keras 3, independent of TF_USE_LEGACY_KERAS

    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])


def ctx_for(data: Digits, workdir: Path, task: str = "classification", regression: bool = False,
            **kw: Any) -> PassContext:
    def arr(a: Arrays) -> Arrays:
        return Arrays(a.x, a.y.astype("float32")) if regression else a

    return PassContext(task=task, workdir=workdir, train=arr(data.train),
                       calibration=arr(data.calibration), eval=arr(data.eval), **kw)


# ----------------------------------------------------------------------------- evaluation


def tflite_predict(tflite_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=tflite_bytes)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    preds = []
    for row in x:
        sample = row[None, ...].astype("float32")
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            sample = np.clip(np.round(sample / scale + zero), -128, 127).astype(inp["dtype"])
        interp.set_tensor(inp["index"], sample)
        interp.invoke()
        val = interp.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            val = (val.astype("float32") - zero) * scale
        preds.append(val[0])
    return np.asarray(preds)


def predict(handle: ModelHandle, x: np.ndarray) -> np.ndarray:
    if handle.kind == "tflite":
        return tflite_predict(handle.tflite_bytes, x)
    return np.asarray(handle.keras_model.predict(x, verbose=0), dtype="float32")


def accuracy(handle: ModelHandle, data: Arrays) -> float:
    return float(np.mean(np.argmax(predict(handle, data.x), axis=-1) == data.y))


def gzipped_size(handle: ModelHandle, workdir: Path) -> int:
    """Gzipped size of what would be registered (SavedModel zip for Keras, the .tflite file)."""
    from optimization.modelio import export_handle

    path, _ = export_handle(handle, workdir)
    return len(gzip.compress(path.read_bytes(), 9))
