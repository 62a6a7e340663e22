"""releases/protos.py declares TF Serving's ModelService messages without TensorFlow: the bytes must
be the ones the official generated classes (which load TensorFlow; fine in a test) write and read."""
from __future__ import annotations

from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from releases import protos

ours = protos.model_service_messages()


def test_a_status_request_reads_as_the_official_one() -> None:
    request = ours["GetModelStatusRequest"]()
    request.model_spec.name = "digits"

    official = get_model_status_pb2.GetModelStatusRequest.FromString(request.SerializeToString())

    assert official.model_spec.name == "digits" and not official.model_spec.HasField("version")


def test_an_official_status_response_reads_with_states_and_errors() -> None:
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state, message in ((1, 30, ""), (2, 50, "Could not find SavedModel .pb or .pbtxt")):
        status = response.model_version_status.add(version=version, state=state)
        status.status.error_code = 5 if message else 0
        status.status.error_message = message

    read = ours["GetModelStatusResponse"].FromString(response.SerializeToString())

    assert [(s.version, s.state, s.status.error_code, s.status.error_message) for s in read.model_version_status] \
        == [(1, 30, 0, ""), (2, 50, 5, "Could not find SavedModel .pb or .pbtxt")]


def test_a_reload_request_carries_the_config_the_server_reads() -> None:
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name="digits", base_path="/models/digits", model_platform="tensorflow")
    entry.model_version_policy.specific.versions.extend([1, 2])
    entry.version_labels["stable"] = 2

    request = ours["ReloadConfigRequest"](config=config.SerializeToString())
    official = model_management_pb2.ReloadConfigRequest.FromString(request.SerializeToString())

    assert official.config == config


def test_a_refused_reload_reads_with_its_code_and_message() -> None:
    response = model_management_pb2.ReloadConfigResponse()
    response.status.error_code = 3
    response.status.error_message = "Invalid label: stable"
    response.metric.add(name="ignored")  # a field ours leaves out is skipped

    read = ours["ReloadConfigResponse"].FromString(response.SerializeToString())

    assert (read.status.error_code, read.status.error_message) == (3, "Invalid label: stable")


def test_batching_parameters_round_trip_through_text_and_bytes() -> None:
    from google.protobuf import text_format

    from releases.deploy.image_context import batching_parameters

    message = batching_parameters({"max_batch_size": 32, "batch_timeout_micros": 1000, "allowed_batch_sizes": [8, 32]})
    text = text_format.MessageToString(message)

    assert "max_batch_size {\n  value: 32\n}" in text and "allowed_batch_sizes: 8" in text
    assert type(message).FromString(message.SerializeToString()) == message
