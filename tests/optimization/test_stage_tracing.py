"""A job's stages are heard through config.tracing (what bench/optimization.py times), with the
metrics harness's own stages nested in them."""
from __future__ import annotations

import pytest

from config import tracing
from optimization import services
from optimization.models import OptimizationJob


@pytest.mark.django_db
def test_a_listener_around_job_run_hears_every_stage_of_the_job(digits_model, alice) -> None:
    source, datasets = digits_model
    job = services.job_create(source=source, recipe={"technique": "ptq_dynamic"}, actor=alice, datasets=datasets)
    heard: dict[str, float] = {}
    with tracing.listen(lambda path, seconds: heard.update({path: heard.get(path, 0.0) + seconds})):
        services.job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == OptimizationJob.Status.SUCCEEDED, (job.error, job.log)
    assert {"unpack source", "load datasets", "check eval vs signature", "parent reference", "load model", "passes",
            "export", "measure variant", "register"} <= set(heard)
    # The parent is measured inside "parent reference" on this first job; the variant in "measure variant".
    for stage in ("parent reference", "measure variant"):
        assert {f"{stage}/load predictor", f"{stage}/harness", f"{stage}/sample_io"} <= set(heard)
    assert "register/version_create" in heard
    assert heard["measure variant/harness"] <= heard["measure variant"]
    assert heard["passes"] > 0
