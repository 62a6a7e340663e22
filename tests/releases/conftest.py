"""Release personas: alice requests (ML engineer; she also holds releases.add_endpoint, which alone
no longer registers endpoints), bob approves, charlie only reads, olivia (tests/conftest.py) operates
endpoints."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.conftest import ENGINEER_PERMS, make_user

RELEASE_PERMS = ["releases.add_release", "releases.change_release", "releases.add_endpoint"]


@pytest.fixture
def alice(django_user_model):  # type: ignore[no-untyped-def]
    return make_user(django_user_model, "alice", ENGINEER_PERMS + RELEASE_PERMS)


@pytest.fixture
def bob(django_user_model):  # type: ignore[no-untyped-def]
    """A release approver: may approve and reject, but holds no engineering permissions."""
    return make_user(django_user_model, "bob", ["releases.approve_release"])


@pytest.fixture
def bob_api(bob):  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(bob)
    return client


@pytest.fixture
def versions(alice, artifacts):  # type: ignore[no-untyped-def]
    """digits v1 (SavedModel) and v2, a variant of v1 (SavedModel), each with recorded metrics."""
    from metrics.models import VersionMetrics
    from registry import services
    from registry.uploads import StagedFile
    from tests import factories

    model = services.model_create(name="digits", owner=alice, task="classification")
    v1 = services.version_create(model=model, staged=StagedFile.from_path(artifacts["zip"]), actor=alice)
    v2 = services.version_create(model=model, staged=StagedFile.from_path(artifacts["zip2"]), actor=alice, parent=v1,
                                 source="optimization")
    import numpy as np

    path = artifacts["zip"].parent / "eval-for-releases.npz"
    path.write_bytes(factories.npz_bytes(x=np.zeros((4, 8), "float32"), y=np.zeros(4, "int64")))
    eval_ds = services.dataset_create(model=model, staged=StagedFile.from_path(path), role="eval", actor=alice,
                                      check_version=v1)
    VersionMetrics.objects.create(version=v1, eval_dataset=eval_ds, metrics={
        "accuracy": 0.970, "latency_ms_p95": 0.8, "gzipped_bytes": 100_000}, samples={})
    VersionMetrics.objects.create(version=v2, eval_dataset=eval_ds, reference=v1, metrics={
        "accuracy": 0.955, "latency_ms_p95": 0.3, "gzipped_bytes": 20_000, "gzipped_ratio": 5.0}, samples={})
    return v1, v2
