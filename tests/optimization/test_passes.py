"""The optimization passes on tiny digits models: each technique runs and yields the promised
form, the recipes validate, cancellation stops training, and artifacts round-trip.

No database: plain pytest (the repo's pytest-django only needs settings for the autouse fixture).
"""
from __future__ import annotations

import gzip
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from optimization import modelio  # noqa: E402
from optimization.passes import (  # noqa: E402
    AUTO_CANDIDATES,
    NAMED_PIPELINES,
    PASSES,
    check_source_kind,
    get_pass,
    parse_recipe,
    required_data,
)
from optimization.passes.common import kernel_weights, tflite_constant_tensors  # noqa: E402
from optimization.passes.base import Cancelled, ModelHandle, PassError  # noqa: E402
from tests.optimization import tiny  # noqa: E402

RESULTS: dict[str, dict] = {}  # technique → accuracy/size, printed at the end (pytest -s)


def run_steps(steps, handle, ctx):  # type: ignore[no-untyped-def]
    for p, params in steps:
        handle = p.run(handle, params, ctx)
        assert handle.kind == p.produces
    return handle


@pytest.fixture(scope="module")
def data() -> tiny.Digits:
    return tiny.digits()


@pytest.fixture(scope="module")
def clf(data):  # type: ignore[no-untyped-def]
    return tiny.classifier(data)


@pytest.fixture(scope="module")
def handle(clf) -> ModelHandle:  # type: ignore[no-untyped-def]
    return ModelHandle(kind="keras", keras_model=clf)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return tmp_path_factory.mktemp("optwork")


@pytest.fixture(scope="module")
def ctx(data, workdir):  # type: ignore[no-untyped-def]
    return tiny.ctx_for(data, workdir)


@pytest.fixture(scope="module")
def baseline(handle, data, workdir):  # type: ignore[no-untyped-def]
    acc = tiny.accuracy(handle, data.eval)
    size = tiny.gzipped_size(handle, workdir / "baseline")
    RESULTS["baseline (float keras)"] = {"acc": acc, "gz": size}
    assert acc > 0.9
    return acc, size


def record(name, out, data, workdir, baseline):  # type: ignore[no-untyped-def]
    acc = tiny.accuracy(out, data.eval)
    size = tiny.gzipped_size(out, workdir / name.replace(" ", "_"))
    RESULTS[name] = {"acc": acc, "gz": size, "x": baseline[1] / size}
    return acc, size


@pytest.fixture(scope="module")
def pruned(handle, ctx):  # type: ignore[no-untyped-def]
    return PASSES["prune"].run(handle, {"sparsity": 0.8, "epochs": 2}, ctx)


@pytest.fixture(scope="module", autouse=True)
def _print_results():  # type: ignore[no-untyped-def]
    yield
    if RESULTS:
        print("\n\ntiny digits MLP (eval 397 samples): accuracy, gzipped artifact, x smaller than baseline")
        for name, r in RESULTS.items():
            print(f"  {name:32s} acc {r['acc']:.3f}  gz {r['gz']:7d} B  {r.get('x', 1):5.1f}x")


# ----------------------------------------------------------------------------- registry & recipes


def test_registry_lists_every_technique() -> None:
    assert set(PASSES) == {"ptq_dynamic", "ptq_float16", "ptq_int8", "prune", "cluster", "qat",
                           "distill", "finetune", "fp16"}
    for name, p in PASSES.items():
        assert get_pass(name) is p and p.produces in {"keras", "tflite"} and p.accepts


def test_named_pipelines_and_auto_candidates_parse() -> None:
    assert [p.name for p, _ in parse_recipe({"technique": "prune_int8"})] == ["prune", "ptq_int8"]
    assert [p.name for p, _ in parse_recipe({"pipeline": "cqat"})] == ["cluster", "qat"]
    steps = parse_recipe("sparsity_preserving_cluster")
    assert steps[1][1]["preserve_sparsity"] is True
    steps = parse_recipe({"technique": "pqat", "params": {"prune": {"sparsity": 0.9}}})
    assert steps[0][1]["sparsity"] == 0.9 and steps[1][1]["scheme"] == "pqat"
    for name in NAMED_PIPELINES:
        assert parse_recipe(name)
    labels = [c["label"] for c in AUTO_CANDIDATES]
    assert len(set(labels)) == len(labels) and labels[-1] == "float16"
    for cand in AUTO_CANDIDATES:
        assert parse_recipe(cand["recipe"])[-1][0].produces == "tflite"
    assert required_data(parse_recipe("prune_int8")) == {"train", "calibration"}
    one = parse_recipe({"technique": "prune", "params": {"sparsity": 0.6}})
    assert one[0][1] == {"sparsity": 0.6, "initial_sparsity": 0.5, "epochs": None, "batch_size": 32,
                         "learning_rate": 1e-3}


@pytest.mark.parametrize(("recipe", "message"), [
    ({"technique": "prune", "params": {"sparsity": 1.2}}, "prune: parameter 'sparsity' must be in (0, 1), got 1.2"),
    ({"technique": "prune", "params": {"sparsity": "high"}}, "prune: parameter 'sparsity' must be a number"),
    ({"technique": "prune", "params": {"sparsty": 0.5}}, "prune: unknown parameter(s) 'sparsty'"),
    ({"technique": "cluster", "params": {"init": "spectral"}}, "cluster: parameter 'init' must be one of"),
    ({"technique": "qat", "params": {"scheme": "xqat"}}, "qat: parameter 'scheme' must be one of"),
    ({"technique": "ptq_int8", "params": {"int8_io": "yes"}}, "ptq_int8: parameter 'int8_io' must be true or false"),
    ({"technique": "distill", "params": {"epochs": 0}}, "distill: parameter 'epochs' must be in [1, 1000]"),
    ({"technique": "magic"}, "unknown technique 'magic'"),
    ({"pipeline": []}, "'pipeline' must be a non-empty list"),
    ({"pipeline": [{"technique": "ptq_int8"}, {"technique": "prune"}]},
     "prune cannot run after ptq_int8: it needs a Keras model, ptq_int8 produces a TFLite model"),
    ({"pipeline": [{"technique": "qat"}, {"technique": "cluster"}]},
     "cluster cannot run after qat: it needs a Keras model, qat produces a TFLite model"),
    ({"technique": "prune_int8", "params": {"quantize": {}}}, "prune_int8: params keys must name its steps"),
    ({"technique": "prune", "pipeline": []}, "either 'technique' or 'pipeline'"),
])
def test_recipe_validation_messages(recipe, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PassError) as err:
        parse_recipe(recipe)
    assert message in str(err.value)


def test_source_kind_checked() -> None:
    with pytest.raises(PassError, match="pruning needs a Keras model; version 3 is a TFLite flatbuffer"):
        check_source_kind(parse_recipe("prune_int8"), "tflite", version=3)
    with pytest.raises(PassError, match="needs a Keras model; the source version is a SavedModel"):
        check_source_kind(parse_recipe({"technique": "cluster"}), "saved_model")
    check_source_kind(parse_recipe("ptq_int8"), "saved_model")
    check_source_kind(parse_recipe("prune_int8"), "keras")


# ----------------------------------------------------------------------------- PTQ


def test_ptq_dynamic_notes_small_tensors(handle, ctx, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    out = PASSES["ptq_dynamic"].run(handle, {}, ctx)
    assert out.kind == "tflite" and out.tflite_bytes[4:8] == b"TFL3"
    # The 64x10 output kernel (640 elements) stays float32; the two big kernels become int8.
    assert out.extra["float_small_weight_tensors"] == 1
    assert "under 1024 elements" in out.notes[-1]
    dtypes = [t["dtype"] for t in tflite_constant_tensors(out.tflite_bytes) if len(t["shape"]) == 2]
    assert dtypes.count("int8") == 2
    acc, _ = record("ptq_dynamic", out, data, workdir, baseline)
    assert acc >= baseline[0] - 0.02


def test_ptq_float16(handle, ctx, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    out = PASSES["ptq_float16"].run(handle, {}, ctx)
    assert out.kind == "tflite"
    assert "float16" in out.extra["constant_tensors_by_dtype"]
    acc, _ = record("ptq_float16", out, data, workdir, baseline)
    assert acc >= baseline[0] - 0.01


@pytest.mark.parametrize("int8_io", [False, True])
def test_ptq_int8(handle, ctx, data, workdir, baseline, int8_io) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    out = PASSES["ptq_int8"].run(handle, {"int8_io": int8_io}, ctx)
    assert out.kind == "tflite"
    weights = [t for t in tflite_constant_tensors(out.tflite_bytes) if len(t["shape"]) == 2]
    assert weights and all(t["dtype"] == "int8" for t in weights)
    interp = tf.lite.Interpreter(model_content=out.tflite_bytes)
    io_dtype = np.int8 if int8_io else np.float32
    assert interp.get_input_details()[0]["dtype"] == io_dtype
    assert interp.get_output_details()[0]["dtype"] == io_dtype
    acc, _ = record(f"ptq_int8 (int8_io={int8_io})", out, data, workdir, baseline)
    assert acc >= baseline[0] - 0.03


def test_ptq_from_saved_model_source(clf, ctx, data, workdir) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    sm = workdir / "plain_sm"
    tf.saved_model.save(clf, str(sm))  # no keras_metadata.pb: a plain SavedModel
    src = modelio.load_handle(sm, "saved_model")
    assert src.kind == "saved_model"
    out = PASSES["ptq_int8"].run(src, {}, ctx)
    assert out.kind == "tflite"
    assert tiny.accuracy(out, data.eval) > 0.9
    with pytest.raises(PassError, match="prune needs a Keras model, got a SavedModel"):
        PASSES["prune"].run(src, {}, ctx)


# ----------------------------------------------------------------------------- pruning / clustering


def test_prune_reaches_target_sparsity(handle, pruned, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    assert pruned.kind == "keras"
    kernels = kernel_weights(pruned.keras_model)
    assert len(kernels) == 3
    for name, value in kernels:
        assert np.mean(value == 0) >= 0.8 - 1e-3, name
    assert "PruneLowMagnitude" not in str([type(layer) for layer in pruned.keras_model.layers])
    # the source model was not touched
    assert all(np.mean(v == 0) < 0.1 for _, v in kernel_weights(handle.keras_model))
    acc, _ = record("prune 80%", pruned, data, workdir, baseline)
    assert acc >= baseline[0] - 0.06


def test_prune_regression_uses_mse(data, workdir) -> None:  # type: ignore[no-untyped-def]
    reg = tiny.regressor(data)
    rctx = tiny.ctx_for(data, workdir, task="regression", regression=True)
    out = PASSES["prune"].run(ModelHandle(kind="keras", keras_model=reg),
                              {"sparsity": 0.5, "epochs": 2, "learning_rate": 1e-3}, rctx)
    assert all(np.mean(v == 0) >= 0.5 - 1e-3 for _, v in kernel_weights(out.keras_model))

    def mse(m):  # type: ignore[no-untyped-def]
        return float(np.mean((m.predict(data.eval.x, verbose=0)[:, 0] - data.eval.y) ** 2))

    base = mse(reg)
    assert base < np.var(data.eval.y)  # the tiny regressor learned something
    assert mse(out.keras_model) < max(1.5 * base, base + 0.5)


def test_cluster_limits_unique_values(handle, ctx, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    out = PASSES["cluster"].run(handle, {"number_of_clusters": 8, "init": "linear"}, ctx)
    assert out.kind == "keras" and out.extra["clusters"] == 8
    for name, value in kernel_weights(out.keras_model):
        assert len(np.unique(value)) <= 8, name
    acc, _ = record("cluster 8 (linear)", out, data, workdir, baseline)
    assert acc >= baseline[0] - 0.1


def test_sparsity_preserving_cluster_pipeline(handle, ctx) -> None:  # type: ignore[no-untyped-def]
    steps = parse_recipe({"technique": "sparsity_preserving_cluster",
                          "params": {"prune": {"sparsity": 0.7, "epochs": 1}}})
    out = run_steps(steps, handle, ctx)
    for name, value in kernel_weights(out.keras_model):
        assert np.mean(value == 0) >= 0.7 - 1e-3, name
        assert len(np.unique(value)) <= 16 + 1, name  # 16 centroids + the preserved zero
    assert out.extra["clusters"] == 16 and out.extra["preserve_sparsity"] is True


def test_keras3_model_is_refused(ctx) -> None:  # type: ignore[no-untyped-def]
    k3 = ModelHandle(kind="keras", keras_model=tiny.keras3_model())
    for name in ("cluster", "prune", "qat", "fp16"):
        with pytest.raises(PassError, match="Keras 3 model: tfmot has no Keras 3 support"):
            PASSES[name].run(k3, {"epochs": 1} if name != "fp16" else {}, ctx)


def test_non_keras_objects_are_refused(ctx, workdir) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PassError, match=r"needs a tf_keras \(Keras 2\) model, got builtins.object"):
        PASSES["prune"].run(ModelHandle(kind="keras", keras_model=object()), {}, ctx)
    path = workdir / "k3.keras"
    tiny.keras3_model().save(path)  # a Keras 3 file cannot be loaded by tf_keras either
    with pytest.raises(PassError, match="must be re-saved with tf_keras"):
        modelio.load_handle(path, "keras")


def test_cluster_weights_returning_none_is_an_error(handle, ctx, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from optimization.passes import cluster

    # A mock: cluster_weights answers None only for a Keras 3 model, which the pass refuses before
    # calling it, so that answer cannot be caused for real here.
    monkeypatch.setattr(cluster, "cluster_fn", lambda preserve: lambda model, **kw: None)
    with pytest.raises(PassError, match="cluster_weights returned nothing"):
        PASSES["cluster"].run(handle, {}, ctx)


# ----------------------------------------------------------------------------- QAT


def test_qat_default(handle, ctx, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    out = PASSES["qat"].run(handle, {"epochs": 1}, ctx)
    assert out.kind == "tflite"
    weights = [t for t in tflite_constant_tensors(out.tflite_bytes) if len(t["shape"]) == 2]
    assert weights and all(t["dtype"] == "int8" for t in weights)
    acc, _ = record("qat", out, data, workdir, baseline)
    assert acc >= baseline[0] - 0.03


def test_pqat_keeps_sparsity_and_chains(pruned, ctx, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    out = PASSES["qat"].run(pruned, {"scheme": "pqat", "epochs": 1}, ctx)
    assert out.kind == "tflite"
    kernels = [t for t in tflite_constant_tensors(out.tflite_bytes, with_data=True)
               if len(t["shape"]) == 2 and t["dtype"] == "int8"]
    assert len(kernels) == 3
    for t in kernels:  # symmetric int8 weights: a pruned zero stays a zero byte
        assert np.mean(np.frombuffer(t["data"], np.int8) == 0) >= 0.79, t["name"]
    acc, _ = record("prune 80% + pqat", out, data, workdir, baseline)
    assert acc >= baseline[0] - 0.08


@pytest.mark.parametrize("scheme", ["cqat", "pcqat"])
def test_cluster_preserving_qat(handle, ctx, scheme) -> None:  # type: ignore[no-untyped-def]
    clustered = PASSES["cluster"].run(handle, {"number_of_clusters": 8, "epochs": 1}, ctx)
    out = PASSES["qat"].run(clustered, {"scheme": scheme, "epochs": 1}, ctx)
    assert out.kind == "tflite" and out.extra["clusters"] == 8


def test_prune_int8_pipeline(pruned, ctx, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    steps = parse_recipe("prune_int8")
    out = steps[1][0].run(pruned, steps[1][1], ctx)  # prune step already ran in the fixture
    assert out.kind == "tflite" and out.extra["sparsity"] >= 0.79
    acc, size = record("prune 80% + int8", out, data, workdir, baseline)
    assert acc >= baseline[0] - 0.06
    assert size * 4 < baseline[1]


# ----------------------------------------------------------------------------- distill / finetune / fp16


def test_distill_width(handle, ctx, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    from optimization.passes.distill import count_params

    out = PASSES["distill"].run(handle, {"width": 0.25, "epochs": 10, "learning_rate": 5e-3}, ctx)
    student = out.keras_model
    assert out.kind == "keras"
    assert count_params(handle.keras_model) >= 4 * count_params(student)
    assert student.output_names == handle.keras_model.output_names
    assert [t.name for t in student.inputs] == [t.name for t in handle.keras_model.inputs]
    probs = student.predict(data.eval.x[:5], verbose=0)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    acc, _ = record("distill width 0.25", out, data, workdir, baseline)
    assert acc > 0.8


def test_distill_cnn_with_softmax_layer_and_uploaded_student(data, workdir) -> None:  # type: ignore[no-untyped-def]
    from optimization.passes.distill import count_params

    cnn = tiny.cnn_classifier(data, epochs=2)
    cctx = tiny.ctx_for(data, workdir)
    out = PASSES["distill"].run(ModelHandle(kind="keras", keras_model=cnn), {"epochs": 2}, cctx)
    conv = [layer for layer in out.keras_model.layers if layer.name == "conv1"][0]
    assert conv.filters == 8 and count_params(cnn) >= 4 * count_params(out.keras_model)
    # uploaded student: the handle is the student, ctx.teacher the source
    cctx.teacher = ModelHandle(kind="keras", keras_model=cnn)
    student = out.keras_model
    again = PASSES["distill"].run(ModelHandle(kind="keras", keras_model=student), {"epochs": 1}, cctx)
    assert count_params(again.keras_model) == count_params(student)
    assert "uploaded student" in again.notes[-1]
    # finetune keeps the Dense → Softmax structure and both names
    tuned = PASSES["finetune"].run(ModelHandle(kind="keras", keras_model=cnn), {"epochs": 1}, cctx)
    assert tuned.keras_model.output_names == ["probs"]
    assert isinstance(tuned.keras_model.get_layer("logits"), type(cnn.get_layer("logits")))
    assert not tuned.keras_model.get_layer("conv1").trainable
    # fp16 on a conv net: float16 convs, float32 output
    half = PASSES["fp16"].run(ModelHandle(kind="keras", keras_model=cnn), {}, cctx)
    assert half.keras_model.get_layer("conv1").kernel.dtype.name == "float16"
    np.testing.assert_allclose(half.keras_model.predict(data.eval.x[:20], verbose=0),
                               cnn.predict(data.eval.x[:20], verbose=0), atol=2e-2)


def test_distill_refuses_regression(data, workdir) -> None:  # type: ignore[no-untyped-def]
    rctx = tiny.ctx_for(data, workdir, task="regression", regression=True)
    with pytest.raises(PassError, match="classification models only"):
        PASSES["distill"].run(ModelHandle(kind="keras", keras_model=tiny.regressor(data, epochs=1)), {}, rctx)


def test_finetune_new_head(handle, data, workdir) -> None:  # type: ignore[no-untyped-def]
    keep = data.train.y < 3  # a new 3-class task: digits 0, 1, 2
    three = tiny.Digits(train=tiny.Arrays(data.train.x[keep], data.train.y[keep]),
                        calibration=data.calibration, eval=data.eval)
    fctx = tiny.ctx_for(three, workdir)
    out = PASSES["finetune"].run(handle, {"epochs": 5, "learning_rate": 1e-2}, fctx)
    model = out.keras_model
    assert out.kind == "keras" and model.output_shape == (None, 3)
    assert model.layers[-1].name == "probs" and out.extra["num_classes"] == 3
    assert [layer.trainable for layer in model.layers if layer.weights] == [False, False, True]
    # frozen features equal the source's
    np.testing.assert_array_equal(model.get_layer("hidden1").get_weights()[0],
                                  handle.keras_model.get_layer("hidden1").get_weights()[0])
    ev = data.eval.y < 3
    acc = float(np.mean(np.argmax(model.predict(data.eval.x[ev], verbose=0), -1) == data.eval.y[ev]))
    assert acc > 0.9
    assert all(layer.trainable for layer in handle.keras_model.layers)  # source untouched


def test_fp16(handle, ctx, data, workdir, baseline) -> None:  # type: ignore[no-untyped-def]
    out = PASSES["fp16"].run(handle, {}, ctx)
    model = out.keras_model
    dtypes = {w.name: w.dtype.name for w in model.weights}
    assert [d for n, d in dtypes.items() if "probs" not in n] == ["float16"] * 4
    assert all(d == "float32" for n, d in dtypes.items() if "probs" in n)
    pred = model.predict(data.eval.x[:50], verbose=0)
    assert pred.dtype == np.float32 and model.inputs[0].dtype.name == "float32"
    np.testing.assert_allclose(pred, handle.keras_model.predict(data.eval.x[:50], verbose=0), atol=1e-2)
    record("fp16 (keras)", out, data, workdir, baseline)
    import tensorflow as tf

    path, _ = modelio.export_handle(out, workdir / "fp16_export")
    with zipfile.ZipFile(path) as zf:
        zf.extractall(workdir / "fp16_sm")
    sig = tf.saved_model.load(str(workdir / "fp16_sm")).signatures["serving_default"]
    assert sig.structured_input_signature[1]["pixels"].dtype == tf.float32
    assert sig.structured_outputs["probs"].dtype == tf.float32
    mixed = PASSES["fp16"].run(handle, {"mode": "mixed_float16"}, ctx)
    assert mixed.keras_model.layers[0].compute_dtype == "float16"
    assert mixed.keras_model.layers[-1].compute_dtype == "float32"


# ----------------------------------------------------------------------------- cancellation & io


def test_cancellation_after_first_epoch(handle, data, workdir) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    cctx = tiny.ctx_for(data, workdir, progress=lambda f, m: seen.append(m),
                        is_cancelled=lambda: any("epoch 1/" in m for m in seen))
    for name in ("prune", "distill"):
        seen.clear()
        with pytest.raises(Cancelled):
            PASSES[name].run(handle, {"epochs": 3}, cctx)
        assert not any("epoch 2/" in m for m in seen), name


def test_modelio_round_trip_keras(handle, data, workdir) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    path, fmt = modelio.export_handle(handle, workdir / "export_keras")
    assert (path.name, fmt) == ("model.zip", "saved_model")
    unpacked = workdir / "unpacked"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names == sorted(names) and "saved_model.pb" in names
        assert {i.date_time for i in zf.infolist()} == {modelio.ZIP_DATE}
        zf.extractall(unpacked)
    sig = tf.saved_model.load(str(unpacked)).signatures["serving_default"]
    assert list(sig.structured_input_signature[1]) == ["pixels"]
    assert list(sig.structured_outputs) == ["probs"]
    loaded = modelio.load_handle(unpacked, "saved_model")
    assert loaded.kind == "keras" and loaded.saved_model_dir == unpacked
    np.testing.assert_allclose(loaded.keras_model.predict(data.eval.x, verbose=0),
                               handle.keras_model.predict(data.eval.x, verbose=0), rtol=1e-5, atol=1e-6)
    # zips are deterministic for the same directory
    a = modelio.zip_dir(unpacked, workdir / "a.zip").read_bytes()
    time.sleep(1.1)
    assert modelio.zip_dir(unpacked, workdir / "b.zip").read_bytes() == a


def test_modelio_h5_and_tflite(handle, ctx, data, workdir) -> None:  # type: ignore[no-untyped-def]
    h5 = workdir / "m.h5"
    handle.keras_model.save(h5)
    loaded = modelio.load_handle(h5, "keras")
    np.testing.assert_allclose(loaded.keras_model.predict(data.eval.x[:20], verbose=0),
                               handle.keras_model.predict(data.eval.x[:20], verbose=0), rtol=1e-5)
    tfl = PASSES["ptq_dynamic"].run(handle, {}, ctx)
    path, fmt = modelio.export_handle(tfl, workdir / "export_tfl")
    assert (path.name, fmt) == ("model.tflite", "tflite")
    back = modelio.load_handle(path, "tflite")
    assert back.kind == "tflite" and back.tflite_bytes == tfl.tflite_bytes
    np.testing.assert_allclose(tiny.predict(back, data.eval.x[:20]), tiny.predict(tfl, data.eval.x[:20]))
    with pytest.raises(PassError, match="not a SavedModel directory"):
        modelio.load_handle(workdir, "saved_model")
    assert gzip  # (used by tiny.gzipped_size)
