"""The gRPC router of docker endpoints (releases/router.py) in front of two real `python -m
serving` processes: per-RPC forwarding, a switch under steady traffic, errors passed through."""
from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from releases.deploy import repository_engine as engine
from releases.router import serve, write_route
from releases.tfserving import TFServingClient
from tests.factories import Models
from tests.releases.serving_fixtures import LiveServer
from releases.traffic import Traffic

MODEL = "routed"


@pytest.fixture(scope="module")
def backends(launch_server, tiny_models: Models) -> tuple[LiveServer, LiveServer]:
    """Two servers standing in for the old and the new container: v1 on one, v2 on the other."""
    old, new = launch_server(0), launch_server(0)
    for server, version, source in ((old, 1, "a"), (new, 2, "b")):
        engine.promote(server.endpoint, model_name=MODEL, version=version, saved_model_src=tiny_models[source],
                       samples=tiny_models.samples[source], deadline_s=60)
    return old, new


@pytest.fixture
def router(tmp_path: Path):  # type: ignore[no-untyped-def]
    route = tmp_path / "routes" / "gpu-1.json"
    server, handler = serve("127.0.0.1:0", route)
    yield f"127.0.0.1:{server.port}", route
    server.stop(grace=None)
    handler.close()


def x_of(models: Models) -> np.ndarray:
    return np.asarray(models.samples["a"]["inputs"], np.float32)


def test_each_rpc_follows_the_route_file_and_a_switch_drops_no_request(backends, router, tiny_models) -> None:
    old, new = backends
    address, route = router
    write_route(route, grpc_target=old.client.grpc_target, container_id="old", version=1)

    with Traffic(address, MODEL, x_of(tiny_models)) as traffic:
        time.sleep(0.3)
        switched = time.monotonic()
        write_route(route, grpc_target=new.client.grpc_target, container_id="new", version=2)
        traffic.first_seen(2, after=switched, timeout=10)
        time.sleep(0.3)
        back = time.monotonic()
        write_route(route, grpc_target=old.client.grpc_target, container_id="old", version=1)  # a rollback
        traffic.first_seen(1, after=back, timeout=10)
        time.sleep(0.2)

    assert traffic.failures() == []
    served = [version for _, version, _ in traffic.log]
    # one client, one channel to the router: 1 ... 1, 2 ... 2, 1 ... 1 - each switch happens once
    changes = [b for a, b in zip(served, served[1:]) if a != b]
    assert changes == [2, 1], changes
    assert len(traffic.log) > 30


def test_answers_and_errors_are_the_backends_own(backends, router, tiny_models) -> None:
    old, _ = backends
    address, route = router
    write_route(route, grpc_target=old.client.grpc_target)
    with grpc.insecure_channel(address) as via, grpc.insecure_channel(old.client.grpc_target) as direct:
        stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in (via, direct)]
        metadata = [s.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": MODEL}, metadata_field=["signature_def"])) for s in stubs]
        assert metadata[0] == metadata[1]
        errors = []
        for stub in stubs:
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(predict_pb2.PredictRequest(model_spec={"name": "no-such-model"}), timeout=5)
            errors.append((info.value.code(), info.value.details()))
        assert errors[0] == errors[1] and errors[0][0] == grpc.StatusCode.NOT_FOUND
    with TFServingClient(address, timeout=5) as client:
        outputs, version = client.predict(MODEL, {"x": x_of(tiny_models)}, label="stable")
    assert version == 1
    np.testing.assert_allclose(outputs["y"], tiny_models.samples["a"]["outputs"], rtol=1e-5, atol=1e-6)


def test_no_route_yet_is_unavailable_and_a_broken_file_keeps_the_last_target(backends, router, tiny_models) -> None:
    old, _ = backends
    address, route = router
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_pb2.PredictRequest(model_spec={"name": MODEL}), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "No active container" in info.value.details()

    write_route(route, grpc_target=old.client.grpc_target)
    with TFServingClient(address, timeout=5) as client:
        assert client.predict(MODEL, {"x": x_of(tiny_models)})[1] == 1
        route.write_text("{not json")  # e.g. an operator's edit gone wrong
        assert client.predict(MODEL, {"x": x_of(tiny_models)})[1] == 1


@pytest.mark.django_db
def test_route_endpoint_command_refuses_unknown_and_repository_endpoints() -> None:
    from django.core.management import CommandError, call_command

    from releases.models import Endpoint, Environment

    with pytest.raises(CommandError, match="No endpoint named 'nope'"):
        call_command("route_endpoint", "nope", "--listen", "127.0.0.1:0")
    Endpoint.objects.create(name="repo", environment=Environment.objects.get(name="staging"),
                            kind="model_repository", grpc_target="127.0.0.1:1")
    with pytest.raises(CommandError, match="only docker endpoints need a router"):
        call_command("route_endpoint", "repo", "--listen", "127.0.0.1:0")


def test_rest_requests_follow_the_route_too(backends, tmp_path, tiny_models) -> None:
    import http.client

    import requests

    from releases.router import serve_rest

    old, new = backends
    route = tmp_path / "gpu-1.json"
    rest = serve_rest("127.0.0.1:0", route)
    base = f"http://127.0.0.1:{rest.server_port}"
    try:
        with requests.Session() as session:
            missing = session.get(f"{base}/v1/models/{MODEL}", timeout=10)
            assert missing.status_code == 503 and "No active container" in missing.json()["error"]

            for server, source in ((old, "a"), (new, "b")):  # each answers with its own model
                rest_url = f"http://127.0.0.1:{server.rest_port}"
                write_route(route, grpc_target=server.client.grpc_target, rest_url=rest_url)
                status = session.get(f"{base}/v1/models/{MODEL}", timeout=10)
                assert status.status_code == 200
                assert status.json() == requests.get(f"{rest_url}/v1/models/{MODEL}", timeout=10).json()
                body = {"instances": tiny_models.samples["a"]["inputs"]}
                predicted = session.post(f"{base}/v1/models/{MODEL}/labels/stable:predict", json=body, timeout=10)
                assert predicted.status_code == 200, predicted.text
                np.testing.assert_allclose(predicted.json()["predictions"],
                                           tiny_models.samples[source]["outputs"], rtol=1e-5, atol=1e-6)

            raw = http.client.HTTPConnection("127.0.0.1", rest.server_port, timeout=10)
            raw.putrequest("POST", f"/v1/models/{MODEL}:predict")
            raw.putheader("Content-Length", "-5")
            raw.endheaders()
            bad = raw.getresponse()
            assert bad.status == 400 and b"Content-Length" in bad.read()
            raw.close()

            unknown = session.get(f"{base}/v1/models/no-such-model", timeout=10)
            direct = requests.get(f"http://127.0.0.1:{new.rest_port}/v1/models/no-such-model", timeout=10)
            assert (unknown.status_code, unknown.json()) == (direct.status_code, direct.json()) and direct.status_code == 404
    finally:
        rest.shutdown()
        rest.server_close()


def test_a_canary_route_splits_grpc_and_rest_by_weight_and_complete_and_rollback_drop_nothing(
        backends, tmp_path, tiny_models) -> None:
    """The docker driver's canary: ``weight`` % of calls to the new backend, through the real router
    (gRPC and REST) in front of two real servers; then complete (100 %) and rollback (0 %) under
    steady traffic, counting where every call went and that none failed."""
    import requests

    from releases.deploy import EndpointSpec
    from releases.deploy.docker_driver import DockerDriver
    from releases.router import serve_rest

    old, new = backends
    route = tmp_path / "routes" / "gpu-canary.json"
    driver = DockerDriver(EndpointSpec(name="gpu-canary", kind="docker", route_file=route, lock_dir=tmp_path / "locks"))
    stable = {"container_id": "old", "grpc_target": old.client.grpc_target,
              "rest_url": f"http://127.0.0.1:{old.rest_port}", "version": 1}
    canary = {"container_id": "new", "grpc_target": new.client.grpc_target,
              "rest_url": f"http://127.0.0.1:{new.rest_port}", "version": 2}
    # What DockerDriver.promote(canary=True, weight=10) writes once the new container is validated.
    changes = driver.switch(stable, canary={**canary, "weight": 10}, active="new", previous="old")
    assert changes["active_container_id"] == "new" and changes["previous_container_id"] == "old"

    server, handler = serve("127.0.0.1:0", route)
    rest = serve_rest("127.0.0.1:0", route)
    address = f"127.0.0.1:{server.port}"
    try:
        calls = 300
        with TFServingClient(address, timeout=10) as client:
            grpc_versions = [client.predict(MODEL, {"x": x_of(tiny_models)}, label="stable")[1] for _ in range(calls)]
        with requests.Session() as session:
            rest_versions = []
            for _ in range(calls):
                answer = session.get(f"http://127.0.0.1:{rest.server_port}/v1/models/{MODEL}", timeout=10)
                assert answer.status_code == 200
                rest_versions.append(int(answer.json()["model_version_status"][0]["version"]))
        for versions in (grpc_versions, rest_versions):
            assert set(versions) == {1, 2}
            share = versions.count(2) / calls
            assert 0.07 <= share <= 0.13, share  # 10 %, within a tolerance
        print(f"canary 10%: gRPC {grpc_versions.count(2)}/{calls} to v2, REST {rest_versions.count(2)}/{calls} to v2")

        with Traffic(address, MODEL, x_of(tiny_models)) as traffic:
            time.sleep(0.5)
            completed = time.monotonic()
            driver.complete_canary(MODEL)  # 100 % to the new container
            time.sleep(0.5)
            rolled = time.monotonic()
            # What DockerDriver.rollback writes once the kept container is checked (that check needs
            # the Docker engine: tests/releases/test_docker_promotion.py).
            driver.switch(stable, canary=None, active="old", previous="new")
            time.sleep(0.5)
        assert traffic.failures() == []
        before = [v for sent, v, _ in traffic.log if sent < completed]
        during = [v for sent, v, _ in traffic.log if completed + 0.05 < sent < rolled]
        after = [v for sent, v, _ in traffic.log if sent > rolled + 0.05]
        assert set(before) == {1, 2} and set(during) == {2} and set(after) == {1}, (before, during, after)
        print(f"complete/rollback under traffic: {len(traffic.log)} calls, 0 failed")
        assert json.loads(route.read_text())["grpc_target"] == old.client.grpc_target
        assert "canary" not in json.loads(route.read_text())
    finally:
        rest.shutdown()
        server.stop(grace=None)
        handler.close()
