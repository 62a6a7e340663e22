"""The `docker` endpoint kind (releases/deploy/containers.py) on the real Docker engine.

Release images are built with image_build.build_image FROM a serving-capable TEST HARNESS base image
(container_fixtures.py: the stand-in base + an entrypoint that runs this host's Python with our
`serving` module from read-only bind mounts, standing in for the TF Serving image), so every
container really loads the SavedModel baked into its image and answers over TF Serving's gRPC
API with host networking. The module's tests share one endpoint and run in order: first
promotion, second promotion beside it, rollback, failing promotions, retirement.
"""
from __future__ import annotations

import time

import docker
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from releases.deploy import containers
from releases.deploy.containers import ContainerPromotionFailed, ContainerSpec
from releases.deploy.repository_engine import PromotionFailed
from releases.tfserving import LoadFailed, TFServingClient, WrongAnswers
from serving.flags import parse as parse_serving_flags
from releases.traffic import Traffic
from releases.deploy.standin_image import harness_mounts

MODEL = "tiny"
TOLERANCE = (1e-5, 1e-6)


# ------------------------------------------------------------------ no engine needed


def test_gpu_spec_builds_device_requests_host_network_and_port_flags_last():
    spec = ContainerSpec(image_ref="r/m:3", name="n", grpc_port=9100, rest_port=9101, gpu=True,
                         labels={"io.modelyard.release": "7"}, extra_args=["--max_num_load_retries=0"])
    kwargs = containers.create_kwargs(spec, ["--model_config_file=/models/models.config"])
    assert kwargs["network_mode"] == "host"
    assert kwargs["restart_policy"] == {"Name": "unless-stopped"}
    [request] = kwargs["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    assert kwargs["command"] == ["--model_config_file=/models/models.config",
                                 "--max_num_load_retries=0", "--port=9100", "--rest_api_port=9101"]
    assert kwargs["labels"] == {"io.modelyard.release": "7", containers.LABEL_GRPC_PORT: "9100",
                                containers.LABEL_REST_PORT: "9101"}
    spec.gpu = False
    assert "device_requests" not in containers.create_kwargs(spec, [])


def test_serving_keeps_the_last_occurrence_of_a_flag_like_tensorflow_model_server():
    # TF Serving's entrypoint passes --port=8500 --rest_api_port=8501 first; ours come last.
    flags, _ = parse_serving_flags(["--port=8500", "--rest_api_port=8501", "--model_name=m",
                                    "--model_config_file=/models/models.config",
                                    "--port=9100", "--rest_api_port=9101"])
    assert (flags.port, flags.rest_api_port) == (9100, 9101)


def test_free_port_pair_gives_two_distinct_free_ports():
    grpc_port, rest_port = containers.free_port_pair()
    assert grpc_port != rest_port
    assert containers.port_free(grpc_port) and containers.port_free(rest_port)


# ------------------------------------------------------------------ real engine

def x_of(models) -> np.ndarray:
    return np.asarray(models.samples["a"]["inputs"], np.float32)


def official_predict(grpc_target: str, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Predict with the official tensorflow-serving-api stub (no Modelyard client involved)."""
    import grpc

    with grpc.insecure_channel(grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.version_label = "stable"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        response = stub.Predict(request, timeout=10)
    return tf.make_ndarray(response.outputs["y"]), response.model_spec.version.value


def running(client, container_id: str) -> bool:
    try:
        return client.containers.get(container_id).status == "running"
    except docker.errors.NotFound:
        return False


def of_version(client, endpoint: str, version: int) -> list:
    return [c for c in containers.endpoint_containers(client, endpoint)
            if c.labels.get(containers.LABEL_VERSION) == str(version)]


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


def promote(client, endpoint, image, version, samples, old=None, **kwargs):
    steps: list[str] = []
    # image_build.build_image bakes version_labels {stable: N} into models.config but no
    # --allow_version_labels_for_unavailable_models: TF Serving (and serving/) refuse that label at
    # startup, so the caller adds the flag (reported to the image_context.py owner).
    kwargs.setdefault("extra_args", ["--max_num_load_retries=0",
                                     "--allow_version_labels_for_unavailable_models=true"])
    result = containers.promote_container(
        client, endpoint_name=endpoint, model_name=MODEL, version=version, image_ref=image,
        samples=samples, tolerance=TOLERANCE, old=old, on_step=lambda s, _m: steps.append(s),
        deadline_s=90, mounts=harness_mounts(), label="stable", release_id=100 + version, **kwargs)
    return result, steps


@pytest.mark.docker
def test_first_promotion_starts_a_container_that_serves_the_baked_in_model(
        docker_client, release_image, endpoint_name, tiny_models, state):
    image = release_image(MODEL, 1, "a")
    result, steps = promote(docker_client, endpoint_name, image, 1, tiny_models.samples["a"])
    state["v1"] = result
    assert steps == ["check", "start", "available", "validate", "done"]
    assert result.previous_container_id is None
    outputs, version = official_predict(result.grpc_target, x_of(tiny_models))
    assert version == 1
    np.testing.assert_allclose(outputs, tiny_models.samples["a"]["outputs"], rtol=1e-5, atol=1e-6)

    container = docker_client.containers.get(result.new_container_id)
    host_config = container.attrs["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert all(m["ReadOnly"] for m in host_config["Mounts"])
    assert container.labels[containers.LABEL_ENDPOINT] == endpoint_name
    assert (container.labels[containers.LABEL_MODEL], container.labels[containers.LABEL_VERSION],
            container.labels[containers.LABEL_RELEASE]) == (MODEL, "1", "101")
    grpc_port = int(result.grpc_target.rsplit(":", 1)[1])
    assert container.attrs["Config"]["Cmd"][-2:] == [f"--port={grpc_port}",
                                                     f"--rest_api_port={result.rest_url.rsplit(':', 1)[1]}"]


@pytest.mark.docker
def test_second_promotion_runs_beside_the_first_which_keeps_answering_until_the_switch(
        docker_client, release_image, endpoint_name, tiny_models, state):
    v1 = state["v1"]
    image = release_image(MODEL, 2, "b")
    old = docker_client.containers.get(v1.new_container_id)
    active = v1.grpc_target  # what the caller has recorded for the endpoint
    with Traffic(active, MODEL, x_of(tiny_models)) as traffic:
        result, steps = promote(docker_client, endpoint_name, image, 2, tiny_models.samples["b"],
                                old=old)
        both_running = running(docker_client, v1.new_container_id) and running(docker_client,
                                                                              result.new_container_id)
    state["v2"] = result
    assert both_running
    assert steps == ["check", "start", "available", "validate", "done"]
    assert len(traffic.log) > 20 and traffic.failures() == [] and traffic.versions() == {1}
    assert result.previous_container_id == v1.new_container_id
    assert result.grpc_target != v1.grpc_target

    active = result.grpc_target  # the switch: the caller records the new target
    outputs, version = official_predict(active, x_of(tiny_models))
    assert version == 2
    np.testing.assert_allclose(outputs, tiny_models.samples["b"]["outputs"], rtol=1e-5, atol=1e-6)
    _, version = official_predict(v1.grpc_target, x_of(tiny_models))
    assert version == 1  # still there for rollback


@pytest.mark.docker
def test_rollback_returns_the_kept_previous_container_which_still_answers(
        docker_client, endpoint_name, tiny_models, state):
    v1, v2 = state["v1"], state["v2"]
    started = time.monotonic()
    target = containers.rollback_container(docker_client, endpoint_name=endpoint_name,
                                           container_id=v2.previous_container_id, model_name=MODEL)
    assert time.monotonic() - started < 1.0
    assert (target.container_id, target.grpc_target, target.rest_url, target.version) == (
        v1.new_container_id, v1.grpc_target, v1.rest_url, 1)
    outputs, version = official_predict(target.grpc_target, x_of(tiny_models))
    assert version == 1
    np.testing.assert_allclose(outputs, tiny_models.samples["a"]["outputs"], rtol=1e-5, atol=1e-6)
    with pytest.raises(containers.ContainerGone, match="no longer exists"):
        containers.rollback_container(docker_client, endpoint_name=endpoint_name,
                                      container_id="0" * 64)


@pytest.mark.docker
def test_wrong_answers_remove_the_new_container_and_leave_the_old_one_serving(
        docker_client, release_image, endpoint_name, tiny_models, state):
    v2 = state["v2"]
    image = release_image(MODEL, 3, "c")  # model c, validated against b's recorded answers
    old = docker_client.containers.get(v2.new_container_id)
    before = old.attrs["State"]["StartedAt"]
    with Traffic(v2.grpc_target, MODEL, x_of(tiny_models)) as traffic:
        with pytest.raises(ContainerPromotionFailed) as failed:
            promote(docker_client, endpoint_name, image, 3, tiny_models.samples["b"], old=old)
    error = failed.value
    assert isinstance(error, PromotionFailed) and error.step == "validate"
    assert isinstance(error.reason, WrongAnswers)
    assert "answered differently from the recorded outputs" in error.message
    assert of_version(docker_client, endpoint_name, 3) == []
    assert error.removed_container_id and not running(docker_client, error.removed_container_id)
    old.reload()
    assert old.status == "running" and old.attrs["State"]["StartedAt"] == before
    assert traffic.failures() == [] and traffic.versions() == {2}
    assert running(docker_client, state["v1"].new_container_id)


@pytest.mark.docker
def test_a_model_that_fails_to_load_fails_at_available_and_is_removed(
        docker_client, release_image, endpoint_name, tiny_models, state):
    v2 = state["v2"]
    image = release_image(MODEL, 4, "corrupt")
    old = docker_client.containers.get(v2.new_container_id)
    with pytest.raises(ContainerPromotionFailed) as failed:
        promote(docker_client, endpoint_name, image, 4, tiny_models.samples["b"], old=old)
    error = failed.value
    assert error.step == "available"
    assert isinstance(error.reason, (containers.ContainerExited, LoadFailed))
    assert "Failed to start server" in error.message or "failed to load" in error.message
    assert of_version(docker_client, endpoint_name, 4) == []
    assert running(docker_client, v2.new_container_id)


@pytest.mark.docker
def test_gpu_request_refused_by_an_engine_without_gpus_leaves_no_container(
        docker_client, release_image, endpoint_name, tiny_models, state):
    image = release_image(MODEL, 1, "a")  # cached build
    try:
        result, _ = promote(docker_client, endpoint_name, image, 5, tiny_models.samples["a"], gpu=True)
    except ContainerPromotionFailed as failed:  # CI and developer machines: no GPU
        assert failed.step == "start" and isinstance(failed.reason, containers.ContainerError)
        assert "GPU device requests" in failed.message
    else:  # a machine lent with GPUs: the request was honoured
        container = docker_client.containers.get(result.new_container_id)
        assert container.attrs["HostConfig"]["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
        container.remove(force=True)
    assert of_version(docker_client, endpoint_name, 5) == []


@pytest.mark.docker
def test_ports_in_use_fail_the_check_before_anything_starts(docker_client, release_image,
                                                            endpoint_name, tiny_models, state):
    import socket

    image = release_image(MODEL, 1, "a")
    v2 = state["v2"]
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        with pytest.raises(ContainerPromotionFailed) as failed:
            promote(docker_client, endpoint_name, image, 6, tiny_models.samples["a"],
                    ports=(busy, containers.free_port_pair()[0]))
    assert failed.value.step == "check" and "already in use" in failed.value.message
    grpc_port = int(v2.grpc_target.rsplit(":", 1)[1])
    with pytest.raises(ContainerPromotionFailed, match="already in use"):
        promote(docker_client, endpoint_name, image, 6, tiny_models.samples["a"],
                ports=(grpc_port, containers.free_port_pair()[1]))
    assert of_version(docker_client, endpoint_name, 6) == []


def test_engine_unreachable_is_a_clear_error_at_check(tiny_models, tmp_path):
    socket_path = tmp_path / "no-dockerd.sock"
    client = docker.DockerClient(base_url=f"unix://{socket_path}", version="1.41", timeout=5)
    with pytest.raises(ContainerPromotionFailed) as failed:
        containers.promote_container(
            client, endpoint_name="nowhere", model_name=MODEL, version=1, image_ref="x/y:1",
            samples=tiny_models.samples["a"], deadline_s=5)
    error = failed.value
    assert error.step == "check" and isinstance(error.reason, containers.ContainerError)
    assert error.reason.retryable
    assert "Docker engine unreachable" in error.message and str(socket_path) in error.message
    assert error.removed_container_id is None


@pytest.mark.docker
def test_third_promotion_retires_the_oldest_and_keeps_the_previous_for_rollback(
        docker_client, release_image, endpoint_name, tiny_models, state):
    v1, v2 = state["v1"], state["v2"]
    image = release_image(MODEL, 7, "c")
    old = docker_client.containers.get(v2.new_container_id)
    result, steps = promote(docker_client, endpoint_name, image, 7, tiny_models.samples["c"],
                            old=old, grace_s=0.2)
    assert steps == ["check", "start", "available", "validate", "retire", "done"]
    assert running(docker_client, v1.new_container_id)  # until the grace period has passed
    assert result.retirement is not None and result.retirement.wait(30) == [v1.new_container_id]
    assert not running(docker_client, v1.new_container_id)
    assert running(docker_client, v2.new_container_id) and running(docker_client, result.new_container_id)
    with pytest.raises(containers.ContainerGone):
        containers.rollback_container(docker_client, endpoint_name=endpoint_name,
                                      container_id=v1.new_container_id)
    target = containers.rollback_container(docker_client, endpoint_name=endpoint_name,
                                           container_id=result.previous_container_id, model_name=MODEL)
    assert target.grpc_target == v2.grpc_target
    assert target.grpc_port == int(v2.grpc_target.rsplit(":", 1)[1])
    assert target.rest_port == int(v2.rest_url.rsplit(":", 1)[1])

    # retire everything but the active one
    removed = containers.retire_containers(docker_client, endpoint_name, {result.new_container_id})
    assert removed == [v2.new_container_id]
    left = containers.endpoint_containers(docker_client, endpoint_name)
    assert [c.id for c in left] == [result.new_container_id]
    with TFServingClient(result.grpc_target) as client:
        _, version = client.predict(MODEL, {"x": x_of(tiny_models)}, label="stable")
    assert version == 7
