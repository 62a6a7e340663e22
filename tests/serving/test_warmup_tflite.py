"""Model warmup at load time, and TFLite models served with --prefer_tflite_model."""
from __future__ import annotations

import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2

from serving_contract import predict_request, write_config

AVAILABLE, END = 30, 50
X = np.array([[1., 2., 3., 4.], [-1., 0., 0.5, 2.]], dtype=np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tmp_path_factory.mktemp("warmup-repo")


@pytest.fixture(scope="module")
def server(launch, artifacts, repo):
    artifacts.place(repo / "warm", 1, artifacts.warmup_ok)
    artifacts.place(repo / "cold", 1, artifacts.toy[1])
    artifacts.place(repo / "lite", 1, artifacts.tflite)
    config = write_config(repo / "models.config", f"""
model_config_list {{
  config {{ name: 'warm' base_path: '{repo}/warm' model_platform: 'tensorflow' }}
  config {{ name: 'cold' base_path: '{repo}/cold' model_platform: 'tensorflow' }}
  config {{ name: 'lite' base_path: '{repo}/lite' model_platform: 'tensorflow' }}
}}""")
    return launch([f"--model_config_file={config}", "--prefer_tflite_model=true",
                   "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0",
                   "--enable_model_warmup=true"])


def test_version_with_valid_warmup_loads_and_serves(server, artifacts, direct):
    assert server.status("warm") == {1: (AVAILABLE, 0, "")}
    response = server.predict_stub.Predict(predict_request("warm", X), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]),
                               direct(artifacts.toy[1], X)["y"], rtol=1e-6)


def test_failing_warmup_fails_the_load_and_old_version_keeps_serving(server, artifacts, repo):
    artifacts.place(repo / "cold", 2, artifacts.warmup_bad)
    server.wait_for(lambda: server.status("cold").get(2, (0,))[0] == END, what="v2 to END")
    state, code, message = server.status("cold")[2]
    assert code != 0 and message
    assert server.status("cold")[1][0] == AVAILABLE
    response = server.predict_stub.Predict(predict_request("cold", X), timeout=30)
    assert response.model_spec.version.value == 1


def test_tflite_model_is_served_over_grpc_and_rest(server, artifacts, direct):
    expected = direct(artifacts.toy[1], X)["y"]
    response = server.predict_stub.Predict(predict_request("lite", X), timeout=30)
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), expected, rtol=1e-5)
    rest = requests.post(server.rest + "/v1/models/lite:predict",
                         json={"instances": X.tolist()}, timeout=30)
    assert rest.status_code == 200, rest.text
    np.testing.assert_allclose(rest.json()["predictions"], expected, rtol=1e-5)


def test_tflite_metadata_describes_the_signature(server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "lite"
    response = server.predict_stub.GetModelMetadata(request, timeout=10)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["serving_default"]
    assert set(signature.inputs) == {"x"} and set(signature.outputs) == {"y"}
    assert signature.inputs["x"].dtype == tf.float32.as_datatype_enum
