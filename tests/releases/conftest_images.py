"""Fixtures for the serving-image tests (releases/deploy/image_*.py), imported by test_images.py.

Real engine and registry: ``bin/test-services`` starts them (``.ci/run`` installs them). When
they are missing the docker tests fail with a message saying so - they are never skipped.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import factories

REGISTRY = os.environ.get("MODELYARD_TEST_REGISTRY", "127.0.0.1:5000")
RUN_ID = uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def docker_api():  # type: ignore[no-untyped-def]
    """A low-level docker.APIClient on the local engine (DOCKER_HOST or the default socket)."""
    import docker

    try:
        client = docker.APIClient(version="auto", timeout=120)
        client.version()
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
def standin_base(docker_api) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A stand-in TF Serving base image, private to this test session."""
    from releases.deploy import standin_image

    tag = f"modelyard-test/serving-standin:{RUN_ID}"
    standin_image.ensure_standin_base_image(docker_api, tag)
    yield tag
    _remove(docker_api, tag)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Two tiny tf_keras SavedModels: same signature (input ``features``: float32 [None, 8]),
    different weights."""
    base = tmp_path_factory.mktemp("image-models")
    first = factories.save_saved_model(base / "m1", factories.tiny_keras_model())
    second = factories.save_saved_model(base / "m2", factories.tiny_keras_model(seed=1))
    return {"first": first, "second": second}


@pytest.fixture
def image_spec(tiny_models):  # type: ignore[no-untyped-def]
    """A factory of ImageSpecs with a unique repository per test (parallel runs never collide)."""
    from releases.deploy import image_context

    repo = f"{REGISTRY}/modelyard-test/m{uuid.uuid4().hex[:10]}"

    def make(**overrides):  # type: ignore[no-untyped-def]
        fields = dict(
            model_name="digits", version=3, release_id=11, saved_model_dir=tiny_models["first"],
            model_sha256="ab" * 32, base_image="modelyard/serving:missing", repository=repo,
            created="2024-05-01T12:00:00+00:00", source_url="https://git.example/ml/digits",
            revision="0123abcd", version_labels={"stable": 3},
            batching={"max_batch_size": 8, "batch_timeout_micros": 2000,
                      "max_enqueued_batches": 16, "num_batch_threads": 2,
                      "allowed_batch_sizes": [2, 4, 8]},
            gpu_memory_fraction=0.5, xla=True,
            warmup_requests=[{"features": np.full((1, 8), float(i), np.float32)} for i in range(3)],
        )
        fields.update(overrides)
        return image_context.ImageSpec(**fields)

    return make


@pytest.fixture
def image_cleanup(docker_api) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """Append image references to this list; they are removed (by tag) after the test."""
    refs: list[str] = []
    yield refs
    for ref in reversed(refs):
        _remove(docker_api, ref)


def _remove(api, ref: str) -> None:  # type: ignore[no-untyped-def]
    import docker

    try:
        api.remove_image(ref, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError:
        pass  # still used by another test's container/image: harmless leftover tag
