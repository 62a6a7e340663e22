"""Optimization jobs end to end through the API, run eagerly (ImmediateBackend)."""
from __future__ import annotations

import pytest

from metrics.models import VersionMetrics
from optimization.models import OptimizationJob
from registry.models import AuditEvent, ModelVersion
from tests.conftest import files_under


def start(api, recipe, datasets=None, version=1, capture=None):  # type: ignore[no-untyped-def]
    body = {"model": "digits", "version": version, "recipe": recipe}
    if datasets:
        body["datasets"] = datasets
    return api.post("/api/v1/optimization-jobs/", body, format="json")


@pytest.mark.django_db
def test_ptq_int8_job_registers_a_measured_variant(api, digits_model, immediate,
                                                   django_capture_on_commit_callbacks, storage_root):
    source, datasets = digits_model
    with django_capture_on_commit_callbacks(execute=True):
        response = start(api, {"technique": "ptq_int8", "params": {"int8_io": False}})
    assert response.status_code == 202, response.content
    job = OptimizationJob.objects.get(pk=response.json()["id"])
    assert job.status == "succeeded", (job.error, job.log)
    variant = job.variant
    assert (variant.parent, variant.source, variant.format, variant.number) == (source, "optimization", "tflite", 2)
    metrics = VersionMetrics.objects.get(version=variant).metrics
    assert metrics["size_ratio"] > 3.0
    assert metrics["accuracy"] >= VersionMetrics.objects.get(version=source).metrics["accuracy"] - 0.02
    assert metrics["agreement"] > 0.95 and metrics["kl_divergence"] < 0.05
    assert metrics["latency_ms_p50"] > 0 and metrics["environment"]["tensorflow_version"]
    detail = api.get(f"/api/v1/optimization-jobs/{job.pk}/").json()
    assert detail["status"] == "succeeded" and detail["progress"] == 100.0 and detail["variant"] == 2
    assert "Registered" in detail["message"] and detail["log"]
    variants = api.get("/api/v1/models/digits/versions/1/variants/").json()
    assert [v["version"] for v in variants["variants"]] == [2]
    assert variants["variants"][0]["metrics"][0]["reference"] == 1
    assert variants["parent"]["metrics"][0]["metrics"]["accuracy"] > 0.8
    version_detail = api.get("/api/v1/models/digits/versions/2/").json()
    assert version_detail["metrics"][0]["metrics"]["gzipped_ratio"] > 1
    samples = VersionMetrics.objects.get(version=source).samples
    assert len(samples["inputs"]) == 8 and len(samples["outputs"][0]) == 10
    assert files_under(storage_root / "tmp") == []
    assert AuditEvent.objects.filter(action="optimization_job.succeed").count() == 1


@pytest.mark.django_db
def test_parent_metrics_are_computed_once_and_reused(api, digits_model, immediate,
                                                     django_capture_on_commit_callbacks):
    source, _ = digits_model
    for recipe in ({"technique": "ptq_dynamic"}, {"technique": "ptq_float16"}):
        with django_capture_on_commit_callbacks(execute=True):
            assert start(api, recipe).status_code == 202
    assert OptimizationJob.objects.filter(status="succeeded").count() == 2
    assert VersionMetrics.objects.filter(version=source).count() == 1
    assert "reusing the parent's metrics" in OptimizationJob.objects.order_by("id").last().log


@pytest.mark.django_db
@pytest.mark.parametrize("recipe, message", [
    ({"technique": "nope"}, "unknown technique"),
    ({"technique": "prune", "params": {"sparsity": 1.5}}, "sparsity"),
    ({"pipeline": [{"technique": "ptq_int8"}, {"technique": "prune"}]}, "cannot run after"),
    ({"technique": "auto", "params": {"max_accuracy_drop": 5}}, "between 0 and 1"),
    ({"technique": "auto", "params": {"objective": "vibes"}}, "objective"),
])
def test_invalid_recipes_are_400_and_create_nothing(api, digits_model, recipe, message):
    response = start(api, recipe)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_job"
    assert message in response.json()["error"]["message"]
    assert not OptimizationJob.objects.exists()


@pytest.mark.django_db
def test_pruning_a_tflite_version_is_refused_at_creation(api, alice, digits_model, digits_files):
    from registry import services
    from registry.uploads import StagedFile

    source, _ = digits_model
    services.version_create(model=source.model, staged=StagedFile.from_path(digits_files["tflite"]), actor=alice)
    response = start(api, {"technique": "prune"}, version=2)
    assert response.status_code == 400
    assert "TFLite flatbuffer" in response.json()["error"]["message"]
    assert not OptimizationJob.objects.exists()


@pytest.mark.django_db
def test_missing_eval_dataset_is_400(api, alice, digits_files):
    from registry import services
    from registry.uploads import StagedFile

    model = services.model_create(name="digits", owner=alice, task="classification")
    services.version_create(model=model, staged=StagedFile.from_path(digits_files["model"]), actor=alice)
    response = start(api, {"technique": "ptq_dynamic"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "missing_dataset"
    assert "eval dataset" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_dataset_that_does_not_fit_the_source_is_400(api, alice, digits_model, tmp_path):
    import numpy as np

    from registry import services
    from registry.models import Dataset
    from registry.uploads import StagedFile

    source, datasets = digits_model
    # A dataset checked against another model-shaped version is refused for this source.
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((10, 64), "float32"), y=np.zeros(10, "int64"))
    ds = services.dataset_create(model=source.model, staged=StagedFile.from_path(wrong), role="eval", actor=alice,
                                 check_version=source)
    Dataset.objects.filter(pk=ds.pk).update(arrays={"x": {"shape": [10, 63], "dtype": "float32"}})
    response = start(api, {"technique": "ptq_dynamic"}, datasets={"eval": ds.pk})
    assert response.status_code == 400 and response.json()["error"]["code"] == "dataset_mismatch"
    assert "expects" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_training_step_that_raises_fails_the_job_cleanly(api, alice, digits_model, digits_files, immediate,
                                                         django_capture_on_commit_callbacks, storage_root):
    from registry import services
    from registry.uploads import StagedFile

    source, _ = digits_model
    bad = services.dataset_create(model=source.model, staged=StagedFile.from_path(digits_files["bad_train"]),
                                  role="train", actor=alice, check_version=source)
    blobs_before = files_under(storage_root / "blobs")
    with django_capture_on_commit_callbacks(execute=True):
        response = start(api, {"technique": "prune", "params": {"epochs": 1}}, datasets={"train": bad.pk})
    assert response.status_code == 202
    job = OptimizationJob.objects.get()
    assert job.status == "failed" and job.variant is None
    assert "prune" in job.error and job.finished_at is not None
    assert ModelVersion.objects.count() == 1
    # the parent's measurement (made before the failing step) is kept; nothing of the variant is
    new_blobs = set(files_under(storage_root / "blobs")) - set(blobs_before)
    assert all(sha.split("/")[-1] == VersionMetrics.objects.get().outputs_sha256 for sha in new_blobs)
    assert files_under(storage_root / "tmp") == []
    assert AuditEvent.objects.filter(action="optimization_job.fail").count() == 1


@pytest.mark.django_db
def test_tampered_dataset_fails_the_job_with_a_clear_message(api, digits_model, immediate,
                                                             django_capture_on_commit_callbacks):
    from registry.blobstore import artifact_store

    source, datasets = digits_model
    blob = artifact_store().blob_path(datasets["eval"].sha256)
    blob.chmod(0o640)
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    with django_capture_on_commit_callbacks(execute=True):
        start(api, {"technique": "ptq_dynamic"})
    job = OptimizationJob.objects.get()
    assert job.status == "failed" and "no longer matches its digest" in job.error
    assert ModelVersion.objects.count() == 1


@pytest.mark.django_db
def test_cancel_a_queued_job_and_cancel_twice_is_409(api, digits_model):
    response = start(api, {"technique": "ptq_dynamic"})  # DB backend, no worker: stays queued
    job_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    cancelled = api.post(f"/api/v1/optimization-jobs/{job_id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.post(f"/api/v1/optimization-jobs/{job_id}/cancel/")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]
    from optimization import services

    services.job_run(job_id=job_id)  # a late worker does nothing
    assert OptimizationJob.objects.get().status == "cancelled" and ModelVersion.objects.count() == 1


@pytest.mark.django_db
def test_readonly_user_cannot_start_or_cancel_jobs(readonly_api, api, digits_model):
    denied = readonly_api.post("/api/v1/optimization-jobs/", {"model": "digits", "version": 1,
                                                              "recipe": {"technique": "ptq_dynamic"}}, format="json")
    assert denied.status_code == 403
    job_id = start(api, {"technique": "ptq_dynamic"}).json()["id"]
    assert readonly_api.post(f"/api/v1/optimization-jobs/{job_id}/cancel/").status_code == 403
    assert readonly_api.get(f"/api/v1/optimization-jobs/{job_id}/").status_code == 200


@pytest.mark.django_db
def test_unknown_job_and_unknown_model_are_404(api, digits_model):
    assert api.get("/api/v1/optimization-jobs/999/").status_code == 404
    response = api.post("/api/v1/optimization-jobs/", {"model": "nope", "version": 1,
                                                       "recipe": {"technique": "ptq_dynamic"}}, format="json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


TECHNIQUES = [
    {"technique": "ptq_dynamic"},
    {"technique": "ptq_float16"},
    {"technique": "ptq_int8", "params": {"int8_io": True}},
    {"technique": "prune", "params": {"sparsity": 0.8, "epochs": 1}},
    {"technique": "cluster", "params": {"number_of_clusters": 8, "epochs": 1}},
    {"technique": "qat", "params": {"epochs": 1}},
    {"technique": "distill", "params": {"width": 0.5, "epochs": 6, "learning_rate": 0.005}},
    {"technique": "finetune", "params": {"epochs": 3, "learning_rate": 0.01}},
    {"technique": "fp16"},
    {"technique": "prune_int8", "params": {"prune": {"epochs": 1}}},
    {"technique": "cluster_int8", "params": {"cluster": {"epochs": 1}}},
    {"technique": "sparsity_preserving_cluster", "params": {"prune": {"epochs": 1}, "cluster": {"epochs": 1}}},
    {"technique": "pqat", "params": {"prune": {"epochs": 1}, "qat": {"epochs": 1}}},
    {"technique": "cqat", "params": {"cluster": {"epochs": 1}, "qat": {"epochs": 1}}},
]
EXPECTED_FORMAT = {"ptq_dynamic": "tflite", "ptq_float16": "tflite", "ptq_int8": "tflite", "qat": "tflite",
                   "prune_int8": "tflite", "cluster_int8": "tflite", "pqat": "tflite", "cqat": "tflite"}


@pytest.mark.django_db
@pytest.mark.parametrize("recipe", TECHNIQUES, ids=[r["technique"] for r in TECHNIQUES])
def test_every_technique_and_pipeline_registers_a_variant(api, digits_model, immediate, recipe,
                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = start(api, recipe)
    assert response.status_code == 202, response.content
    job = OptimizationJob.objects.get()
    assert job.status == "succeeded", (job.error, job.log[-3000:])
    variant = job.variant
    assert variant.parent.number == 1 and variant.source == "optimization"
    assert variant.format == EXPECTED_FORMAT.get(recipe["technique"], "saved_model")
    metrics = variant.metrics.get().metrics
    for key in ("size_bytes", "gzipped_bytes", "size_ratio", "parameter_count", "accuracy", "accuracy_delta",
                "agreement", "kl_divergence", "latency_ms_p50", "latency_ms_p95", "throughput_per_s"):
        assert metrics[key] is not None, key
    assert metrics["accuracy"] > 0.5  # a real, working model came out
    if recipe["technique"] in ("prune", "prune_int8", "sparsity_preserving_cluster"):
        assert metrics["sparsity"] > 0.5
    if recipe["technique"] in ("cluster",):
        assert metrics["unique_weight_values"] <= 8
    if recipe["technique"] == "distill":
        assert metrics["parameter_count"] < variant.parent.metrics.get().metrics["parameter_count"]


@pytest.mark.django_db
def test_auto_registers_the_smallest_candidate_within_budget(api, digits_model, immediate,
                                                             django_capture_on_commit_callbacks):
    recipe = {"technique": "auto", "params": {"max_accuracy_drop": 0.02, "objective": "gzipped_size",
                                              "candidates": ["int8", "dynamic range", "float16"]}}
    with django_capture_on_commit_callbacks(execute=True):
        assert start(api, recipe).status_code == 202
    job = OptimizationJob.objects.get()
    assert job.status == "succeeded", (job.error, job.log[-3000:])
    assert [c["label"] for c in job.candidates] == ["int8", "dynamic range", "float16"]
    within = [c for c in job.candidates if c["within_budget"]]
    best = min(within, key=lambda c: c["metrics"]["gzipped_bytes"])
    assert best["outcome"].startswith("winner")
    assert all(c["outcome"].startswith("lost") for c in within if c is not best)
    assert job.variant.metrics.get().metrics["gzipped_bytes"] == best["metrics"]["gzipped_bytes"]
    assert job.variant.metrics.get().metrics["auto"]["winner"] == best["label"]
    assert "definitions" in job.variant.metrics.get().metrics  # stored once, on the variant
    assert all("definitions" not in c["metrics"] for c in job.candidates)
    assert ModelVersion.objects.count() == 2


@pytest.mark.django_db
def test_auto_with_no_candidate_in_budget_registers_nothing(api, alice, digits_model, digits_files, tmp_path,
                                                            immediate, storage_root,
                                                            django_capture_on_commit_callbacks):
    import numpy as np

    from registry import services
    from registry.uploads import StagedFile

    source, _ = digits_model
    # Fine-tuning on shuffled labels destroys what the model knew: a candidate that must lose.
    train = np.load(digits_files["train"])
    shuffled = tmp_path / "shuffled.npz"
    np.savez(shuffled, x=train["x"], y=np.random.default_rng(1).permutation(train["y"]))
    noisy = services.dataset_create(model=source.model, staged=StagedFile.from_path(shuffled), role="train",
                                    actor=alice, check_version=source)
    recipe = {"technique": "auto", "params": {"max_accuracy_drop": 0.01, "candidates": ["prune 80% + int8"]}}
    with django_capture_on_commit_callbacks(execute=True):
        assert start(api, recipe, datasets={"train": noisy.pk}).status_code == 202
    job = OptimizationJob.objects.get()
    assert job.status == "succeeded" and job.variant is None
    assert "No candidate stayed within the budget" in job.message
    [candidate] = job.candidates
    assert candidate["within_budget"] is False and "exceeds the budget" in candidate["outcome"]
    assert candidate["metrics"]["accuracy"] < 0.5  # measured and recorded, not guessed
    assert ModelVersion.objects.count() == 1
    assert files_under(storage_root / "tmp") == []


@pytest.mark.django_db
def test_measure_job_records_a_plain_upload_metrics_so_release_gates_can_compare(
        api, alice, digits_model, digits_files, immediate, django_capture_on_commit_callbacks, storage_root):
    from registry import services as registry
    from registry.uploads import StagedFile
    from releases import gates
    from releases.models import Environment

    source, datasets = digits_model
    # A retrained model uploaded as v2 (same bytes, a new version), compared with v1 by the gates.
    v2 = registry.version_create(model=source.model, staged=StagedFile.from_path(digits_files["model"]),
                                 actor=alice, parent=source)
    staging = Environment.objects.get(name="staging")
    results, passed, baseline = gates.evaluate(v2, staging)
    assert baseline == source and not passed
    assert any('"technique": "measure"' in r["message"] for r in results if not r["passed"]), results

    for version in (1, 2):
        with django_capture_on_commit_callbacks(execute=True):
            response = start(api, {"technique": "measure"}, version=version)
        assert response.status_code == 202, response.content
        job = OptimizationJob.objects.get(pk=response.json()["id"])
        assert job.status == "succeeded" and job.variant is None, (job.error, job.log)
        assert job.message.startswith(f"Measured digits v{version} on ") and "accuracy" in job.message

    assert ModelVersion.objects.count() == 2  # nothing registered
    measured = {m.version.number: m for m in VersionMetrics.objects.all()}
    assert set(measured) == {1, 2} and all(m.eval_dataset == datasets["eval"] for m in measured.values())
    assert measured[2].metrics["accuracy"] == measured[1].metrics["accuracy"]  # the same model
    assert len(measured[2].samples["inputs"]) == 8 and measured[2].outputs_sha256
    results, passed, _ = gates.evaluate(v2, staging)
    assert passed, results
    accuracy = next(r for r in results if r["gate"] == "max_accuracy_drop")
    assert accuracy["value"] == 0.0
    assert api.get("/api/v1/models/digits/versions/2/").json()["metrics"][0]["metrics"]["accuracy"] > 0.8
    assert files_under(storage_root / "tmp") == []

    # Measuring again reuses the stored run instead of creating a second one.
    with django_capture_on_commit_callbacks(execute=True):
        assert start(api, {"technique": "measure"}, version=2).status_code == 202
    assert VersionMetrics.objects.filter(version__number=2).count() == 1
    assert "reusing" in OptimizationJob.objects.order_by("id").last().log


@pytest.mark.django_db
@pytest.mark.parametrize("recipe", [{"technique": "measure", "params": {"runs": 3}},
                                    {"technique": "measure", "sparsity": 0.5}])
def test_measure_takes_no_parameters(api, digits_model, recipe):
    response = start(api, recipe)
    assert response.status_code == 400, response.content
    assert "takes no parameters" in response.json()["error"]["message"]
    assert not OptimizationJob.objects.exists()


@pytest.mark.django_db
def test_a_run_stored_by_an_older_harness_is_measured_again_not_reused(
        api, digits_model, immediate, django_capture_on_commit_callbacks, storage_root):
    from metrics.harness import HARNESS_VERSION

    source, _ = digits_model
    with django_capture_on_commit_callbacks(execute=True):
        assert start(api, {"technique": "measure"}).status_code == 202
    row = VersionMetrics.objects.get(version=source)
    assert row.metrics["harness_version"] == HARNESS_VERSION
    current_size = row.metrics["size_bytes"]
    # What a harness-1 run looked like: no version key, size_bytes of the uploaded zip.
    old = {k: v for k, v in row.metrics.items() if k not in ("harness_version", "artifact_bytes", "artifact_ratio")}
    VersionMetrics.objects.filter(pk=row.pk).update(metrics={**old, "size_bytes": source.artifact_size})

    with django_capture_on_commit_callbacks(execute=True):
        assert start(api, {"technique": "ptq_dynamic"}).status_code == 202
    job = OptimizationJob.objects.order_by("id").last()
    assert job.status == "succeeded", (job.error, job.log)
    assert "reusing" not in job.log
    row.refresh_from_db()
    assert VersionMetrics.objects.filter(version=source).count() == 1
    assert row.metrics["harness_version"] == HARNESS_VERSION and row.metrics["size_bytes"] == current_size
    event = AuditEvent.objects.get(action="version_metrics.remeasure")
    assert (event.before, event.after) == ({"harness_version": 1}, {"harness_version": HARNESS_VERSION})
    variant = VersionMetrics.objects.get(version=job.variant)
    assert variant.metrics["size_ratio"] == pytest.approx(current_size / variant.metrics["size_bytes"])
    # every blob on disk is one a row points at
    referenced = {v.artifact_sha256 for v in ModelVersion.objects.all()} | {
        m.outputs_sha256 for m in VersionMetrics.objects.all()}
    from registry.models import Dataset
    referenced |= {d.sha256 for d in Dataset.objects.all()}
    assert {p.name for p in (storage_root / "blobs").rglob("*") if p.is_file()} == referenced
