"""Register the demo model: a small digits classifier trained in seconds, with its datasets.

Idempotent: does nothing when the demo model already exists. Goes through the same services as
an upload from the API, then measures the version once (``metrics.measure``), which is why the
command lives in the metrics app and not in the registry (the registry imports no app above it).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from registry import services
from registry.models import RegisteredModel
from registry.uploads import StagedFile

DEMO_NAME = "digits-demo"


def train_digits_classifier(epochs: int = 30):  # type: ignore[no-untyped-def]
    """A small CNN on scikit-learn's bundled 8x8 digits (no download): about 95% in seconds."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tf_keras as keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    x_train, x_eval, y_train, y_eval = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu", name="features")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(h)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    accuracy = float(model.evaluate(x_eval, y_eval, verbose=0)[1])
    return model, (x_train, y_train), (x_eval, y_eval), accuracy, np


class Command(BaseCommand):
    help = f"Register the demo model {DEMO_NAME!r} (trained on scikit-learn's digits) with datasets."

    def handle(self, *args: Any, **options: Any) -> None:
        if RegisteredModel.objects.filter(name=DEMO_NAME).exists():
            self.stdout.write(f"Demo model {DEMO_NAME!r} already registered.")
            return
        User = get_user_model()
        owner = User.objects.filter(is_superuser=True).order_by("pk").first()
        if owner is None:
            self.stderr.write("No admin user yet: run `manage.py ensure_admin` first.")
            return
        model, (x_train, y_train), (x_eval, y_eval), accuracy, np = train_digits_classifier()
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            model.save(str(work / "saved_model"), save_format="tf")
            archive = work / "digits-cnn.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted((work / "saved_model").rglob("*")):
                    zf.write(path, str(path.relative_to(work / "saved_model")))
            registered = services.model_create(
                name=DEMO_NAME, owner=owner, task="classification", tags=["demo", "vision"],
                description="8x8 handwritten digits (scikit-learn), small CNN. Registered by `make run`.")
            version = services.version_create(
                model=registered, staged=StagedFile.from_path(archive), actor=owner,
                description="Baseline CNN", metadata={"train_accuracy_eval_split": round(accuracy, 4)},
                tags=["baseline"])
            created = {}
            for role, (x, y) in {"eval": (x_eval, y_eval), "train": (x_train, y_train),
                                 "calibration": (x_train[:200], y_train[:200])}.items():
                path = work / f"digits-{role}.npz"
                np.savez(path, x=x, y=y)
                created[role] = services.dataset_create(model=registered, staged=StagedFile.from_path(path),
                                                        role=role, actor=owner, check_version=version)
            services.alias_set(model=registered, name="champion", version=version, actor=owner)
        # Measured once now, so jobs compare against it and release gates have its numbers.
        from metrics.measure import measure_stored_version

        measure_stored_version(version, created["eval"])
        self.stdout.write(self.style.SUCCESS(
            f"Registered {DEMO_NAME} v{version.number} (eval accuracy {accuracy:.3f}) with train/eval/calibration "
            "datasets; alias 'champion' -> v1."))
