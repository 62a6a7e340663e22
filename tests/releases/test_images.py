"""Serving images (releases/deploy/image_context.py, image_build.py, image_registry.py,
standin_image.py; releases/warmup.py): the deterministic build context and its generated files,
then real builds on the Docker engine from a stand-in base image, pushes to the local registry,
layer reuse, and the failures a release build meets."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import tarfile

import numpy as np
import pytest
import requests

from releases import warmup
from releases.deploy import image_build, image_context, image_registry, standin_image
from releases.deploy.image_context import ImageBuildError

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
EXPECTED_ARGS = ["--model_config_file=/models/models.config",
                 "--allow_version_labels_for_unavailable_models=true",  # the spec has start-up labels
                 "--enable_batching=true",
                 "--batching_parameters_file=/models/batching_parameters.txt",
                 "--per_process_gpu_memory_fraction=0.5", "--xla_gpu_compilation_enabled=true"]


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return fh.read()


# ------------------------------------------------------------------ context (no engine needed)


def test_context_is_byte_identical_and_has_the_expected_entries(image_spec, tiny_models):
    spec = image_spec()
    first, second = image_context.write_context(spec), image_context.write_context(image_spec())
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()
    assert image_context.build_context(spec, io.BytesIO()) == hashlib.sha256(first).hexdigest()

    members = _members(first)
    names = list(members)
    assert names == sorted(names)
    for expected in ["Dockerfile", "models/models.config", "models/batching_parameters.txt",
                     "models/digits/3/saved_model.pb", "models/digits/3/variables/variables.index",
                     "models/digits/3/assets.extra/tf_serving_warmup_requests"]:
        assert expected in members, expected
    for m in members.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (image_context.CONTEXT_MTIME, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() else 0o644)
        assert m.isdir() or m.isfile()
        assert not m.pax_headers
    assert _read(first, "models/digits/3/saved_model.pb") == \
        (spec.saved_model_dir / "saved_model.pb").read_bytes()

    # anything that goes into the image changes the context
    assert image_context.write_context(image_spec(release_id=12)) != first
    assert image_context.write_context(image_spec(saved_model_dir=tiny_models["b"])) != first


def test_dockerfile_layers_labels_and_serving_args(image_spec):
    spec = image_spec()
    dockerfile = _read(image_context.write_context(spec), "Dockerfile").decode()
    steps = [line.split()[0] for line in dockerfile.splitlines()
             if line and not line.startswith(("#", " "))]
    assert steps == ["FROM", "ENV", "COPY", "COPY", "CMD", "LABEL"]  # model before config
    assert "RUN" not in steps and "ADD" not in steps
    assert f"FROM {spec.base_image}\n" in dockerfile
    assert "ENV MODEL_NAME=digits\n" in dockerfile
    assert "COPY models/digits/3/ /models/digits/3/\n" in dockerfile
    assert "COPY models/models.config models/batching_parameters.txt /models/\n" in dockerfile
    assert image_context.serving_args(spec) == EXPECTED_ARGS
    for key in ["org.opencontainers.image.source", "org.opencontainers.image.revision",
                "org.opencontainers.image.created", "org.opencontainers.image.title",
                "io.modelyard.model", "io.modelyard.version", "io.modelyard.model-sha256",
                "io.modelyard.release"]:
        assert f'"{key}"=' in dockerfile

    plain = image_spec(batching=None, gpu_memory_fraction=None, xla=False)
    assert image_context.serving_args(plain) == ["--model_config_file=/models/models.config",
                                          "--allow_version_labels_for_unavailable_models=true"]
    unlabelled = image_spec(batching=None, gpu_memory_fraction=None, xla=False, version_labels={})
    assert image_context.serving_args(unlabelled) == ["--model_config_file=/models/models.config"]
    assert "batching_parameters.txt" not in _members(image_context.write_context(plain))


def test_prefer_tflite_needs_a_tflite_file(image_spec, tiny_models, tmp_path):
    with pytest.raises(ImageBuildError, match="model.tflite"):
        image_context.write_context(image_spec(prefer_tflite=True))
    model_dir = tmp_path / "with-tflite"
    shutil.copytree(tiny_models["a"], model_dir)
    (model_dir / "model.tflite").write_bytes(b"TFL3 stand-in")
    spec = image_spec(prefer_tflite=True, saved_model_dir=model_dir)
    assert image_context.serving_args(spec)[-1] == "--prefer_tflite_model=true"
    assert "models/digits/3/model.tflite" in _members(image_context.write_context(spec))


def test_models_config_parses_into_model_server_config(image_spec):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    data = image_context.write_context(image_spec(version_labels={"stable": 3, "canary": 3}))
    config = text_format.Parse(_read(data, "models/models.config").decode(),
                               model_server_config_pb2.ModelServerConfig())
    [entry] = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("digits", "/models/digits", "tensorflow")
    assert entry.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(entry.model_version_policy.specific.versions) == [3]
    assert dict(entry.version_labels) == {"stable": 3, "canary": 3}


def test_version_label_must_name_the_served_version(image_spec):
    with pytest.raises(ImageBuildError, match="'stable' points to version 2.*only serves version 3"):
        image_context.write_context(image_spec(version_labels={"stable": 2}))


def test_batching_file_parses_into_batching_parameters(image_spec):
    from google.protobuf import text_format

    text = _read(image_context.write_context(image_spec()), "models/batching_parameters.txt").decode()
    assert "max_batch_size {\n  value: 8\n}" in text  # the wrapper form TF Serving reads
    params = text_format.Parse(text, image_context.batching_parameters_class()())
    assert params.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    assert params.max_batch_size.value == 8
    assert params.batch_timeout_micros.value == 2000
    assert params.max_enqueued_batches.value == 16
    assert params.num_batch_threads.value == 2
    assert list(params.allowed_batch_sizes) == [2, 4, 8]


@pytest.mark.parametrize(("batching", "message"), [
    ({"max_batch_size": 8, "allowed_batch_sizes": [2, 8, 4]}, "strictly increasing"),
    ({"max_batch_size": 8, "allowed_batch_sizes": [2, 2, 8]}, "strictly increasing"),
    ({"max_batch_size": 8, "allowed_batch_sizes": [2, 4]}, r"last allowed_batch_sizes entry \(4\) must equal max_batch_size \(8\)"),
    ({"allowed_batch_sizes": [2, 4]}, "needs max_batch_size"),
    ({"max_batch_size": 0}, "max_batch_size must be a positive integer"),
    ({"max_batch_size": 8, "batch_size": 4}, "unknown keys"),
])
def test_invalid_batching_is_refused(image_spec, batching, message):
    with pytest.raises(ImageBuildError, match=message) as err:
        image_context.write_context(image_spec(batching=batching))
    assert err.value.retryable is False


def test_warmup_file_parses_back_into_prediction_logs(tmp_path, image_spec):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests_ = [{"features": np.arange(8, dtype=np.float32).reshape(1, 8) + i,
                  "mask": np.array([[i]], np.int64)} for i in range(3)]
    path = warmup.write_warmup_file(tmp_path / "a" / "tf_serving_warmup_requests", "digits", requests_)
    logs = []
    for raw in tf.data.TFRecordDataset(str(path)):
        entry = prediction_log_pb2.PredictionLog()
        entry.ParseFromString(raw.numpy())
        logs.append(entry)
    assert len(logs) == 3
    for i, entry in enumerate(logs):
        assert entry.WhichOneof("log_type") == "predict_log"
        request = entry.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == ("digits", "serving_default")
        assert set(request.inputs) == {"features", "mask"}
        np.testing.assert_array_equal(tf.make_ndarray(request.inputs["features"]), requests_[i]["features"])
        assert tf.make_ndarray(request.inputs["mask"]).dtype == np.int64

    again = warmup.write_warmup_file(tmp_path / "b", "digits", requests_)
    assert again.read_bytes() == path.read_bytes()
    # the file in the context is the same writer's output
    spec = image_spec(warmup_requests=requests_)
    in_context = _read(image_context.write_context(spec), "models/digits/3/assets.extra/tf_serving_warmup_requests")
    assert in_context == path.read_bytes()

    with pytest.raises(warmup.WarmupError, match="at most 1000"):
        warmup.write_warmup_file(tmp_path / "c", "digits", [{"features": np.zeros((1, 8))}] * 1001)
    with pytest.raises(ImageBuildError, match="Invalid warmup requests"):
        image_context.write_context(image_spec(warmup_requests=[]))


# ------------------------------------------------------------------ real engine and registry


def _build(spec, api, cleanup):  # type: ignore[no-untyped-def]
    log: list[str] = []
    cleanup.append(spec.image_ref)
    built = image_build.build_image(spec, client=api, on_log=log.append)
    return built, log


def _file_in_image(api, image: str, path: str) -> bytes:  # type: ignore[no-untyped-def]
    container = api.create_container(image, command=["true"], network_disabled=True)
    try:
        stream, _ = api.get_archive(container["Id"], path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            [member] = [m for m in tar.getmembers() if m.isfile()]
            fh = tar.extractfile(member)
            assert fh is not None
            return fh.read()
    finally:
        api.remove_container(container["Id"], force=True)


@pytest.mark.docker
def test_build_from_standin_base_has_labels_files_and_args(docker_client, standin_base, image_spec,
                                                           image_cleanup):
    spec = image_spec(base_image=standin_base)
    built, log = _build(spec, docker_client.api, image_cleanup)
    assert built.tag_ref == spec.image_ref and built.image_id.startswith("sha256:")
    assert built.context_sha256 == hashlib.sha256(image_context.write_context(spec)).hexdigest()
    assert any(line.startswith("Step 1/6 : FROM") for line in log)
    assert built.size > 0 and len(built.layers) == 3  # base, model, config

    info = docker_client.api.inspect_image(spec.image_ref)
    assert info["Id"] == built.image_id
    labels = info["Config"]["Labels"]
    assert labels["io.modelyard.model"] == "digits"
    assert labels["io.modelyard.version"] == "3"
    assert labels["io.modelyard.release"] == "11"
    assert labels["io.modelyard.model-sha256"] == "ab" * 32
    assert labels["org.opencontainers.image.source"] == "https://git.example/ml/digits"
    assert labels["org.opencontainers.image.revision"] == "0123abcd"
    assert labels["org.opencontainers.image.created"] == "2024-05-01T12:00:00+00:00"
    assert labels["org.opencontainers.image.title"] == "digits"
    assert info["Config"]["Cmd"] == EXPECTED_ARGS
    assert info["Config"]["Entrypoint"] == [standin_image.STANDIN_ENTRYPOINT]  # inherited from the base
    assert "MODEL_NAME=digits" in info["Config"]["Env"]

    saved = _file_in_image(docker_client.api, spec.image_ref, "/models/digits/3/saved_model.pb")
    assert saved == (spec.saved_model_dir / "saved_model.pb").read_bytes()
    config = _file_in_image(docker_client.api, spec.image_ref, "/models/models.config")
    assert b"versions: 3" in config

    # run it (no network): the stand-in entrypoint echoes the server command line it was given
    container = docker_client.api.create_container(
        spec.image_ref, network_disabled=True, host_config=docker_client.api.create_host_config(network_mode="none"))
    try:
        docker_client.api.start(container["Id"])
        assert docker_client.api.wait(container["Id"], timeout=60)["StatusCode"] == 0
        out = docker_client.api.logs(container["Id"]).decode()
    finally:
        docker_client.api.remove_container(container["Id"], force=True)
    assert out.split() == ["tensorflow_model_server", "--port=8500", "--rest_api_port=8501",
                           "--model_name=digits", "--model_base_path=/models/digits", *EXPECTED_ARGS]


@pytest.mark.docker
def test_push_records_the_registry_digest_and_verifies(docker_client, standin_base, registry_addr,
                                                       image_spec, image_cleanup):
    spec = image_spec(base_image=standin_base)
    built, _ = _build(spec, docker_client.api, image_cleanup)
    log: list[str] = []
    repo_digest = image_registry.push_image(built, client=docker_client.api, auth=None, on_log=log.append)
    repository, digest = repo_digest.split("@")
    assert repository == spec.repository and digest.startswith("sha256:") and len(digest) == 71
    assert any("Pushed" in line for line in log)

    path = spec.repository.split("/", 1)[1]
    resp = requests.get(f"http://{registry_addr}/v2/{path}/manifests/{spec.tag}",
                        headers={"Accept": MANIFEST_V2}, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Docker-Content-Digest"] == digest
    assert hashlib.sha256(resp.content).hexdigest() == digest.split(":")[1]
    assert len(resp.json()["layers"]) == len(built.layers)

    image_registry.verify_pushed(spec.repository, digest, docker_client.api, expected_image_id=built.image_id)
    with pytest.raises(ImageBuildError, match="but sha256:0+ was pushed"):
        image_registry.verify_pushed(spec.repository, digest, docker_client.api,
                             expected_image_id="sha256:" + "0" * 64)
    with pytest.raises(ImageBuildError, match="Pulling .* back failed"):
        image_registry.verify_pushed(spec.repository, "sha256:" + "1" * 64, docker_client.api)


@pytest.mark.docker
def test_identical_rebuild_reuses_every_layer(docker_client, standin_base, image_spec, image_cleanup):
    spec = image_spec(base_image=standin_base)
    first, _ = _build(spec, docker_client.api, image_cleanup)
    again, log = _build(image_spec(base_image=standin_base), docker_client.api, image_cleanup)
    assert again.image_id == first.image_id and again.layers == first.layers
    assert again.context_sha256 == first.context_sha256
    assert again.cache_hits == 5  # ENV, COPY model, COPY config, CMD, LABEL
    assert sum("Using cache" in line for line in log) == 5


@pytest.mark.docker
def test_layer_reuse_follows_the_layer_order(docker_client, standin_base, image_spec, tiny_models,
                                             image_cleanup):
    """Layers: [base, model, config]. Model first (see releases/deploy/image_context.py for why):
    - a serving-profile change (batching) reuses the model layer: ENV and the model COPY come
      from the cache, the model layer's diff id is the same; only the config layer is new;
    - a model-only change (same version, other weights) reuses the base and ENV only: the model
      layer is new, and the config COPY after it is rebuilt - with byte-identical files."""
    base = image_spec(base_image=standin_base, tag="base")
    built, _ = _build(base, docker_client.api, image_cleanup)

    profile = dataclasses.replace(base, tag="profile", batching={"max_batch_size": 16})
    after_profile, log = _build(profile, docker_client.api, image_cleanup)
    assert after_profile.cache_hits == 2
    assert [line for line in log if "Using cache" in line] == [" ---> Using cache"] * 2
    assert after_profile.layers[:2] == built.layers[:2]
    assert after_profile.layers[2] != built.layers[2]

    model = dataclasses.replace(base, tag="model", saved_model_dir=tiny_models["b"])
    after_model, _ = _build(model, docker_client.api, image_cleanup)
    assert after_model.cache_hits == 1  # ENV MODEL_NAME
    assert after_model.layers[0] == built.layers[0]
    assert after_model.layers[1] != built.layers[1]
    for path in ("/models/models.config", "/models/batching_parameters.txt"):
        assert _file_in_image(docker_client.api, model.image_ref, path) == \
            _file_in_image(docker_client.api, base.image_ref, path)


@pytest.mark.docker
def test_engine_unreachable_is_retryable_with_a_clear_message(image_spec):
    import docker

    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41", timeout=5)
    with pytest.raises(ImageBuildError) as err:
        image_build.build_image(image_spec(), client=api, on_log=lambda line: None)
    assert err.value.retryable is True
    assert "Docker engine unreachable at unix:///nonexistent.sock" in str(err.value)
    with pytest.raises(ImageBuildError, match="unreachable at unix:///nonexistent.sock") as err:
        standin_image.ensure_standin_base_image(api, "modelyard-test/never:1")
    assert err.value.retryable is True
    # the high-level DockerClient (what the release services pass) is accepted too
    high_level = docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41", timeout=5)
    with pytest.raises(ImageBuildError, match="unreachable at unix:///nonexistent.sock") as err:
        image_build.build_image(image_spec(), client=high_level, on_log=lambda line: None)
    assert err.value.retryable is True


@pytest.mark.docker
def test_push_refused_is_retryable_and_never_shows_credentials(docker_client, standin_base,
                                                               image_spec, image_cleanup):
    password = "s3cret-Pa55word"
    spec = image_spec(base_image=standin_base)
    spec = dataclasses.replace(spec, repository=spec.repository.replace(
        spec.repository.split("/")[0], "127.0.0.1:5999"))
    built, _ = _build(spec, docker_client.api, image_cleanup)
    log: list[str] = []
    with pytest.raises(ImageBuildError) as err:
        image_registry.push_image(built, client=docker_client.api, on_log=log.append,
                          auth={"username": "alice", "password": password})
    assert err.value.retryable is True
    message = str(err.value)
    assert "127.0.0.1:5999" in message and "unreachable" in message
    assert password not in message and password not in "\n".join(log)
    assert err.value.__cause__ is None  # nothing chained that could carry request details


@pytest.mark.docker
def test_missing_base_image_is_named(docker_client, registry_addr, image_spec, image_cleanup):
    missing = f"{registry_addr}/modelyard-test/no-such-base:{image_build.__name__.replace('.', '-')}"
    spec = image_spec(base_image=missing)
    with pytest.raises(ImageBuildError) as err:
        _build(spec, docker_client.api, image_cleanup)
    message = str(err.value)
    assert f"Base image '{missing}' is not available" in message
    assert "present in the local Docker engine or pullable" in message
    assert image_context.BASE_IMAGE_SETTING in message
    assert err.value.retryable is False
