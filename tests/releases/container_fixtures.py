"""Fixtures for the `docker` endpoint tests (releases/deploy/containers.py), on the real Docker engine.

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

When the engine is missing the tests fail (never skip): ``bin/test-services`` starts it.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from releases.deploy import containers
from releases.deploy.image_build import build_image
from releases.deploy.image_context import ImageSpec
from releases.deploy.standin_image import HARNESS_SERVING_DIR, ensure_harness_base_image, harness_mounts
from tests.releases.serving_fixtures import Models, tiny_models  # noqa: F401 - fixture
from releases.traffic import Traffic  # noqa: F401 - re-exported for the container tests

__all__ = ["docker_client", "harness_base", "release_image", "endpoint_name", "tiny_models",
           "harness_mounts", "Traffic", "HARNESS_SERVING_DIR", "RUN_ID"]

RUN_ID = uuid.uuid4().hex[:10]
REGISTRY = os.environ.get("MODELYARD_TEST_REGISTRY", "127.0.0.1:5000")


def _remove_image(client: Any, ref: str) -> None:
    import docker

    try:
        client.images.remove(ref, force=True)
    except docker.errors.APIError:
        pass


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.DockerClient(version="auto", timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"No Docker engine ({exc}); run bin/test-services (.ci/run installs docker.io)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def harness_base(docker_client: Any) -> Iterator[str]:
    """The serving-capable test base image (a test harness: see the module docstring)."""
    standin = f"modelyard-test/serving-standin-c:{RUN_ID}"
    tag = f"modelyard-test/serving-harness:{RUN_ID}"
    ensure_harness_base_image(docker_client, tag, standin=standin)
    yield tag
    _remove_image(docker_client, tag)
    _remove_image(docker_client, standin)


@pytest.fixture(scope="module")
def release_image(docker_client: Any, harness_base: str, tiny_models: Models
                  ) -> Iterator[Callable[..., str]]:
    """release_image(model_name, version, source) -> image ref, built with images.build_image
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
        _remove_image(docker_client, ref)


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


