"""`--enable_batching` / `--batching_parameters_file`: concurrent calls are merged into one model
call and split back, as TF Serving's batching session does.

Merging is shown without timing: with a long batch_timeout_micros a batch only runs once it is
full (or when the next request cannot fit and closes it), so the test decides which requests
share a model call; the counts come from TF Serving's `:tensorflow:serving:batching_session:*`
metrics, read by a Prometheus scrape like any client's.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from releases import environments
from releases.deploy import image_context
from serving_contract import ServerProcess, assert_rpc_error, monitoring_flag, only_ours, predict_request, write_config

PREFIX = ":tensorflow:serving:batching_session:"
PROCESSED, INPUT, PADDING = PREFIX + "processed_batch_size", PREFIX + "input_batch_size", PREFIX + "padding_size"
WRAPPED_RUNS = PREFIX + "wrapped_run_count"
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
HOLD = 60_000_000  # batch_timeout_micros: a batch that is not full waits (a failing test ends within it)


def batching_file(directory: Path, **fields) -> str:
    """A BatchingParameters text file as TF Serving reads it; returns the two flags naming it."""
    lines = []
    for name, value in fields.items():
        if name == "allowed_batch_sizes":
            lines += [f"allowed_batch_sizes: {size}" for size in value]
        elif name == "pad_variable_length_inputs":
            lines.append(f"pad_variable_length_inputs: {str(value).lower()}")
        else:
            lines.append(f"{name} {{ value: {str(value).lower() if isinstance(value, bool) else value} }}")
    path = write_config(directory / "batching_parameters.txt", "\n".join(lines) + "\n")
    return f"--batching_parameters_file={path}"


def grpc_predict(server: ServerProcess, name: str, x: np.ndarray | None, signature: str = "",
                 **inputs: np.ndarray) -> dict[str, np.ndarray]:
    response = server.predict_stub.Predict(predict_request(name, x, signature=signature, **inputs), timeout=60)
    return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


def rest_predict(server: ServerProcess, name: str, x: np.ndarray) -> requests.Response:
    return requests.post(f"{server.rest}/v1/models/{name}:predict", data=json.dumps({"instances": x.tolist()}),
                         timeout=60)


def batching_server(launch, artifacts, tmp_path: Path, model: str = "toy", **params) -> ServerProcess:
    source = artifacts.ragged if model == "ragged" else artifacts.toy[1]
    artifacts.place(tmp_path / model, 1, source)
    return launch([f"--model_name={model}", f"--model_base_path={tmp_path / model}", "--enable_batching",
                   batching_file(tmp_path, **params), monitoring_flag(tmp_path), "--grpc_max_threads=32"])


def queued(server: ServerProcess, count: int) -> None:
    """Wait until `count` input tensors have reached the batcher (recorded as they are queued)."""
    server.wait_for(lambda: server.metric(INPUT + "_count") == count, what=f"{count} queued inputs")


def rows(seed: int, count: int, width: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, width)).astype(np.float32)


# --- many clients, the model's answers ----------------------------------------------------------

def example_input(values: np.ndarray):
    examples = [example_pb2.Example() for _ in values]
    for example, value in zip(examples, values):
        example.features.feature["x"].float_list.value.append(float(value))
    return examples


def call(server: ServerProcess, job: tuple[str, int, int]) -> dict[str, np.ndarray]:
    """One client request of a given kind and size; the answer as arrays."""
    kind, seed, size = job
    x = rows(seed, size)
    if kind == "grpc":
        return grpc_predict(server, "toy", x)
    if kind == "rest":
        response = rest_predict(server, "toy", x)
        assert response.status_code == 200, response.text
        return {"y": np.asarray(response.json()["predictions"], np.float32)}
    if kind == "multi":
        return grpc_predict(server, "toy", None, "multi", **multi_inputs(seed, size))
    request = (classification_pb2.ClassificationRequest() if kind == "classify"
               else regression_pb2.RegressionRequest())
    request.model_spec.name = "examples"
    if kind == "regress":
        request.model_spec.signature_name = "regress"
    request.input.example_list.examples.extend(example_input(x[:, 0]))
    if kind == "classify":
        result = server.predict_stub.Classify(request, timeout=60).result
        return {"scores": np.array([[c.score for c in group.classes] for group in result.classifications])}
    result = server.predict_stub.Regress(request, timeout=60).result
    return {"outputs": np.array([r.value for r in result.regressions], np.float32)}


def multi_inputs(seed: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(size, 2)).astype(np.float32),
            "ids": rng.integers(-2**40, 2**40, size=size, dtype=np.int64),
            "text": np.array([f"row {seed}-{i} é".encode() for i in range(size)], dtype=object)}


def expected(artifacts, direct, job: tuple[str, int, int]) -> dict[str, np.ndarray]:
    kind, seed, size = job
    x = rows(seed, size)
    if kind in ("grpc", "rest"):
        return direct(artifacts.toy[1], x)
    if kind == "multi":
        return direct(artifacts.toy[1], None, "multi", **multi_inputs(seed, size))
    if kind == "classify":
        return {"scores": np.stack([1 / (1 + np.exp(x[:, 0])), 1 / (1 + np.exp(-x[:, 0]))], axis=1)}
    return {"outputs": 3 * x[:, 0] + 1}


@pytest.fixture(scope="module")
def repository(artifacts, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("batching-repo")
    artifacts.place(repo / "toy", 1, artifacts.toy[1])
    artifacts.place(repo / "examples", 1, artifacts.examples)
    artifacts.place(repo / "warm", 1, artifacts.warmup_ok)
    entries = "".join(f"config {{ name: '{name}' base_path: '{repo / name}' model_platform: 'tensorflow' }}\n"
                      for name in ("toy", "examples", "warm"))
    write_config(repo / "models.config", f"model_config_list {{\n{entries}}}\n")
    # The staging profile's file exactly as releases/deploy/image_context.py writes it into a TF Serving image.
    staging = next(e for e in environments.DEFAULT_ENVIRONMENTS if e["name"] == "staging")["batching"]
    write_config(repo / "batching_parameters.txt", image_context.batching_parameters_text(staging))
    return repo


def test_many_concurrent_clients_get_the_models_answers_with_batching_on_and_off(
        launch, artifacts, direct, repository, tmp_path):
    common = [f"--model_config_file={repository / 'models.config'}", monitoring_flag(tmp_path), "--grpc_max_threads=32"]
    on = launch([*common, "--enable_batching", f"--batching_parameters_file={repository / 'batching_parameters.txt'}"])
    off = launch(common)
    kinds = ["grpc", "rest", "grpc", "multi", "rest", "classify", "grpc", "regress"]
    jobs = [(kinds[i % len(kinds)], i, 1 + i % 7) for i in range(160)]
    answers = {}
    for name, server in (("on", on), ("off", off)):
        with ThreadPoolExecutor(32) as pool:  # 32 clients at once, batch sizes 1..7
            answers[name] = list(pool.map(lambda job: call(server, job), jobs))

    for job, with_batching, without in zip(jobs, answers["on"], answers["off"]):
        want = expected(artifacts, direct, job)
        assert set(with_batching) == set(without) == set(want), job
        for alias, value in want.items():
            for got in (with_batching[alias], without[alias]):
                assert got.shape == value.shape, (job, alias)
                if value.dtype.kind in "OSiu":
                    np.testing.assert_array_equal(got, value)
                else:
                    np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grpc_predict(on, "warm", rows(0, 2))["y"], direct(artifacts.toy[1], rows(0, 2))["y"],
                               rtol=1e-6)  # its warmup ran through the batcher at load

    text = on.metrics()
    runs = on.metric(WRAPPED_RUNS)
    calls = len(jobs) + 1 + 1  # the requests, the warm request, and the warmup record
    assert 0 < runs <= calls
    assert on.metric(PROCESSED + "_count") == runs
    # Staging allows batch sizes 8, 16 and 32 only: every model call was padded up to one of them.
    assert on.metric(PROCESSED + "_bucket", le="4") == 0, text
    assert on.metric(PROCESSED + "_sum") >= sum(size for _, _, size in jobs)
    assert off.metric(WRAPPED_RUNS) == 0


# --- merging, padding, oversize, a full queue ----------------------------------------------------

def test_concurrent_grpc_and_rest_calls_are_merged_into_one_model_call(launch, artifacts, direct, tmp_path):
    sizes = [1, 3, 2, 1, 2, 3]  # 12 rows: the batch runs when the last one arrives
    server = batching_server(launch, artifacts, tmp_path, max_batch_size=12, batch_timeout_micros=HOLD,
                             num_batch_threads=1)
    with ThreadPoolExecutor(8) as pool:
        grpc_calls = [pool.submit(grpc_predict, server, "toy", rows(i, n)) for i, n in enumerate(sizes[:3])]
        rest_calls = [pool.submit(rest_predict, server, "toy", rows(i + 3, n)) for i, n in enumerate(sizes[3:])]
        for i, (n, answer) in enumerate(zip(sizes[:3], grpc_calls)):
            np.testing.assert_allclose(answer.result()["y"], direct(artifacts.toy[1], rows(i, n))["y"], rtol=1e-6)
        for i, (n, answer) in enumerate(zip(sizes[3:], rest_calls)):
            assert answer.result().status_code == 200, answer.result().text
            np.testing.assert_allclose(answer.result().json()["predictions"],
                                       direct(artifacts.toy[1], rows(i + 3, n))["y"], rtol=1e-6)
    assert server.metric(WRAPPED_RUNS) == 1  # six requests, one model call
    assert server.metric(PROCESSED + "_count") == 1 and server.metric(PROCESSED + "_sum") == 12
    assert server.metric(INPUT + "_count") == 6 and server.metric(INPUT + "_sum") == 12
    assert server.metric(":tensorflow:serving:request_count", model_name="toy", status="OK") == 6


def test_a_batch_is_padded_to_the_next_allowed_size_and_the_padding_is_not_returned(
        launch, artifacts, direct, tmp_path):
    server = batching_server(launch, artifacts, tmp_path, max_batch_size=8, batch_timeout_micros=HOLD,
                             allowed_batch_sizes=[2, 4, 8], num_batch_threads=1)
    sent = [rows(0, 3), rows(1, 6), rows(2, 2)]
    with ThreadPoolExecutor(4) as pool:
        calls = []
        for count, x in enumerate(sent, start=1):
            calls.append(pool.submit(grpc_predict, server, "toy", x))
            queued(server, count)
        # 6 rows do not fit beside 3 in a batch of 8: the 3 go alone, padded to 4; then 6 + 2 = 8.
        for call_, x in zip(calls, sent):
            got = call_.result()["y"]
            assert got.shape == (len(x), 2)
            np.testing.assert_allclose(got, direct(artifacts.toy[1], x)["y"], rtol=1e-6)
    assert server.metric(WRAPPED_RUNS) == 2
    assert server.metric(PADDING + "_sum", execution_batch_size="4") == 1
    assert server.metric(PADDING + "_sum", execution_batch_size="8") == 0
    assert server.metric(PROCESSED + "_sum") == 4 + 8


def test_a_request_larger_than_max_batch_size_is_refused(launch, artifacts, tmp_path):
    server = batching_server(launch, artifacts, tmp_path, max_batch_size=4)
    message = "Task size 5 is larger than maximum input batch size 4"
    assert_rpc_error(lambda: server.predict_stub.Predict(predict_request("toy", rows(0, 5)), timeout=30),
                     grpc.StatusCode.INVALID_ARGUMENT, message)
    response = rest_predict(server, "toy", rows(0, 5))
    assert response.status_code == 400 and response.json() == {"error": message}
    assert grpc_predict(server, "toy", rows(0, 4))["y"].shape == (4, 2)
    assert grpc_predict(server, "toy", rows(0, 0))["y"].shape == (0, 2)  # an empty call is run, not left waiting


def test_large_batch_splitting_runs_a_big_request_as_several_batches(launch, artifacts, direct, tmp_path):
    server = batching_server(launch, artifacts, tmp_path, max_batch_size=8, enable_large_batch_splitting=True,
                             max_execution_batch_size=4, allowed_batch_sizes=[2, 4, 8], num_batch_threads=1)
    x = rows(7, 7)
    np.testing.assert_allclose(grpc_predict(server, "toy", x)["y"], direct(artifacts.toy[1], x)["y"], rtol=1e-6)
    response = rest_predict(server, "toy", x)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], direct(artifacts.toy[1], x)["y"], rtol=1e-6)
    # Each 7-row request ran as 4 + 3 rows, the 3 padded to 4.
    assert server.metric(WRAPPED_RUNS) == 4
    assert server.metric(PROCESSED + "_sum") == 16 and server.metric(PADDING + "_sum", execution_batch_size="4") == 2
    assert_rpc_error(lambda: server.predict_stub.Predict(predict_request("toy", rows(0, 9)), timeout=30),
                     grpc.StatusCode.INVALID_ARGUMENT, "Task size 9 is larger than maximum input batch size 8")


def test_a_full_queue_answers_unavailable_over_grpc_and_503_over_rest(launch, artifacts, direct, tmp_path):
    server = batching_server(launch, artifacts, tmp_path, max_batch_size=2, max_enqueued_batches=1,
                             batch_timeout_micros=HOLD, num_batch_threads=1)
    with ThreadPoolExecutor(4) as pool:
        waiting = pool.submit(grpc_predict, server, "toy", rows(1, 1))  # half of the one batch allowed
        queued(server, 1)
        full = f"{QUEUE_FULL}; currently 1 batches enqueued and max_enqueued_batches is 1"
        assert_rpc_error(lambda: server.predict_stub.Predict(predict_request("toy", rows(2, 2)), timeout=30),
                         grpc.StatusCode.UNAVAILABLE, full)
        response = rest_predict(server, "toy", rows(2, 2))
        assert response.status_code == 503 and response.json() == {"error": full}
        filler = pool.submit(grpc_predict, server, "toy", rows(3, 1))  # fits: the batch fills and runs
        for answer, x in ((waiting, rows(1, 1)), (filler, rows(3, 1))):
            np.testing.assert_allclose(answer.result()["y"], direct(artifacts.toy[1], x)["y"], rtol=1e-6)
    assert server.metric(":tensorflow:serving:request_count", model_name="toy", status="UNAVAILABLE") == 2
    assert server.metric(WRAPPED_RUNS) == 1


@pytest.mark.parametrize("pad", [True, False])
def test_inputs_of_different_lengths_are_padded_only_when_asked(launch, artifacts, tmp_path, pad):
    server = batching_server(launch, artifacts, tmp_path, "ragged", max_batch_size=3, batch_timeout_micros=HOLD,
                             num_batch_threads=1, pad_variable_length_inputs=pad)
    sent = [np.array([[0., 1.]], np.float32), np.array([[1., 7., 2.]], np.float32), np.array([[5.]], np.float32)]
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(grpc_predict, server, "ragged", x) for x in sent]
        if pad:  # one model call at width 3; shorter rows were padded with their own first value
            answers = [c.result() for c in calls]
            assert [a["width"].tolist() for a in answers] == [[3], [3], [3]]
            assert [a["longest"].tolist() for a in answers] == [[1.0], [7.0], [5.0]]
            return
        for c in calls:  # TF Serving fails the whole batch
            with pytest.raises(grpc.RpcError) as info:
                c.result()
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert ("from different tasks have different shapes and padding is turned off. "
                    "Set pad_variable_length_inputs to true") in info.value.details()
    assert server.metric(WRAPPED_RUNS) == 0


def test_a_new_version_gets_its_own_queue_and_the_old_one_drains(launch, artifacts, direct, tmp_path):
    base = tmp_path / "toy"
    artifacts.place(base, 1, artifacts.toy[1])
    server = launch(["--model_name=toy", f"--model_base_path={base}", "--enable_batching",
                     batching_file(tmp_path, max_batch_size=8, num_batch_threads=2)])
    x = rows(3, 3)
    np.testing.assert_allclose(grpc_predict(server, "toy", x)["y"], direct(artifacts.toy[1], x)["y"], rtol=1e-6)
    artifacts.place(base, 2, artifacts.toy[2])
    server.wait_for(lambda: server.status("toy") == {1: (50, 0, ""), 2: (30, 0, "")}, what="version 2 only")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: grpc_predict(server, "toy", rows(i, 2)), range(16)))
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(answer["y"], direct(artifacts.toy[2], rows(i, 2))["y"], rtol=1e-6)


# --- parameter files -----------------------------------------------------------------------------

@only_ours
@pytest.mark.parametrize("flags, text, message", [
    (["--enable_batching"], "max_batch_size { value: 32 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\n",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 16; expected 32"),
    (["--enable_batching"], "max_batch_size: 32\n", "Invalid protobuf file: '"),
    (["--enable_batching"], "num_batch_threads { value: 0 }\n", "num_batch_threads must be positive; was 0"),
    ([], "max_batch_size { value: 8 }\n", "server_options.batching_parameters_file is set without setting "
                                           "server_options.enable_batching to true."),
])
def test_a_bad_batching_parameters_file_stops_start_up(launch, artifacts, tmp_path, flags, text, message):
    artifacts.place(tmp_path / "toy", 1, artifacts.toy[1])
    parameters = write_config(tmp_path / "batching.txt", text)
    server = launch(["--model_name=toy", f"--model_base_path={tmp_path / 'toy'}", *flags,
                     f"--batching_parameters_file={parameters}"], wait=False)
    assert server.wait_exit() == 1
    output = server.output()
    assert "Failed to start server. Error: INVALID_ARGUMENT: " in output and message in output
    assert "Successfully loaded servable" not in output  # refused before any model loads


@only_ours
def test_a_missing_batching_parameters_file_stops_start_up(launch, artifacts, tmp_path):
    artifacts.place(tmp_path / "toy", 1, artifacts.toy[1])
    server = launch(["--model_name=toy", f"--model_base_path={tmp_path / 'toy'}", "--enable_batching",
                     f"--batching_parameters_file={tmp_path / 'absent.txt'}"], wait=False)
    assert server.wait_exit() == 1
    assert f"NOT_FOUND: {tmp_path / 'absent.txt'}; No such file or directory" in server.output()
