"""Console fixtures: rows made straight in the database (no TensorFlow), for page and query tests."""
from __future__ import annotations

import hashlib


from tests.releases.conftest import alice, bob  # noqa: F401  (personas: engineer-requester, approver)


def make_rows(owner, n: int, *, name: str = "rows"):  # type: ignore[no-untyped-def]
    """A model with ``n`` versions (each a variant of v1 after the first), metrics, an alias and
    a release per version, plus a promotion and audit events — what every list page shows."""
    from django.db import transaction

    from metrics.models import VersionMetrics
    from optimization.models import OptimizationJob
    from registry import audit
    from registry.models import Dataset, ModelAlias, ModelVersion, RegisteredModel
    from releases.models import Endpoint, Environment, Promotion, Release

    model = RegisteredModel.objects.create(name=name, owner=owner, task="classification")
    ds = Dataset.objects.create(model=model, name="eval.npz", role="eval", sha256="0" * 64, size_bytes=10,
                                arrays={"x": {"shape": [4, 8], "dtype": "float32"}}, created_by=owner)
    env = Environment.objects.get(name="staging")
    endpoint, _ = Endpoint.objects.get_or_create(name=f"ep-{name}", defaults={
        "environment": env, "kind": "model_repository", "grpc_target": "127.0.0.1:1", "repository_path": "/tmp/x",
        "health": {name: {"labels": {"stable": 1}, "versions": {"1": "AVAILABLE"}}}})
    parent = None
    for i in range(1, n + 1):
        sha = hashlib.sha256(f"{name}{i}".encode()).hexdigest()
        v = ModelVersion.objects.create(
            model=model, number=i, format="saved_model", artifact_sha256=sha, artifact_size=1000 * i,
            artifact_filename="m.zip", signature={"inputs": {"x": [None, 8]}}, parent=parent,
            source="optimization" if parent else "upload", metadata={"recipe": {"technique": "prune"}, "i": i},
            created_by=owner)
        VersionMetrics.objects.create(version=v, eval_dataset=ds, reference=parent, metrics={
            "accuracy": 0.9 - i / 1000, "gzipped_bytes": 5000 - i, "size_bytes": 9000 - i,
            "latency_ms_p50": 0.2 + i / 100, "gzipped_ratio": 1.5})
        release = Release.objects.create(version=v, environment=env, requester=owner,
                                         state="live" if i == 1 else "pending_approval",
                                         gates=[{"gate": "max_accuracy_drop", "passed": True, "threshold": 0.02,
                                                 "value": 0.001, "message": "ok"}], gates_passed=True)
        Promotion.objects.create(release=release, endpoint=endpoint, state="succeeded",
                                 steps=[{"step": "stage", "message": "copied", "at": "2026-01-01T10:00:00"}])
        with transaction.atomic():
            audit.record(actor=owner, action="release.promotion_step", obj=release, model=model, version=v,
                         after={"endpoint": endpoint.name, "step": "stage"}, comment="copied")
            audit.record(actor=owner, action="release.create", obj=release, model=model, version=v)
        OptimizationJob.objects.create(source=v, recipe={"technique": "auto"}, eval_dataset=ds, created_by=owner,
                                       status="succeeded", candidates=[{"label": "int8", "metrics": {
                                           "accuracy": 0.8}, "within_budget": False, "outcome": "lost"}])
        if parent is None:
            parent = v
            ModelAlias.objects.create(model=model, name="champion", version=v, updated_by=owner)
    RegisteredModel.objects.filter(pk=model.pk).update(latest_version=n)  # as version_create keeps it
    return model
