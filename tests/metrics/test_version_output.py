"""The registry's version output shows the metrics app's runs (plugged in through
registry.extensions), in the same shape, with the same number of queries however many versions."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.console.conftest import make_rows


def _list(api, name: str):  # type: ignore[no-untyped-def]
    with CaptureQueriesContext(connection) as queries:
        response = api.get(f"/api/v1/models/{name}/versions/")
    assert response.status_code == 200, response.content
    return response.json()["results"], len(queries)


@pytest.mark.django_db
def test_versions_list_their_runs_in_batched_queries(api, alice) -> None:
    make_rows(alice, 2, name="two")
    make_rows(alice, 6, name="six")
    two, two_queries = _list(api, "two")
    six, six_queries = _list(api, "six")
    assert six_queries == two_queries  # the runs and their references are prefetched, not read per version
    v2 = next(v for v in six if v["version"] == 2)
    assert v2["metrics"] == [{"eval_dataset": v2["metrics"][0]["eval_dataset"], "reference": 1,
                              "metrics": {"accuracy": 0.898, "gzipped_bytes": 4998, "size_bytes": 8998,
                                          "latency_ms_p50": 0.22, "gzipped_ratio": 1.5},
                              "created_at": v2["metrics"][0]["created_at"]}]
    assert next(v for v in two if v["version"] == 1)["metrics"][0]["reference"] is None


@pytest.mark.django_db
def test_a_version_without_runs_shows_an_empty_list(api, alice) -> None:
    from registry.models import ModelVersion, RegisteredModel

    model = RegisteredModel.objects.create(name="bare", owner=alice, task="classification")
    ModelVersion.objects.create(model=model, number=1, format="tflite", artifact_sha256="f" * 64, artifact_size=1,
                                artifact_filename="m.tflite", created_by=alice)
    assert api.get("/api/v1/models/bare/versions/1/").json()["metrics"] == []
