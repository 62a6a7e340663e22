"""Helpers for the TF Serving protocol contract suite (imported by conftest and tests).

The suite speaks only the public protocol (official gRPC stubs, plain HTTP) to a
server started as a separate process. By default that is `python -m serving`; set
TF_SERVING_BINARY=/path/to/tensorflow_model_server to run the same tests, with the
same flags, against the real TensorFlow Serving.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
    prediction_service_pb2_grpc)

from tests.processes import free_port
from tests.prometheus_text import sample

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_BINARY = os.environ.get("TF_SERVING_BINARY", "")
STARTUP_TIMEOUT = 90.0

only_ours = pytest.mark.skipif(
    bool(REAL_BINARY), reason="checks behaviour specific to the Modelyard server")

W = np.array([[1., 2.], [3., 4.], [5., 6.], [7., 8.]], dtype=np.float32)


# --- models the tests build (once per session) -------------------------------------------

def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM (the server drains), SIGKILL if it has not exited within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Toy(tf.Module):
    """`serving_default`: y = x @ (W * scale); `multi`: several dtypes in and out."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.w = tf.Variable(W * scale)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def predict(self, x):
        return {"y": tf.matmul(x, self.w)}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"),
                                  tf.TensorSpec([None], tf.int64, name="ids"),
                                  tf.TensorSpec([None], tf.string, name="text")])
    def multi(self, a, ids, text):
        return {"total": tf.reduce_sum(a, axis=1), "ids_out": ids * 2,
                "text_bytes": text, "length": tf.strings.length(text)}


class ExampleModel(tf.Module):
    """Native TF2 classify/regress signatures over serialized tf.Example."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32)})["x"]
        scores = tf.stack([tf.sigmoid(-x), tf.sigmoid(x)], axis=1)
        classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(x)[0], 1])
        return {"classes": classes, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32)})["x"]
        return {"outputs": 3.0 * x + 1.0}


class Ragged(tf.Module):
    """`serving_default` with a free inner dimension: each row's max, and the width it was run at."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def predict(self, x):
        return {"longest": tf.reduce_max(x, axis=1), "width": tf.fill([tf.shape(x)[0]], tf.shape(x)[1])}


@dataclass
class Artifacts:
    root: Path
    toy: dict[int, Path]            # scale -> SavedModel dir
    examples: Path                  # classify/regress SavedModel
    tflite: Path                    # model.tflite of toy scale 1
    warmup_ok: Path                 # toy scale 1 + valid warmup file
    warmup_bad: Path                # toy scale 1 + warmup that cannot run
    ragged: Path                    # Ragged: input x [None, None]

    def place(self, base: Path, version: int, source: Path | None) -> Path:
        """Publish a version the safe way: copy to .tmp-N, then rename()."""
        base.mkdir(parents=True, exist_ok=True)
        staging = base / f".tmp-{version}"
        if source is None:  # a corrupt version: a SavedModel that cannot be parsed
            staging.mkdir()
            (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        elif source.is_file():
            staging.mkdir()
            shutil.copy(source, staging / source.name)
        else:
            shutil.copytree(source, staging)
        target = base / str(version)
        os.rename(staging, target)
        return target


def warmup_file(version_dir: Path, input_name: str) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "warm"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.ones((1, 4), np.float32)))
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    (version_dir / "assets.extra").mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as w:
        w.write(record.SerializeToString())


# --- the server process --------------------------------------------------------------------



def server_command(flags: list[str]) -> list[str]:
    if REAL_BINARY:
        return [REAL_BINARY, *flags]
    return [sys.executable, "-m", "serving", *flags]


class ServerProcess:
    """A model server on free ports, with official stubs and a REST base URL."""

    def __init__(self, flags: list[str], log_path: Path) -> None:
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.flags = [f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", *flags]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(server_command(self.flags), cwd=REPO_ROOT,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.rest = f"http://127.0.0.1:{self.rest_port}"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                grpc.channel_ready_future(self.channel).result(timeout=0.5)
                requests.get(self.rest + "/v1/models/_", timeout=2)
                return self
            except (grpc.FutureTimeoutError, requests.ConnectionError):
                continue
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()}")

    def wait_exit(self, timeout: float = STARTUP_TIMEOUT) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.channel.close()
        stop_process(self.process)
        self._log.close()

    # -- small protocol helpers used across modules --

    def status(self, name: str, version: int | None = None) -> dict[int, tuple[int, int, str]]:
        """version -> (state, error_code, error_message) from GetModelStatus."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        response = self.model_stub.GetModelStatus(request, timeout=10)
        return {s.version: (s.state, s.status.error_code, s.status.error_message)
                for s in response.model_version_status}

    def metrics(self) -> str:
        """The Prometheus page (the server must run with monitoring_flag())."""
        response = requests.get(self.rest + METRICS_PATH, timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.metrics(), name, **labels) or 0.0

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0,
                 what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except grpc.RpcError as exc:
                last_error = exc
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what} (last error {last_error})\n"
                             f"{self.output()[-3000:]}")


METRICS_PATH = "/monitoring/prometheus/metrics"


def monitoring_flag(directory: Path) -> str:
    """--monitoring_config_file turning TF Serving's Prometheus page on at METRICS_PATH."""
    config = write_config(directory / "monitoring.config",
                          f'prometheus_config {{\n  enable: true,\n  path: "{METRICS_PATH}"\n}}\n')
    return f"--monitoring_config_file={config}"


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def predict_request(name: str, x: np.ndarray | None = None, *, version: int | None = None,
                    label: str | None = None, signature: str = "",
                    **inputs: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if signature:
        request.model_spec.signature_name = signature
    feeds = dict(inputs)
    if x is not None:
        feeds["x"] = x
    for key, value in feeds.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def assert_rpc_error(call: Callable[[], object], code: grpc.StatusCode,
                     message: str | None = None) -> grpc.RpcError:
    error = rpc_error(call)
    assert error.code() == code, error.details()
    if message is not None:
        assert error.details() == message
    return error
