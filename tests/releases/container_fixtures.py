"""Fixtures on the real Docker engine and image registry: the one engine client (``docker_client``;
``docker_client.api`` is its low-level APIClient), the stand-in base image, image specs for the
serving-image tests (releases/deploy/image_*.py) and, for the `docker` endpoint tests
(releases/deploy/containers.py), the serving harness below. A pytest plugin: the root conftest.py
lists it, so no test module imports these fixtures.

TEST HARNESS, not a product image: production runs release images built FROM the real
``tensorflow/serving[-gpu]`` image, which cannot be fetched here (no Docker Hub). So the tests
build a *serving-capable test base image*: the stand-in base (busybox only) plus an entrypoint that
mimics TF Serving's ``tf_serving_entrypoint.sh`` but execs this host's Python with our ``serving``
module (``releases.deploy.standin_image.ensure_harness_base_image``, public so bench/ uses it too):

    python -m serving --port=8500 --rest_api_port=8501 --model_name=${MODEL_NAME} \\
        --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"

Python, its libraries and the code are NOT in the image: each container bind-mounts, read-only,
the host's shared libraries (/usr/lib, /lib, /lib64), the base Python installation the virtualenv
links to, the virtualenv itself and the repository's ``serving/`` package (``harness_mounts()``).
Release images are then built from that base with ``image_build.build_image`` unchanged (its CMD
``--model_config_file=/models/models.config`` is appended by the entrypoint), so a container
really loads and serves the model baked into the image, over the real TF Serving protocol, with
host networking (the engine here runs with --bridge=none: "host" or "none" only).

When the engine or the registry is missing the tests fail (never skip): ``bin/test-services``
starts them (``.ci/run`` installs them).
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from releases.deploy import containers
from releases.deploy.image_build import build_image
from releases.deploy.image_context import ImageSpec
from releases.deploy.standin_image import ensure_harness_base_image, ensure_standin_base_image
from tests.factories import Models

RUN_ID = uuid.uuid4().hex[:10]
REGISTRY = os.environ.get("MODELYARD_TEST_REGISTRY", "127.0.0.1:5000")


def remove_image(client: Any, ref: str) -> None:
    """Remove a tag; one still used by another test's container or image stays (harmless)."""
    import docker

    try:
        client.images.remove(ref, force=True)
    except docker.errors.APIError:
        pass


# --- the engine, the registry, the stand-in base -----------------------------------------------------

@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The Docker engine (DOCKER_HOST or the default socket): a DockerClient, whose ``.api`` is
    the low-level APIClient the image functions also take."""
    import docker

    try:
        client = docker.DockerClient(version="auto", timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"No Docker engine ({exc}); run bin/test-services (.ci/run installs docker.io)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry_addr() -> str:
    import requests

    try:
        requests.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"No image registry at {REGISTRY} ({exc}); run bin/test-services")
    return REGISTRY


@pytest.fixture(scope="session")
def standin_base(docker_client: Any) -> Iterator[str]:
    """A stand-in TF Serving base image (busybox only), private to this test session."""
    tag = f"modelyard-test/serving-standin:{RUN_ID}"
    ensure_standin_base_image(docker_client, tag)
    yield tag
    remove_image(docker_client, tag)


# --- serving images ----------------------------------------------------------------------------------

@pytest.fixture
def image_spec(tiny_models: Models) -> Callable[..., ImageSpec]:
    """A factory of ImageSpecs with a unique repository per test (parallel runs never collide)."""
    repo = f"{REGISTRY}/modelyard-test/m{uuid.uuid4().hex[:10]}"

    def make(**overrides: Any) -> ImageSpec:
        fields = dict(
            model_name="digits", version=3, release_id=11, saved_model_dir=tiny_models["a"],
            model_sha256="ab" * 32, base_image="modelyard/serving:missing", repository=repo,
            created="2024-05-01T12:00:00+00:00", source_url="https://git.example/ml/digits",
            revision="0123abcd", version_labels={"stable": 3},
            batching={"max_batch_size": 8, "batch_timeout_micros": 2000,
                      "max_enqueued_batches": 16, "num_batch_threads": 2,
                      "allowed_batch_sizes": [2, 4, 8]},
            gpu_memory_fraction=0.5, xla=True,
            warmup_requests=[{"x": np.full((1, 4), float(i), np.float32)} for i in range(3)],
        )
        fields.update(overrides)
        return ImageSpec(**fields)  # type: ignore[arg-type]

    return make


@pytest.fixture
def image_cleanup(docker_client: Any) -> Iterator[list[str]]:
    """Append image references to this list; they are removed (by tag) after the test."""
    refs: list[str] = []
    yield refs
    for ref in reversed(refs):
        remove_image(docker_client, ref)


# --- the serving harness: containers that really serve -----------------------------------------------

@pytest.fixture(scope="session")
def harness_base(docker_client: Any, standin_base: str) -> Iterator[str]:
    """The serving-capable test base image (a test harness: see the module docstring)."""
    tag = f"modelyard-test/serving-harness:{RUN_ID}"
    ensure_harness_base_image(docker_client, tag, standin=standin_base)
    yield tag
    remove_image(docker_client, tag)


@pytest.fixture(scope="module")
def release_image(docker_client: Any, harness_base: str, tiny_models: Models
                  ) -> Iterator[Callable[..., str]]:
    """release_image(model_name, version, source) -> image ref, built with image_build.build_image
    from the harness base with tiny_models[source] baked in (label stable -> version)."""
    built: list[str] = []
    repository = f"{REGISTRY}/modelyard-test/c{RUN_ID}{uuid.uuid4().hex[:6]}"

    def build(model_name: str, version: int, source: str) -> str:
        spec = ImageSpec(
            model_name=model_name, version=version, release_id=100 + version,
            saved_model_dir=tiny_models[source], model_sha256="cd" * 32, base_image=harness_base,
            repository=repository, created="2024-05-01T12:00:00+00:00",
            version_labels={"stable": version})
        lines: list[str] = []
        build_image(spec, client=docker_client.api, on_log=lines.append)
        built.append(spec.image_ref)
        return spec.image_ref

    yield build
    for ref in built:
        remove_image(docker_client, ref)


@pytest.fixture(scope="module")
def endpoint_name(docker_client: Any) -> Iterator[str]:
    """A unique endpoint name for the module; every container labelled with it is removed after."""
    name = f"test-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    yield name
    for container in containers.endpoint_containers(docker_client, name):
        try:
            container.remove(force=True)
        except Exception:
            pass
