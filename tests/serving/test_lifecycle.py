"""Versions and config over time: polling, failed loads, policies, labels, reloads."""
from __future__ import annotations

import os

import grpc
import requests
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving_contract import assert_rpc_error, predict_request, rpc_error, write_config

AVAILABLE, END = 30, 50
X = np.array([[1., 1., 1., 1.]], dtype=np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tmp_path_factory.mktemp("lifecycle-repo")


@pytest.fixture(scope="module")
def server(launch, artifacts, repo):
    artifacts.place(repo / "seed", 1, artifacts.toy[1])
    config = write_config(repo / "models.config", f"""
model_config_list {{ config {{ name: 'seed' base_path: '{repo}/seed' model_platform: 'tensorflow' }} }}""")
    return launch([f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                   "--max_num_load_retries=0"])


def config_text(*entries: str) -> str:
    return "model_config_list { " + " ".join(f"config {{ {e} }}" for e in entries) + " }"


def entry(name: str, base, extra: str = "") -> str:
    return f"name: '{name}' base_path: '{base}' model_platform: 'tensorflow' {extra}"


def reload(server, text: str, timeout: float = 120) -> model_management_pb2.ReloadConfigResponse:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return server.model_stub.HandleReloadConfigRequest(request, timeout=timeout)


def served_version(server, name: str, **selector) -> int:
    response = server.predict_stub.Predict(predict_request(name, X, **selector), timeout=30)
    return response.model_spec.version.value


def states(server, name: str) -> dict[int, int]:
    return {v: s for v, (s, _, _) in server.status(name).items()}


def test_version_added_while_serving_is_picked_up(server, artifacts, repo):
    base = repo / "grow"
    artifacts.place(base, 1, artifacts.toy[1])
    reload(server, config_text(entry("grow", base)))
    assert served_version(server, "grow") == 1
    artifacts.place(base, 2, artifacts.toy[2])
    server.wait_for(lambda: states(server, "grow") == {1: END, 2: AVAILABLE}, what="v2 to replace v1")
    assert served_version(server, "grow") == 2
    response = server.predict_stub.Predict(predict_request("grow", X), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), X @ (2 * np.array(
        [[1, 2], [3, 4], [5, 6], [7, 8]], np.float32)))


def test_corrupt_version_ends_with_error_and_others_keep_serving(server, artifacts, repo):
    base = repo / "corrupt"
    artifacts.place(base, 1, artifacts.toy[1])
    reload(server, config_text(entry("corrupt", base)))
    artifacts.place(base, 2, None)  # unparseable saved_model.pb
    server.wait_for(lambda: server.status("corrupt").get(2, (0,))[0] == END, what="v2 to END")
    status = server.status("corrupt")
    state, code, message = status[2]
    assert code != 0 and message  # the load error is reported in the status
    assert status[1][0] == AVAILABLE  # availability preserved
    assert served_version(server, "corrupt") == 1
    assert_rpc_error(lambda: served_version(server, "corrupt", version=2), grpc.StatusCode.NOT_FOUND,
                     "Servable not found for request: Specific(corrupt, 2)")


def test_version_directory_that_disappears_is_unloaded(server, artifacts, repo):
    base = repo / "shrink"
    artifacts.place(base, 1, artifacts.toy[1])
    artifacts.place(base, 2, artifacts.toy[2])
    reload(server, config_text(entry("shrink", base, "model_version_policy { all {} }")))
    assert states(server, "shrink") == {1: AVAILABLE, 2: AVAILABLE}
    os.rename(base / "2", base / ".trash-2")
    server.wait_for(lambda: states(server, "shrink") == {1: AVAILABLE, 2: END}, what="v2 unload")
    assert served_version(server, "shrink") == 1


def test_version_policies_and_ignored_directories(server, artifacts, repo):
    base = repo / "policies"
    for version in (1, 2, 3):
        artifacts.place(base, version, artifacts.toy[1])
    (base / ".tmp-9").mkdir()
    (base / "notes").mkdir()
    reload(server, config_text(
        entry("default", base),
        entry("latest2", base, "model_version_policy { latest { num_versions: 2 } }"),
        entry("all", base, "model_version_policy { all {} }"),
        entry("specific", base, "model_version_policy { specific { versions: 1 versions: 3 } }"),
    ))
    assert states(server, "default") == {3: AVAILABLE}
    assert states(server, "latest2") == {2: AVAILABLE, 3: AVAILABLE}
    assert states(server, "all") == {1: AVAILABLE, 2: AVAILABLE, 3: AVAILABLE}
    assert states(server, "specific") == {1: AVAILABLE, 3: AVAILABLE}
    assert served_version(server, "specific") == 3
    assert served_version(server, "specific", version=1) == 1


def test_safe_label_move_via_reload(server, artifacts, repo):
    base = repo / "labels"
    artifacts.place(base, 1, artifacts.toy[1])
    policy = "model_version_policy { specific { versions: 1 } }"
    reload(server, config_text(entry("labelled", base, policy)))
    reload(server, config_text(entry("labelled", base, policy + " version_labels { key: 'stable' value: 1 }")))
    assert served_version(server, "labelled", label="stable") == 1
    # serve {1, 2}, wait for 2, then move the label
    artifacts.place(base, 2, artifacts.toy[2])
    both = "model_version_policy { specific { versions: 1 versions: 2 } }"
    reload(server, config_text(entry("labelled", base, both + " version_labels { key: 'stable' value: 1 }")))
    server.wait_for(lambda: states(server, "labelled") == {1: AVAILABLE, 2: AVAILABLE}, what="v2")
    reload(server, config_text(entry("labelled", base, both + " version_labels { key: 'stable' value: 2 }")))
    assert served_version(server, "labelled", label="stable") == 2
    assert served_version(server, "labelled", version=1) == 1

    rest = requests.post(server.rest + "/v1/models/labelled/labels/stable:predict",
                         json={"instances": X.tolist()}, timeout=30)
    assert rest.status_code == 200, rest.text


def test_label_on_unavailable_version_is_refused(server, artifacts, repo):
    base = repo / "refuse"
    artifacts.place(base, 1, artifacts.toy[1])
    reload(server, config_text(entry("refuse", base)))
    error = assert_rpc_error(
        lambda: reload(server, config_text(entry("refuse", base, "version_labels { key: 'canary' value: 5 }"))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "Request to assign label to version 5 of model refuse, which is not currently "
        "available for inference")
    assert error is not None
    assert_rpc_error(lambda: served_version(server, "refuse", label="canary"),
                     grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: canary")
    assert served_version(server, "refuse") == 1


def test_reload_that_drops_a_model_unloads_it(server, artifacts, repo):
    keep, drop = repo / "keep", repo / "drop"
    artifacts.place(keep, 1, artifacts.toy[1])
    artifacts.place(drop, 1, artifacts.toy[1])
    reload(server, config_text(entry("keep", keep), entry("drop", drop)))
    assert served_version(server, "drop") == 1
    response = reload(server, config_text(entry("keep", keep)))
    assert response.status.error_code == 0
    assert_rpc_error(lambda: served_version(server, "drop"), grpc.StatusCode.NOT_FOUND,
                     "Servable not found for request: Latest(drop)")
    server.wait_for(lambda: states(server, "drop") == {1: END}, what="drop to END")
    assert served_version(server, "keep") == 1


def test_reload_blocks_until_new_models_are_available(server, artifacts, repo):
    base = repo / "fresh"
    artifacts.place(base, 4, artifacts.toy[3])
    reload(server, config_text(entry("fresh", base)))
    # no waiting: the reload returned only once the new model could serve
    assert states(server, "fresh") == {4: AVAILABLE}
    assert served_version(server, "fresh") == 4


def test_reload_of_a_model_that_cannot_load_fails(server, artifacts, repo):
    base = repo / "broken"
    artifacts.place(base, 1, None)
    error = rpc_error(lambda: reload(server, config_text(entry("broken", base))))
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert "did not become available" in error.details()


@pytest.mark.parametrize("text, message", [
    (config_text("name: 'a' base_path: '/x' model_platform: 'tensorflow'",
                 "name: 'a' base_path: '/y' model_platform: 'tensorflow'"),
     "Illegal to list model a multiple times in config list"),
    (config_text("name: 'rel' base_path: 'models/rel' model_platform: 'tensorflow'"),
     "Expected model rel to have an absolute path or URI; got base_path()=models/rel"),
])
def test_reload_validation(server, text, message):
    assert_rpc_error(lambda: reload(server, text), grpc.StatusCode.INVALID_ARGUMENT, message)


def test_reload_refuses_a_platform_change(server, artifacts, repo):
    base = repo / "platform"
    artifacts.place(base, 1, artifacts.toy[1])
    reload(server, config_text(entry("platform", base)))
    changed = config_text(f"name: 'platform' base_path: '{base}' model_platform: 'other'")
    assert_rpc_error(lambda: reload(server, changed), grpc.StatusCode.INVALID_ARGUMENT,
                     "Illegal to change a model's platform. For model platform platform was "
                     "tensorflow and new platform requested is other")


def test_reload_requires_a_model_config_list(server):
    request = model_management_pb2.ReloadConfigRequest(
        config=model_server_config_pb2.ModelServerConfig())
    request.config.custom_model_config.type_url = "x"
    assert_rpc_error(lambda: server.model_stub.HandleReloadConfigRequest(request, timeout=30),
                     grpc.StatusCode.INVALID_ARGUMENT,
                     "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                     "Only ModelConfigList is currently supported")
