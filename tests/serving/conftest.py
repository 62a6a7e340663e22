"""Fixtures for the TF Serving protocol contract suite.

The suite speaks only the public protocol (official gRPC stubs, plain HTTP) to a
server started as a separate process. By default that is `python -m serving`; set
TF_SERVING_BINARY=/path/to/tensorflow_model_server to run the same tests, with the
same flags, against the real TensorFlow Serving. Helpers live in serving_contract.py.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tensorflow as tf

from serving_contract import Artifacts, ExampleModel, Ragged, ServerProcess, Toy, warmup_file


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("artifacts")
    toy = {}
    for scale in (1, 2, 3):
        module = Toy(float(scale))
        toy[scale] = root / f"toy{scale}"
        tf.saved_model.save(module, str(toy[scale]),
                            signatures={"serving_default": module.predict, "multi": module.multi})
    examples_module = ExampleModel()
    examples = root / "examples"
    tf.saved_model.save(examples_module, str(examples), signatures={
        "serving_default": examples_module.classify, "regress": examples_module.regress})
    tflite_dir = root / "tflite"
    tflite_dir.mkdir()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(toy[1]), ["serving_default"])
    (tflite_dir / "model.tflite").write_bytes(converter.convert())
    warmup_ok, warmup_bad = root / "warm_ok", root / "warm_bad"
    shutil.copytree(toy[1], warmup_ok)
    shutil.copytree(toy[1], warmup_bad)
    warmup_file(warmup_ok, "x")
    warmup_file(warmup_bad, "no_such_input")
    ragged, ragged_module = root / "ragged", Ragged()
    tf.saved_model.save(ragged_module, str(ragged), signatures={"serving_default": ragged_module.predict})
    return Artifacts(root, toy, examples, tflite_dir / "model.tflite", warmup_ok, warmup_bad, ragged)


@pytest.fixture(scope="session")
def direct() -> Callable[[Path, np.ndarray], np.ndarray]:
    """Call a SavedModel in-process: the numbers the server must reproduce."""
    cache: dict[Path, object] = {}

    def run(path: Path, x: np.ndarray, signature: str = "serving_default", **inputs):
        if path not in cache:
            cache[path] = tf.saved_model.load(str(path))
        function = cache[path].signatures[signature]
        feeds = inputs or {"x": x}
        return {k: v.numpy() for k, v in function(**{k: tf.constant(v) for k, v in feeds.items()}).items()}

    return run


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory):
    """Start servers for one module; all are stopped when the module ends."""
    started: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(flags: list[str], wait: bool = True) -> ServerProcess:
        server = ServerProcess(flags, logs / f"server{len(started)}.log")
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()


