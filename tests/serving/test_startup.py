"""Command line and startup behaviour: flags, empty/missing config, labels at startup."""
from __future__ import annotations


import grpc
import numpy as np
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2

from serving_contract import assert_rpc_error, only_ours, predict_request, write_config

X = np.ones((1, 4), np.float32)


def test_single_model_flags_with_ignored_gpu_flags_and_batching_off(launch, artifacts, tmp_path):
    artifacts.place(tmp_path / "single", 1, artifacts.toy[1])
    server = launch(["--model_name=single", f"--model_base_path={tmp_path / 'single'}",
                     "--enable_batching=false", "--per_process_gpu_memory_fraction=0.5",
                     "--xla_gpu_compilation_enabled=false"])
    response = server.predict_stub.Predict(predict_request("single", X), timeout=30)
    assert response.model_spec.version.value == 1


@only_ours
def test_space_separated_flags_and_ignored_flag_log(launch, artifacts, tmp_path):
    artifacts.place(tmp_path / "spaced", 3, artifacts.toy[1])
    parameters = write_config(tmp_path / "batching.txt", "max_batch_size { value: 4 }\n")
    server = launch(["--model_name", "spaced", "--model_base_path", str(tmp_path / "spaced"),
                     "--enable_batching", "--batching_parameters_file", str(parameters),
                     "--xla_gpu_compilation_enabled", "--rest_api_num_threads=4"])
    response = server.predict_stub.Predict(predict_request("spaced", X), timeout=30)
    assert response.model_spec.version.value == 3
    output = server.output()
    assert "Ignoring --xla_gpu_compilation_enabled=true" in output
    assert "Ignoring --rest_api_num_threads=4" in output
    assert "Batching enabled: BatchingOptions(max_batch_size=4," in output
    assert "Modelyard serving ready: grpc=0.0.0.0:" in output


def test_empty_model_config_list_starts_and_accepts_a_reload(launch, artifacts, tmp_path):
    config = write_config(tmp_path / "models.config", "model_config_list {}\n")
    server = launch([f"--model_config_file={config}"])
    assert_rpc_error(lambda: server.status("later"), grpc.StatusCode.NOT_FOUND,
                     "Could not find any versions of model later")
    artifacts.place(tmp_path / "later", 1, artifacts.toy[1])
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(f"model_config_list {{ config {{ name: 'later' base_path: "
                      f"'{tmp_path / 'later'}' model_platform: 'tensorflow' }} }}", request.config)
    server.model_stub.HandleReloadConfigRequest(request, timeout=120)
    assert server.status("later") == {1: (30, 0, "")}


def test_config_file_is_polled(launch, artifacts, tmp_path):
    config = write_config(tmp_path / "models.config", "model_config_list {}\n")
    server = launch([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"])
    artifacts.place(tmp_path / "polled", 1, artifacts.toy[1])
    write_config(config, f"model_config_list {{ config {{ name: 'polled' base_path: "
                         f"'{tmp_path / 'polled'}' model_platform: 'tensorflow' }} }}")
    server.wait_for(lambda: server.status("polled") == {1: (30, 0, "")}, what="polled model")


def test_missing_config_file_fails_startup(launch, tmp_path):
    server = launch([f"--model_config_file={tmp_path / 'absent.config'}"], wait=False)
    assert server.wait_exit() != 0
    assert "absent.config" in server.output()


def test_labels_in_the_startup_config_need_the_flag(launch, artifacts, tmp_path):
    artifacts.place(tmp_path / "lab", 1, artifacts.toy[1])
    text = (f"model_config_list {{ config {{ name: 'lab' base_path: '{tmp_path / 'lab'}' "
            "model_platform: 'tensorflow' version_labels { key: 'stable' value: 1 } } }")
    config = write_config(tmp_path / "models.config", text)
    refused = launch([f"--model_config_file={config}"], wait=False)
    assert refused.wait_exit() != 0
    assert ("Request to assign label to version 1 of model lab, which is not currently "
            "available for inference") in refused.output()
    allowed = launch([f"--model_config_file={config}",
                      "--allow_version_labels_for_unavailable_models=true"])
    response = allowed.predict_stub.Predict(predict_request("lab", X, label="stable"), timeout=30)
    assert response.model_spec.version.value == 1


@only_ours
def test_unknown_flag_is_rejected(launch):
    server = launch(["--no_such_flag=1"], wait=False)
    assert server.wait_exit() != 0
    assert "no_such_flag" in server.output()


@only_ours
def test_grpc_max_threads_must_be_positive(launch, tmp_path):
    server = launch(["--grpc_max_threads=0", "--model_name=m", f"--model_base_path={tmp_path}"], wait=False)
    assert server.wait_exit() == 1
    assert "Failed to start server. Error: --grpc_max_threads must be positive; was 0" in server.output()
