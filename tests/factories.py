"""Small real models and files for tests: trained or built in well under a second each.

Everything is written with tf_keras (Keras 2), as the product does."""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def tiny_keras_model(input_dim: int = 8, classes: int = 3, seed: int = 0, *, input_name: str = "features",
                     output_name: str = "probs", hidden: int = 16,
                     activation: str | None = "softmax"):  # type: ignore[no-untyped-def]
    """The tests' one tiny model: ``input_name`` float32 [None, input_dim] → a ReLU layer of
    ``hidden`` units → ``output_name`` [None, classes]."""
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_dim,), name=input_name)
    hidden_units = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(classes, activation=activation, name=output_name)(hidden_units)
    return keras.Model(inputs, outputs, name="tiny")


@dataclass
class Models:
    """SavedModels with serving_default x: float32[None, 4] -> y: float32[None, 2].

    `a`, `b`, `c` are the same architecture with different weights; `renamed` calls its input
    "features" instead of "x"; `corrupt` has a saved_model.pb that is not a SavedModel;
    `samples[k]` are answers computed by calling Keras model k directly (what a server must
    reproduce).
    """

    root: Path
    paths: dict[str, Path]
    samples: dict[str, dict[str, Any]]

    def __getitem__(self, key: str) -> Path:
        return self.paths[key]


def tiny_models(root: Path) -> Models:
    """The tiny SavedModels that endpoints, routers, containers and images are tested with (the
    session fixture ``tiny_models`` builds them once)."""
    def model(seed: int, input_name: str = "x"):  # type: ignore[no-untyped-def]
        return tiny_keras_model(4, 2, seed, input_name=input_name, output_name="y", hidden=3, activation=None)

    x = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0], [-3.0, 0.0, 0.5, 2.0]], np.float32)
    paths: dict[str, Path] = {}
    samples: dict[str, dict[str, Any]] = {}
    for key, seed in (("a", 1), ("b", 2), ("c", 3)):
        keras_model = model(seed)
        paths[key] = save_saved_model(root / key, keras_model)
        samples[key] = {"inputs": x.tolist(), "outputs": keras_model(x).numpy().tolist(),
                        "input_name": "x", "output_name": "y", "dtype": "float32"}
    # Same weights as `a`, but the input is called "features": a signature clients would break on.
    paths["renamed"] = save_saved_model(root / "renamed", model(1, input_name="features"))
    corrupt = root / "corrupt"
    (corrupt / "variables").mkdir(parents=True)
    (corrupt / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    paths["corrupt"] = corrupt
    return Models(root, paths, samples)


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


def lying_npz(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose x.npy header declares a float32 array of ``shape`` over 64 bytes of data: what
    a dataset check must refuse from the header alone, before building anything."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 64)
    return path


def resource_hog_saved_model(directory: Path, kind: str, amount: int) -> Path:
    """A small, valid SavedModel (a 'serving_default' signature taking "features" [None, 8]) that
    holds one resource whose initializer — which ``tf.saved_model.load`` runs, as it runs every
    asset/table initializer — does heavy work: ``kind="memory"`` allocates ``amount`` float32s,
    ``kind="time"`` counts to ``amount`` in a graph loop. The files stay a few KiB either way."""
    import tensorflow as tf

    class Hog(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):  # type: ignore[no-untyped-def]
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name=f"hog_{id(self)}")

        def _initialize(self):  # type: ignore[no-untyped-def]
            if kind == "memory":
                # The size goes through a stateful op, so it is computed at load time (a constant
                # shape would be folded into a giant constant when the function is traced).
                size = tf.constant(amount, tf.int64) + tf.cast(tf.timestamp() * 0.0, tf.int64)
                value = tf.reduce_sum(tf.fill(tf.reshape(size, [1]), 1.0))
            else:
                count = tf.while_loop(lambda i: i < amount, lambda i: i + 1, [tf.constant(0, tf.int64)])[0]
                value = tf.cast(count, tf.float32)
            return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=value)

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hog = Hog()

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="features")])
        def serve(self, features):  # type: ignore[no-untyped-def]
            return {"probs": features * 2.0}

    model = Model()
    tf.saved_model.save(model, str(directory), signatures={"serving_default": model.serve})
    return directory


def vocabulary_saved_model(directory: Path, words: list[str]) -> Path:
    """A SavedModel whose lookup table is filled from ``assets/vocab.txt`` when it is loaded: the
    graph names that file (``asset_file_def``), and loading fails without it. Serving signature:
    "words" string [None] -> "ids" int64 [None] (a word's line number, -1 if unknown)."""
    import tempfile

    import tensorflow as tf

    vocab = Path(tempfile.mkdtemp()) / "vocab.txt"  # saving copies it to assets/ under its own name
    vocab.write_text("".join(f"{w}\n" for w in words))

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            initializer = tf.lookup.TextFileInitializer(
                str(vocab), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
            self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words):  # type: ignore[no-untyped-def]
            return {"ids": self.table.lookup(words)}

    model = Model()
    tf.saved_model.save(model, str(directory), signatures={"serving_default": model.serve})
    vocab.unlink()
    vocab.parent.rmdir()
    return directory
