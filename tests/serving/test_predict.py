"""Predict, metadata, status and classify/regress over gRPC and REST, plus their errors."""
from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2, get_model_metadata_pb2, regression_pb2)

from serving_contract import assert_rpc_error, predict_request, write_config

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
X = np.array([[1., 2., 3., 4.], [0.5, -1., 0., 2.]], dtype=np.float32)


@pytest.fixture(scope="module")
def server(launch, artifacts, tmp_path_factory):
    repo = tmp_path_factory.mktemp("predict-repo")
    artifacts.place(repo / "toy", 1, artifacts.toy[1])
    artifacts.place(repo / "toy", 2, artifacts.toy[2])
    artifacts.place(repo / "examples", 1, artifacts.examples)
    config = write_config(repo / "models.config", f"""
model_config_list {{
  config {{
    name: 'toy' base_path: '{repo}/toy' model_platform: 'tensorflow'
    model_version_policy {{ all {{}} }}
    version_labels {{ key: 'stable' value: 1 }}
    version_labels {{ key: 'canary' value: 2 }}
  }}
  config {{ name: 'examples' base_path: '{repo}/examples' model_platform: 'tensorflow' }}
}}""")
    return launch([f"--model_config_file={config}",
                   "--allow_version_labels_for_unavailable_models=true"])


def predict(server, request):
    return server.predict_stub.Predict(request, timeout=30)


def post(server, path: str, body) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.rest + path, data=data, timeout=30)


# --- gRPC Predict -------------------------------------------------------------------------

def test_grpc_predict_default_is_latest_and_matches_the_model(server, artifacts, direct):
    response = predict(server, predict_request("toy", X))
    assert response.model_spec.name == "toy"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    got = tf.make_ndarray(response.outputs["y"])
    assert got.dtype == np.float32 and got.shape == (2, 2)
    np.testing.assert_allclose(got, direct(artifacts.toy[2], X)["y"], rtol=1e-6)


@pytest.mark.parametrize("selector, version", [({"version": 1}, 1), ({"label": "stable"}, 1),
                                               ({"label": "canary"}, 2)])
def test_grpc_predict_by_version_and_label(server, artifacts, direct, selector, version):
    response = predict(server, predict_request("toy", X, **selector))
    assert response.model_spec.version.value == version
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]),
                               direct(artifacts.toy[version], X)["y"], rtol=1e-6)


def multi_inputs():
    return dict(a=np.array([[1.5, 2.0], [3.0, -1.0]], np.float32),
                ids=np.array([2**40 + 1, -7], np.int64),
                text=np.array([b"\x00\xffbin", "héllo".encode()], dtype=object))


def test_grpc_multi_dtype_signature_and_output_filter(server, artifacts, direct):
    inputs = multi_inputs()
    response = predict(server, predict_request("toy", signature="multi", **inputs))
    assert response.model_spec.signature_name == "multi"
    expected = direct(artifacts.toy[2], None, "multi", **inputs)
    assert set(response.outputs) == set(expected) == {"total", "ids_out", "text_bytes", "length"}
    for name, want in expected.items():
        got = tf.make_ndarray(response.outputs[name])
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want)
    assert response.outputs["ids_out"].dtype == tf.int64.as_datatype_enum

    request = predict_request("toy", signature="multi", **inputs)
    request.output_filter.append("total")
    filtered = predict(server, request)
    assert list(filtered.outputs) == ["total"]


# --- REST predict -------------------------------------------------------------------------

def test_rest_row_format(server, artifacts, direct):
    response = post(server, "/v1/models/toy:predict", {"instances": X.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], direct(artifacts.toy[2], X)["y"],
                               rtol=1e-6)


@pytest.mark.parametrize("path, version", [("/v1/models/toy/versions/1", 1),
                                           ("/v1/models/toy/labels/stable", 1),
                                           ("/v1/models/toy/labels/canary", 2)])
def test_rest_columnar_format_by_version_and_label(server, artifacts, direct, path, version):
    response = post(server, path + ":predict", {"inputs": {"x": X.tolist()}})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"], direct(artifacts.toy[version], X)["y"],
                               rtol=1e-6)


def test_rest_multiple_outputs_int64_and_b64(server, artifacts, direct):
    inputs = multi_inputs()
    instances = [{"a": inputs["a"][i].tolist(), "ids": int(inputs["ids"][i]),
                  "text": {"b64": base64.b64encode(inputs["text"][i]).decode()}}
                 for i in range(2)]
    response = post(server, "/v1/models/toy/versions/1:predict",
                    {"signature_name": "multi", "instances": instances})
    assert response.status_code == 200, response.text
    expected = direct(artifacts.toy[1], None, "multi", **inputs)
    rows = response.json()["predictions"]
    assert [r["ids_out"] for r in rows] == expected["ids_out"].tolist()
    # int64 is a bare JSON integer, not a string and not a float
    assert str(2 * (2**40 + 1)) in response.text and f'"{2 * (2**40 + 1)}"' not in response.text
    # a string output whose name ends in _bytes comes back base64-encoded
    assert [base64.b64decode(r["text_bytes"]["b64"]) for r in rows] == list(inputs["text"])
    np.testing.assert_allclose([r["total"] for r in rows], expected["total"])
    assert [r["length"] for r in rows] == expected["length"].tolist()

    columnar = post(server, "/v1/models/toy/versions/1:predict", {
        "signature_name": "multi",
        "inputs": {"a": inputs["a"].tolist(), "ids": inputs["ids"].tolist(),
                   "text": [{"b64": base64.b64encode(t).decode()} for t in inputs["text"]]}})
    assert columnar.status_code == 200, columnar.text
    assert columnar.json()["outputs"]["ids_out"] == expected["ids_out"].tolist()


def test_rest_float_rendering_is_tf_serving_style(server):
    # whole floats keep a ".0", as WriteDecimal() does
    response = post(server, "/v1/models/toy/versions/1:predict", {"instances": [[1, 0, 0, 0]]})
    assert response.status_code == 200
    assert "[1.0, 2.0]" in response.text.replace("\n", "").replace(" ", "").replace(",", ", ")


# --- metadata and status ------------------------------------------------------------------

def saved_signatures(path):
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    graph = next(g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags)
    return {k: v for k, v in graph.signature_def.items() if not k.startswith("__")}


def test_grpc_metadata_returns_the_saved_signature_defs(server, artifacts):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "toy"
    response = server.predict_stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "toy" and response.model_spec.version.value == 2
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert dict(signature_map.signature_def) == saved_signatures(artifacts.toy[2])


def test_grpc_metadata_without_fields_is_invalid(server):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "toy"
    assert_rpc_error(lambda: server.predict_stub.GetModelMetadata(request, timeout=10), INVALID,
                     "GetModelMetadataRequest must specify at least one metadata_field")


def test_rest_metadata(server, artifacts):
    response = requests.get(server.rest + "/v1/models/toy/labels/stable/metadata", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"] == {"name": "toy", "version": "1", "signature_name": ""}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert set(body["metadata"]["signature_def"]["signature_def"]) == {"serving_default", "multi"}


def test_status_grpc_and_rest(server):
    assert server.status("toy") == {1: (30, 0, ""), 2: (30, 0, "")}
    assert server.status("toy", 1) == {1: (30, 0, "")}
    response = requests.get(server.rest + "/v1/models/toy", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    ]}
    one = requests.get(server.rest + "/v1/models/toy/versions/2", timeout=10).json()
    assert [s["version"] for s in one["model_version_status"]] == ["2"]


def test_status_errors(server):
    assert_rpc_error(lambda: server.status("nope"), NOT_FOUND,
                     "Could not find any versions of model nope")
    assert_rpc_error(lambda: server.status("toy", 9), NOT_FOUND,
                     "Could not find version 9 of model toy")
    response = requests.get(server.rest + "/v1/models/toy/versions/9", timeout=10)
    assert response.status_code == 404
    assert response.json() == {"error": "Could not find version 9 of model toy"}


# --- classify / regress -------------------------------------------------------------------

def examples(*values):
    request_examples = []
    for value in values:
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(value)
        request_examples.append(example)
    return request_examples


def test_grpc_classify_and_regress(server):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "examples"
    request.input.example_list.examples.extend(examples(0.0, 2.0))
    result = server.predict_stub.Classify(request, timeout=10)
    assert result.model_spec.version.value == 1
    first, second = result.result.classifications
    assert [c.label for c in first.classes] == ["neg", "pos"]
    np.testing.assert_allclose([c.score for c in second.classes],
                               [1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(-2.0))], rtol=1e-5)

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "examples"
    regress.model_spec.signature_name = "regress"
    regress.input.example_list.examples.extend(examples(1.0, -2.0))
    values = [r.value for r in server.predict_stub.Regress(regress, timeout=10).result.regressions]
    np.testing.assert_allclose(values, [4.0, -5.0])


def test_rest_classify_and_regress(server):
    response = post(server, "/v1/models/examples:classify", {"examples": [{"x": 0.0}]})
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [[["neg", 0.5], ["pos", 0.5]]]
    response = post(server, "/v1/models/examples:regress",
                    {"signature_name": "regress", "examples": [{"x": 1.0}, {"x": 2.5}]})
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [4.0, 8.5]


def test_classify_on_a_predict_signature_is_refused(server):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "toy"
    request.input.example_list.examples.extend(examples(1.0))
    error = assert_rpc_error(lambda: server.predict_stub.Classify(request, timeout=10),
                             grpc.StatusCode.FAILED_PRECONDITION)
    assert error.details().startswith("No classification inputs found in SignatureDef: ")


# --- errors, gRPC -------------------------------------------------------------------------

@pytest.mark.parametrize("request_args, code, message", [
    (dict(name=""), INVALID, "ModelSpec has no name specified."),
    (dict(name="nope"), NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (dict(name="toy", version=7), NOT_FOUND, "Servable not found for request: Specific(toy, 7)"),
    (dict(name="toy", label="nope"), INVALID, "Unrecognized servable version label: nope"),
    (dict(name="toy", signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
])
def test_grpc_spec_errors(server, request_args, code, message):
    name = request_args.pop("name")
    request = predict_request(name, X, **request_args)
    assert_rpc_error(lambda: predict(server, request), code, message)


def test_grpc_input_errors(server):
    wrong_name = predict_request("toy", z=X)
    assert_rpc_error(lambda: predict(server, wrong_name), INVALID,
                     "input tensor alias not found in signature: z. "
                     "Inputs expected to be in the set {x}.")
    extra = predict_request("toy", X, z=X)
    assert_rpc_error(lambda: predict(server, extra), INVALID,
                     "input size does not match signature: 2!=1 len({x,z}) != len({x}). "
                     "Sent extra: {z}. Missing but required: {}.")
    missing = predict_request("toy")
    assert_rpc_error(lambda: predict(server, missing), INVALID,
                     "input size does not match signature: 0!=1 len({}) != len({x}). "
                     "Sent extra: {}. Missing but required: {x}.")
    wrong_dtype = predict_request("toy", X.astype(np.int32))
    assert_rpc_error(lambda: predict(server, wrong_dtype), INVALID,
                     "Expects arg[0] to be float but int32 is provided")
    wrong_shape = predict_request("toy", np.ones((2, 3), np.float32))
    assert_rpc_error(lambda: predict(server, wrong_shape), INVALID)
    bad_filter = predict_request("toy", X)
    bad_filter.output_filter.append("nope")
    assert_rpc_error(lambda: predict(server, bad_filter), INVALID,
                     "output tensor alias not found in signature: nope "
                     "Outputs expected to be in the set {y}.")


# --- errors, REST -------------------------------------------------------------------------

def test_rest_malformed_path(server):
    response = requests.get(server.rest + "/v1/foo", timeout=10)
    assert response.status_code == 400
    assert response.json() == {"error": "Malformed request: GET /v1/foo"}
    response = post(server, "/v1/models/toy:explode", {})
    assert response.status_code == 400
    assert response.json() == {"error": "Malformed request: POST /v1/models/toy:explode"}


@pytest.mark.parametrize("path, status, message", [
    ("/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/toy/versions/7:predict", 404, "Servable not found for request: Specific(toy, 7)"),
    ("/v1/models/toy/labels/nope:predict", 400, "Unrecognized servable version label: nope"),
])
def test_rest_unknown_model_version_label(server, path, status, message):
    response = post(server, path, {"instances": X.tolist()})
    assert response.status_code == status
    assert response.json() == {"error": message}


def test_rest_body_errors(server):
    path = "/v1/models/toy:predict"
    malformed = post(server, path, b"{not json")
    assert malformed.status_code == 400
    assert malformed.json()["error"].startswith("JSON Parse error: ")
    empty = post(server, path, b"")
    assert empty.json() == {"error": "JSON Parse error: The document is empty"}
    neither = post(server, path, {"signature_name": "serving_default"})
    assert neither.status_code == 400
    assert neither.json() == {"error": "Missing 'inputs' or 'instances' key"}
    both = post(server, path, {"instances": X.tolist(), "inputs": X.tolist()})
    assert both.status_code == 400
    assert both.json()["error"].endswith(
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
    bad_signature = post(server, path, {"signature_name": "nope", "instances": X.tolist()})
    assert bad_signature.status_code == 400
    assert bad_signature.json() == {
        "error": 'Serving signature name: "nope" not found in signature def'}


def test_rest_value_errors(server):
    path = "/v1/models/toy:predict"
    wrong_type = post(server, path, {"instances": [["a", 1, 2, 3]]})
    assert wrong_type.status_code == 400
    assert wrong_type.json()["error"] == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: \"a\" Type: String is not of expected type: float")
    ragged = post(server, path, {"instances": [[1, 2, 3, 4], [1, 2, 3]]})
    assert ragged.status_code == 400
    assert ragged.json()["error"] == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting tensor size: 4 but got: 3")
    wrong_shape = post(server, path, {"instances": [[1, 2, 3]]})
    assert wrong_shape.status_code == 400
    wrong_key = post(server, path, {"inputs": {"z": X.tolist()}})
    assert wrong_key.status_code == 400
    assert wrong_key.json() == {"error": "Missing named input: x in 'inputs' object."}
