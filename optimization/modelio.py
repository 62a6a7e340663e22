"""Load a registered artifact into a ModelHandle, and export a handle as an artifact (no Django).

Formats: "saved_model" (an unpacked SavedModel directory; zipped on export), "keras" (.keras/.h5),
"tflite" (a flatbuffer file).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .passes.base import ModelHandle, PassError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def load_handle(path: Path, fmt: str) -> ModelHandle:
    path = Path(path)
    if fmt == "tflite":
        return ModelHandle(kind="tflite", tflite_bytes=path.read_bytes())
    import tf_keras

    if fmt in ("keras", "h5"):
        try:
            model = tf_keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise PassError(f"cannot load {path.name} as a tf_keras (Keras 2) model: {exc}. A model "
                            "saved by Keras 3 must be re-saved with tf_keras (or as a SavedModel) "
                            "before it can be optimized") from exc
        return ModelHandle(kind="keras", keras_model=model)
    if fmt == "saved_model":
        if not (path / "saved_model.pb").exists():
            raise PassError(f"{path} is not a SavedModel directory (no saved_model.pb)")
        if (path / "keras_metadata.pb").exists():
            try:
                model = tf_keras.models.load_model(str(path), compile=False)
                return ModelHandle(kind="keras", keras_model=model, saved_model_dir=path)
            except Exception as exc:  # keep going as a plain SavedModel: PTQ still works
                return ModelHandle(kind="saved_model", saved_model_dir=path, notes=[
                    f"keras_metadata.pb present but tf_keras could not load it ({exc}); "
                    "treated as a plain SavedModel"])
        return ModelHandle(kind="saved_model", saved_model_dir=path)
    raise PassError(f"unknown model format {fmt!r} (expected saved_model, keras or tflite)")


def zip_dir(src: Path, dest: Path) -> Path:
    """Zip a directory deterministically: sorted entries, fixed timestamps and permissions."""
    src, dest = Path(src), Path(dest)
    entries = sorted(p for p in src.rglob("*"))
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in entries:
            rel = p.relative_to(src).as_posix()
            if p.is_dir():
                info = zipfile.ZipInfo(rel + "/", date_time=ZIP_DATE)
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info = zipfile.ZipInfo(rel, date_time=ZIP_DATE)
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, p.read_bytes())
    return dest


def save_keras_as_saved_model(model, dest: Path) -> Path:  # type: ignore[no-untyped-def]
    """SavedModel with a serving_default signature whose inputs are named after the Keras input
    layers (what TF Serving exposes) and whose outputs are named after the output layers."""
    import tensorflow as tf

    dest = Path(dest)
    model.save(str(dest), save_format="tf", include_optimizer=False)
    loaded = tf.saved_model.load(str(dest))
    sig = loaded.signatures.get("serving_default")
    expected = [t._keras_history.layer.name for t in model.inputs]  # noqa: SLF001
    got = sorted(sig.structured_input_signature[1]) if sig is not None else []
    if sig is None or got != sorted(expected):
        # Re-save with an explicit signature keyed by the input layer names.
        specs = {name: tf.TensorSpec(t.shape, t.dtype, name=name)
                 for name, t in zip(expected, model.inputs, strict=True)}

        @tf.function(input_signature=[specs])
        def serve(inputs):  # type: ignore[no-untyped-def]
            args = [inputs[n] for n in expected]
            out = model(args[0] if len(args) == 1 else args, training=False)
            names = model.output_names
            outs = out if isinstance(out, (list, tuple)) else [out]
            return dict(zip(names, outs, strict=True))

        shutil.rmtree(dest)
        model.save(str(dest), save_format="tf", include_optimizer=False,
                   signatures={"serving_default": serve})
    return dest


def export_handle(handle: ModelHandle, dest_dir: Path) -> tuple[Path, str]:
    """Write the handle's primary form into dest_dir; return (file to register, its format)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if handle.kind == "tflite":
        if not handle.tflite_bytes:
            raise PassError("the TFLite handle has no bytes")
        out = dest_dir / "model.tflite"
        out.write_bytes(handle.tflite_bytes)
        return out, "tflite"
    if handle.kind == "keras":
        if handle.keras_model is None:
            raise PassError("the Keras handle has no model")
        with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
            sm = save_keras_as_saved_model(handle.keras_model, Path(tmp) / "saved_model")
            return zip_dir(sm, dest_dir / "model.zip"), "saved_model"
    if handle.kind == "saved_model":
        if handle.saved_model_dir is None or not Path(handle.saved_model_dir).is_dir():
            raise PassError("the SavedModel handle has no directory")
        return zip_dir(Path(handle.saved_model_dir), dest_dir / "model.zip"), "saved_model"
    raise PassError(f"cannot export a handle of kind {handle.kind!r}")
