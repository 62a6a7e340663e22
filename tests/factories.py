"""Small real models and files for tests: trained or built in well under a second each.

Everything is written with tf_keras (Keras 2), as the product does."""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def tiny_keras_model(input_dim: int = 8, classes: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_dim,), name="features")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probs")(hidden)
    return keras.Model(inputs, outputs, name="tiny")


def save_saved_model(directory: Path, model=None) -> Path:  # type: ignore[no-untyped-def]
    model = model or tiny_keras_model()
    model.save(str(directory), save_format="tf")
    return directory


def zip_dir(directory: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.rglob("*")):
            zf.write(path, prefix + str(path.relative_to(directory)))
    return archive


def tar_dir(directory: Path, archive: Path, prefix: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for path in sorted(directory.rglob("*")):
            tf.add(path, prefix + str(path.relative_to(directory)), recursive=False)
    return archive


def save_keras(path: Path, model=None) -> Path:  # type: ignore[no-untyped-def]
    model = model or tiny_keras_model()
    model.save(str(path))
    return path


def save_tflite(path: Path, model=None) -> Path:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    model = model or tiny_keras_model()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    path.write_bytes(converter.convert())
    return path


def lambda_model():  # type: ignore[no-untyped-def]
    import tf_keras as keras

    inputs = keras.Input(shape=(8,), name="features")
    doubled = keras.layers.Lambda(lambda t: t * 2, name="sneaky_lambda")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(doubled)
    return keras.Model(inputs, outputs)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
