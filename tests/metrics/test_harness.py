"""The metrics harness and predictors on tiny real models (sklearn digits), no database.

One module-scoped fixture trains a small classifier and a regressor once and exports them as a
SavedModel directory (+ its .zip), .h5, float / dynamic-range / full-int8 TFLite."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from metrics.harness import measure, parent_reference, sample_io, ParentReference  # noqa: E402
from metrics.predictors import load_predictor  # noqa: E402

RUNS = 10


@dataclass
class Artifacts:
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    model: object
    expected: np.ndarray  # model.predict(x_eval)
    saved_model_dir: Path
    saved_model_zip: Path
    h5: Path
    tflite_float: Path
    tflite_dynamic: Path
    tflite_int8: Path
    regressor_h5: Path
    root: Path


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:1700], y[1400:1700]


def _convert(model, *, dynamic=False, int8=False, representative=None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if dynamic or int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if int8:
        def gen():
            for row in representative[:200]:
                yield [row[None, :]]

        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def _clone(model):
    import tf_keras as keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Artifacts:
    import tensorflow as tf
    import tf_keras as keras

    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("models")
    x_train, y_train, x_eval, y_eval = _digits()

    model = keras.Sequential([
        keras.Input(shape=(64,), name="pixels"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=6, batch_size=64, verbose=0)

    saved = root / "saved_model"
    model.save(str(saved), save_format="tf")
    saved_zip = Path(shutil.make_archive(str(root / "saved_model_upload"), "zip", saved))
    h5 = root / "model.h5"
    model.save(str(h5))
    tfl_float = root / "float.tflite"
    tfl_float.write_bytes(_convert(model))
    tfl_dyn = root / "dynamic.tflite"
    tfl_dyn.write_bytes(_convert(model, dynamic=True))
    tfl_int8 = root / "int8.tflite"
    tfl_int8.write_bytes(_convert(model, int8=True, representative=x_train))

    regressor = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(1)])
    regressor.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    regressor.fit(x_train, y_train.astype(np.float32) / 9.0, epochs=4, batch_size=64, verbose=0)
    reg_h5 = root / "regressor.h5"
    regressor.save(str(reg_h5))

    expected = model.predict(x_eval, verbose=0)
    return Artifacts(x_train, y_train, x_eval, y_eval, model, expected, saved, saved_zip, h5,
                     tfl_float, tfl_dyn, tfl_int8, reg_h5, root)


@pytest.fixture(scope="module")
def parent(art) -> ParentReference:
    metrics, outputs = measure(artifact_path=art.h5, model_dir_or_file=art.h5, fmt="keras",
                               task="classification", eval_x=art.x_eval, eval_y=art.y_eval,
                               parent=None, latency_runs=RUNS)
    return parent_reference(metrics, outputs)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


# ---------------------------------------------------------------------------------- predictors


@pytest.mark.parametrize("which,fmt", [("saved_model_dir", "saved_model"), ("h5", "keras"),
                                       ("tflite_float", "tflite")])
def test_float_predictors_match_model_predict(art, which, fmt):
    predictor = load_predictor(getattr(art, which), fmt)
    assert predictor.input_dtype == np.float32
    got = predictor.predict(art.x_eval)
    assert got.shape == art.expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, art.expected, atol=1e-5)
    # float64 input is cast; odd batch sizes and alternating sizes work
    for n in (1, 7, 32, 1, 300):
        np.testing.assert_allclose(predictor.predict(art.x_eval[:n].astype(np.float64)), art.expected[:n], atol=1e-5)


def test_dynamic_range_tflite_is_close(art):
    got = load_predictor(art.tflite_dynamic, "tflite").predict(art.x_eval)
    assert _agreement(got, art.expected) >= 0.95
    assert np.max(np.abs(got - art.expected)) < 0.2


def test_int8_tflite_quantizes_input_and_dequantizes_output(art):
    predictor = load_predictor(art.tflite_int8, "tflite")
    assert predictor.input_dtype == np.int8
    assert predictor.input_quantization is not None and predictor.output_quantization is not None
    got = predictor.predict(art.x_eval)
    assert got.dtype == np.float32 and got.shape == art.expected.shape
    assert abs(float(got.sum(axis=1).mean()) - 1.0) < 0.05  # dequantized softmax
    assert _agreement(got, art.expected) >= 0.95
    # batch 1 and batch 32 from cached interpreters give the same rows
    np.testing.assert_allclose(predictor.predict(art.x_eval[:1]), got[:1])
    np.testing.assert_allclose(predictor.predict(art.x_eval[:32]), got[:32])


def test_weights_per_format(art):
    keras_count = sum(w.size for w in art.model.get_weights())
    for path, fmt in ((art.h5, "keras"), (art.saved_model_dir, "saved_model"), (art.tflite_float, "tflite")):
        weights = load_predictor(path, fmt).weights()
        assert sum(w.size for w in weights) == keras_count, fmt
        assert all(w.dtype == np.float32 for w in weights)
    # int8: same weights, dequantized (int32 biases included, no shape constants)
    int8_weights = load_predictor(art.tflite_int8, "tflite").weights()
    assert sum(w.size for w in int8_weights) == keras_count
    kernels = [w for w in int8_weights if w.ndim == 2]
    reference = [w for w in art.model.get_weights() if w.ndim == 2]
    assert len(kernels) == len(reference)
    for f in reference:  # TFLite FullyConnected stores kernels as [out, in]
        (q,) = [k for k in kernels if k.shape == f.T.shape]
        np.testing.assert_allclose(q.T, f, atol=float(np.abs(f).max()) / 100)


# ---------------------------------------------------------------------------------- measure


def test_parent_against_itself(art, parent):
    metrics, outputs = measure(artifact_path=art.h5, model_dir_or_file=art.h5, fmt="keras",
                               task="classification", eval_x=art.x_eval, eval_y=art.y_eval,
                               parent=parent, latency_runs=RUNS)
    json.dumps(metrics, allow_nan=False)
    np.testing.assert_array_equal(outputs, parent.outputs)
    assert metrics["agreement"] == 1.0
    assert metrics["kl_divergence"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["accuracy_delta"] == 0.0
    assert metrics["size_ratio"] == metrics["gzipped_ratio"] == metrics["artifact_ratio"] == 1.0
    assert metrics["accuracy"] > 0.85
    assert metrics["mse"] is None and metrics["unique_weight_values"] is None
    assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p95"]
    assert metrics["throughput_per_s"] > 0
    env = metrics["environment"]
    import tensorflow as tf

    assert env["tensorflow_version"] == tf.__version__
    assert env["cpu_count"] >= 1 and env["platform"]


def test_one_hot_labels_give_the_same_accuracy(art, parent):
    one_hot = np.eye(10, dtype=np.float32)[art.y_eval]
    metrics, _ = measure(artifact_path=art.h5, model_dir_or_file=art.h5, fmt="keras", task="classification",
                         eval_x=art.x_eval, eval_y=one_hot, parent=None, latency_runs=2)
    assert metrics["accuracy"] == parent.metrics["accuracy"]


def test_saved_model_gzip_is_deterministic_tar_of_directory(art, parent, tmp_path):
    kwargs = dict(fmt="saved_model", task="classification", eval_x=art.x_eval, eval_y=art.y_eval,
                  parent=parent, latency_runs=2)
    metrics, outputs = measure(artifact_path=art.saved_model_zip, model_dir_or_file=art.saved_model_dir, **kwargs)
    assert metrics["artifact_bytes"] == art.saved_model_zip.stat().st_size
    unpacked = [p for p in art.saved_model_dir.rglob("*") if p.is_file()]
    assert metrics["size_bytes"] == sum(p.stat().st_size for p in unpacked)
    assert metrics["agreement"] == 1.0 and metrics["accuracy_delta"] == pytest.approx(0.0, abs=1e-9)
    # a copy with different mtimes packs to the same gzipped size
    copy = tmp_path / "copy"
    shutil.copytree(art.saved_model_dir, copy)
    for p in copy.rglob("*"):
        os.utime(p, (1_000_000, 1_000_000))
    again, _ = measure(artifact_path=art.saved_model_zip, model_dir_or_file=copy, **kwargs)
    assert again["gzipped_bytes"] == metrics["gzipped_bytes"]
    assert again["size_bytes"] == metrics["size_bytes"]  # the payload, not how it was zipped


def test_int8_tflite_against_float_parent(art, parent):
    metrics, _ = measure(artifact_path=art.tflite_int8, model_dir_or_file=art.tflite_int8, fmt="tflite",
                         task="classification", eval_x=art.x_eval, eval_y=art.y_eval,
                         parent=parent, latency_runs=RUNS)
    json.dumps(metrics, allow_nan=False)
    assert metrics["size_ratio"] > 2 and metrics["gzipped_ratio"] > 2
    assert metrics["agreement"] >= 0.95
    assert 0 <= metrics["kl_divergence"] < 0.05
    assert abs(metrics["accuracy_delta"]) <= 0.03
    assert metrics["input_dtype"] == "int8"


def _zero_half_of_each_kernel(model):
    copy = _clone(model)
    rng = np.random.default_rng(1)
    for layer in copy.layers:
        kernel, bias = layer.get_weights()
        flat = kernel.ravel().copy()
        flat[rng.permutation(flat.size)[: flat.size // 2]] = 0.0
        layer.set_weights([flat.reshape(kernel.shape), bias])
    return copy


def test_sparsity_of_half_zeroed_kernels(art, tmp_path):
    pruned = _zero_half_of_each_kernel(art.model)
    h5 = tmp_path / "pruned.h5"
    pruned.save(str(h5))
    dyn = tmp_path / "pruned_dynamic.tflite"
    dyn.write_bytes(_convert(pruned, dynamic=True))
    kernel_elements = sum(w.size for w in pruned.get_weights() if w.ndim == 2)
    bias_nonzero = sum(int(np.count_nonzero(w)) for w in pruned.get_weights() if w.ndim == 1)
    for path, fmt in ((h5, "keras"), (dyn, "tflite")):
        metrics, _ = measure(artifact_path=path, model_dir_or_file=path, fmt=fmt, task="classification",
                             eval_x=art.x_eval, eval_y=art.y_eval, parent=None, latency_runs=2)
        assert metrics["sparsity"] == pytest.approx(0.5, abs=0.01), fmt
        assert metrics["kernel_parameters"] == kernel_elements
        assert metrics["parameter_count"] == sum(w.size for w in pruned.get_weights())
        expected_nonzero = kernel_elements - kernel_elements // 2 + bias_nonzero
        assert abs(metrics["nonzero_parameters"] - expected_nonzero) <= 0.01 * kernel_elements, fmt


def test_unique_weight_values_with_clusters(art, tmp_path):
    snapped = _clone(art.model)
    for layer in snapped.layers:
        kernel, bias = layer.get_weights()
        centroids = np.quantile(kernel, [0.125, 0.375, 0.625, 0.875]).astype(np.float32)
        nearest = centroids[np.argmin(np.abs(kernel[..., None] - centroids), axis=-1)]
        layer.set_weights([nearest, bias])
    h5 = tmp_path / "clustered.h5"
    snapped.save(str(h5))
    kwargs = dict(artifact_path=h5, model_dir_or_file=h5, fmt="keras", task="classification",
                  eval_x=art.x_eval, eval_y=art.y_eval, parent=None, latency_runs=2)
    metrics, _ = measure(clusters=4, **kwargs)
    assert metrics["unique_weight_values"] <= 4
    without, _ = measure(**kwargs)
    assert without["unique_weight_values"] is None
    original, _ = measure(**{**kwargs, "artifact_path": art.h5, "model_dir_or_file": art.h5}, clusters=4)
    assert original["unique_weight_values"] > 100


def test_regression_metrics(art):
    y = art.y_eval.astype(np.float32) / 9.0
    kwargs = dict(artifact_path=art.regressor_h5, model_dir_or_file=art.regressor_h5, fmt="keras",
                  task="regression", eval_x=art.x_eval, eval_y=y, latency_runs=2)
    metrics, outputs = measure(parent=None, **kwargs)
    pred = outputs.ravel()
    assert metrics["mse"] == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-5)
    assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(pred - y))), rel=1e-5)
    assert metrics["accuracy"] is None and metrics["agreement"] is None and metrics["kl_divergence"] is None
    again, _ = measure(parent=parent_reference(metrics, outputs), **kwargs)
    assert again["mse_delta"] == 0.0 and again["agreement"] is None and again["kl_divergence"] is None
    json.dumps(again, allow_nan=False)


def test_parent_from_another_eval_set_is_refused(art, parent):
    with pytest.raises(ValueError, match="same eval set"):
        measure(artifact_path=art.h5, model_dir_or_file=art.h5, fmt="keras", task="classification",
                eval_x=art.x_eval[:10], eval_y=art.y_eval[:10], parent=parent, latency_runs=1)


def test_parent_reference_round_trip(parent, tmp_path):
    parent.save(tmp_path / "ref.npz")
    loaded = ParentReference.load(tmp_path / "ref.npz")
    assert loaded.metrics == parent.metrics
    np.testing.assert_array_equal(loaded.outputs, parent.outputs)


@pytest.mark.parametrize("which,fmt", [("h5", "keras"), ("saved_model_dir", "saved_model"), ("tflite_int8", "tflite")])
def test_sample_io_outputs_equal_predictor_outputs(art, which, fmt):
    predictor = load_predictor(getattr(art, which), fmt)
    sample = sample_io(predictor, art.x_eval, n=8)
    json.dumps(sample)
    assert len(sample["inputs"]) == 8 and sample["input_name"] and sample["output_name"]
    np.testing.assert_array_equal(np.asarray(sample["outputs"], dtype=np.float32),
                                  predictor.predict(np.asarray(sample["inputs"], dtype=np.float32)))
    np.testing.assert_array_equal(np.asarray(sample["outputs"], dtype=np.float32), predictor.predict(art.x_eval[:8]))
    if fmt == "tflite":
        assert sample["dtype"] == "int8" and sample["input_quantization"]["scale"] > 0
    else:
        assert sample["dtype"] == "float32" and sample["input_quantization"] is None


def test_report_numbers(art, parent, capsys):
    """Not an assertion of speed: prints float vs int8 TFLite numbers for the record (-s to see)."""
    float_ref = None
    rows = []
    for name, path in (("float", art.tflite_float), ("dynamic", art.tflite_dynamic), ("int8", art.tflite_int8)):
        m, out = measure(artifact_path=path, model_dir_or_file=path, fmt="tflite", task="classification",
                         eval_x=art.x_eval, eval_y=art.y_eval, parent=float_ref, latency_runs=RUNS)
        if float_ref is None:
            float_ref = parent_reference(m, out)
        rows.append((name, m))
    with capsys.disabled():
        print(f"\nh5 parent: size={parent.metrics['size_bytes']} gz={parent.metrics['gzipped_bytes']} "
              f"acc={parent.metrics['accuracy']:.4f} p50={parent.metrics['latency_ms_p50']:.3f}ms")
        for name, m in rows:
            print(f"tflite {name}: size={m['size_bytes']} gz={m['gzipped_bytes']} acc={m['accuracy']:.4f} "
                  f"ratio={m['size_ratio']} agree={m['agreement']} kl={m['kl_divergence']} "
                  f"p50={m['latency_ms_p50']:.4f}ms p95={m['latency_ms_p95']:.4f}ms "
                  f"thr={m['throughput_per_s']:.0f}/s")
    assert rows[2][1]["size_ratio"] > 2  # int8 vs float TFLite (biases stay int32, plus flatbuffer overhead)
