"""Read what an uploaded artifact is — format, serving signature, framework versions — by
unpacking it privately and loading it, before anything is registered.

Two halves. ``inspect_artifact`` runs in the calling (web) process: it checks the file name,
makes a private work directory, and hands the job to a warm inspector process
(``registry/inspector.py``); it never imports TensorFlow (nothing at this module's top level
does: TensorFlow, tf_keras and h5py are imported inside the readers; tests/test_web_process.py
checks a web worker after uploads of every format). ``inspect_here`` and the readers below it run
only inside that inspector (``registry/inspect_worker.py``), where a crash, a runaway allocation
or an endless load costs the inspector, not the server.
"""
from __future__ import annotations

import json
import lzma
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings

from registry import archives, errors, inspector
from registry.errors import CorruptArtifact, InvalidModel, RegistryError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TFLITE_IDENTIFIER = b"TFL3"
PREDICT_METHOD = "tensorflow/serving/predict"

SUFFIX_FORMATS: list[tuple[str, str, str]] = [
    # (file name suffix, format, container)
    (".tar.gz", "saved_model", "tar"),
    (".tgz", "saved_model", "tar"),
    (".zip", "saved_model", "zip"),
    (".keras", "keras", "keras"),
    (".h5", "keras", "h5"),
    (".tflite", "tflite", "tflite"),
]


@dataclass
class Inspection:
    format: str
    signature: dict[str, Any]
    framework: dict[str, Any] = field(default_factory=dict)


def detect_container(filename: str) -> tuple[str, str]:
    lower = filename.lower()
    for suffix, fmt, container in SUFFIX_FORMATS:
        if lower.endswith(suffix):
            return fmt, container
    allowed = ", ".join(s for s, _, _ in SUFFIX_FORMATS)
    raise RegistryError(
        f"Cannot tell the model format of {filename!r}: the file name must end with one of {allowed}.",
        code="unknown_format",
    )


ARCHIVE_CONTAINERS = ("zip", "tar")


@contextmanager
def private_workdir() -> Iterator[Path]:
    """A 0700 directory inside the storage root's tmp/, removed whatever happens (the web process
    owns it, so it goes even when the inspector that unpacked into it was killed)."""
    root = Path(settings.FILE_UPLOAD_TEMP_DIR)
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="inspect-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def inspect_artifact(path: Path, filename: str) -> Inspection:
    """Inspect ``path`` (uploaded as ``filename``) in a warm inspector process.

    Raises the artifact's own RegistryError (corrupt, unsafe, not a model...) or InspectionFailed
    (422) when the inspector crashed or hit its memory or time limit."""
    _fmt, container = detect_container(filename)  # an unknown suffix needs no inspector
    # Only an archive is unpacked: a single file (.tflite, .keras, .h5) is read where it is
    # staged, without a work directory to make and remove.
    with private_workdir() if container in ARCHIVE_CONTAINERS else nullcontext(None) as workdir:
        reply = inspector.run(job_request(path, filename, workdir), filename)
    if "error" in reply:
        cls = getattr(errors, reply["error"]["class"], RegistryError)
        if not (isinstance(cls, type) and issubclass(cls, RegistryError)):
            cls = RegistryError
        raise cls(reply["error"]["message"], code=reply["error"]["code"])
    return Inspection(**reply["inspection"])


def job_request(path: Path, filename: str, workdir: Path | None) -> dict[str, Any]:
    """What the inspector needs for one artifact: the file, a work directory (archives), the limits."""
    return {"path": str(path), "filename": filename, "workdir": str(workdir) if workdir else "",
            "limits": asdict(archives.Limits.from_settings()),
            "memory_bytes": settings.INSPECT_MEMORY_MB * 1024 * 1024,
            # A backstop for the web process's own timer, in CPU seconds (TensorFlow may use
            # every core): it stops a job even if nobody is waiting for it any more.
            "cpu_seconds": settings.INSPECT_TIMEOUT * (os.cpu_count() or 1) + 30}


def inspect_here(path: Path, filename: str, *, workdir: Path | None, limits: archives.Limits) -> Inspection:
    """Unpack and load the artifact in this process: only ever called inside the inspector."""
    fmt, container = detect_container(filename)
    if container in ARCHIVE_CONTAINERS:
        if workdir is None:
            raise ValueError(f"{filename}: an archive needs a work directory to unpack into")
        unpacked = workdir / "unpacked"
        if container == "zip":
            return inspect_saved_model_zip(path, unpacked, limits)
        unpacked.mkdir()
        # A compressed stream is read once, in order: members cannot be chosen before they pass.
        archives.extract(path, unpacked, container, limits)
        return inspect_saved_model_dir(find_saved_model_root(unpacked))
    if container in ("keras", "h5"):
        return inspect_keras(path, container)
    return inspect_tflite(path)


# --- SavedModel ------------------------------------------------------------------------------

NOT_A_SAVED_MODEL = ("The archive has no saved_model.pb at its root or inside a single top-level directory: "
                     "it is not a SavedModel. Archive the directory written by tf.saved_model.save().")


def saved_model_root_among(children: list[str], holds_pb: Callable[[str], bool]) -> str | None:
    """Where saved_model.pb is: "" (the archive root), the single top-level folder's name, or None.
    ``children``: names at the top of the archive; ``holds_pb(name)``: that folder ("" for the
    root) directly holds a saved_model.pb file."""
    if holds_pb(""):
        return ""
    children = [c for c in children if not c.startswith("__MACOSX")]
    return children[0] if len(children) == 1 and holds_pb(children[0]) else None


def find_saved_model_root(unpacked: Path) -> Path:
    """The directory holding saved_model.pb: the archive root, or its single top-level folder."""
    root = saved_model_root_among([c.name for c in unpacked.iterdir()],
                                  lambda name: (unpacked / name / "saved_model.pb").is_file())
    if root is None:
        raise InvalidModel(NOT_A_SAVED_MODEL)
    return unpacked / root


def inspect_saved_model_zip(path: Path, unpacked: Path, limits: archives.Limits) -> Inspection:
    """Unpack what loading the SavedModel reads, then load it.

    Everything is written except the files of ``assets/`` the graph does not name (its
    ``asset_file_def``): TensorFlow never opens those, and they can be most of the archive. They
    are still read through (CRC and bomb budget, ``ZipMembers.verify_rest``), so the archive is
    accepted or refused exactly as if it had been unpacked whole."""
    unpacked.mkdir()
    with archives.open_zip(path, limits) as members:
        files = members.files()
        root = saved_model_root_among(members.top_level(),
                                      lambda name: PurePosixPath(name, "saved_model.pb") in files)
        assets = PurePosixPath(root or "", "assets")
        members.write(unpacked, lambda rel: root is None or assets not in rel.parents)
        if root is None:
            raise InvalidModel(NOT_A_SAVED_MODEL)
        proto = read_saved_model_pb(unpacked / root)
        named = {assets / name for name in asset_files(proto)}
        signatures = signature_from_saved_model_pb(proto)
        del proto  # may be large; not needed while TensorFlow loads the model
        members.write(unpacked, lambda rel: rel in named)
        members.verify_rest()
    return inspect_saved_model_dir(unpacked / root, signatures)


def asset_files(proto: Any) -> set[str]:
    """The files under assets/ that a SavedModel's graphs may open (TF2's ``asset_file_def``, and
    the ``saved_model_assets`` collection older TF1 exports also list them in)."""
    from tensorflow.core.protobuf import meta_graph_pb2

    names = set()
    for meta in proto.meta_graphs:
        names.update(a.filename for a in meta.asset_file_def)
        if "saved_model_assets" not in meta.collection_def:  # (reading a missing key would add it)
            continue
        for packed in meta.collection_def["saved_model_assets"].any_list.value:
            asset = meta_graph_pb2.AssetFileDef()
            if packed.Unpack(asset):
                names.add(asset.filename)
    return names


def _tensor_info(info: Any) -> dict[str, Any]:
    from tensorflow.python.framework import dtypes

    dims = None if info.tensor_shape.unknown_rank else [
        None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim
    ]
    return {"dtype": dtypes.as_dtype(info.dtype).name, "shape": dims}


def read_saved_model_pb(model_dir: Path) -> Any:
    """saved_model.pb parsed (a ``SavedModel`` message with at least one MetaGraph)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((model_dir / "saved_model.pb").read_bytes())
    except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass
        raise CorruptArtifact(f"saved_model.pb cannot be parsed: {exc}") from exc
    if not proto.meta_graphs:
        raise InvalidModel("saved_model.pb holds no MetaGraph.")
    return proto


def signature_from_saved_model_pb(proto: Any) -> tuple[dict[str, Any], str]:
    """Every SignatureDef of a parsed saved_model.pb (the same data TF Serving's metadata shows)."""
    meta = proto.meta_graphs[0]
    signatures = {}
    for key, sig in sorted(meta.signature_def.items()):
        if key.startswith("__"):  # e.g. __saved_model_init_op
            continue
        signatures[key] = {
            "method": sig.method_name,
            "inputs": [{"name": n, **_tensor_info(t)} for n, t in sorted(sig.inputs.items())],
            "outputs": [{"name": n, **_tensor_info(t)} for n, t in sorted(sig.outputs.items())],
        }
    return signatures, meta.meta_info_def.tensorflow_version


def inspect_saved_model_dir(model_dir: Path, read: tuple[dict[str, Any], str] | None = None) -> Inspection:
    """``read``: what ``signature_from_saved_model_pb`` found, when saved_model.pb was parsed already."""
    import tensorflow as tf

    signatures, written_with = read or signature_from_saved_model_pb(read_saved_model_pb(model_dir))
    if "serving_default" not in signatures:
        raise InvalidModel(
            "The SavedModel has no 'serving_default' signature, so TF Serving could not serve it. "
            f"Signatures found: {sorted(signatures) or 'none'}."
        )
    try:
        tf.saved_model.load(str(model_dir))
    except Exception as exc:
        raise InvalidModel(f"TensorFlow could not load the SavedModel: {_short(exc)}") from exc
    return Inspection(
        format="saved_model",
        signature=_signature_doc("serving_default", signatures),
        framework={"tensorflow": written_with or None, "inspected_with_tensorflow": tf.__version__,
                   # Written by tf_keras (model.save): it reloads as a Keras model, so training-based
                   # optimizations (prune, cluster, QAT, distill) can apply to it.
                   "keras_saved_model": (model_dir / "keras_metadata.pb").is_file()},
    )


def _signature_doc(default_key: str, signatures: dict[str, Any]) -> dict[str, Any]:
    default = signatures[default_key]
    return {"name": default_key, **default, "all": signatures}


# --- Keras (tf_keras) ------------------------------------------------------------------------

def read_keras_config(path: Path, container: str) -> dict[str, Any]:
    """The model's architecture as JSON, read without deserializing (or running) anything."""
    try:
        if container == "h5":
            with open(path, "rb") as fh:
                if fh.read(8) != HDF5_MAGIC:
                    raise CorruptArtifact("The .h5 file is not an HDF5 file (wrong signature bytes).")
            import h5py

            with h5py.File(path, "r") as h5:
                raw = h5.attrs.get("model_config")
                if raw is None:
                    raise InvalidModel("The .h5 file holds no model_config: it is weights only, not a model.")
                return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("config.json"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError, RuntimeError, zlib.error,
            lzma.LZMAError) as exc:
        # ValueError: bad JSON or UTF-8; TypeError: config not a string; RuntimeError: encrypted zip
        raise CorruptArtifact(f"The Keras file is corrupt or not a Keras model: {_short(exc)}") from exc


def find_layer_classes(config: Any, wanted: str) -> list[str]:
    """Names of every layer of class ``wanted`` anywhere in a (nested) Keras config."""
    found: list[str] = []
    if isinstance(config, dict):
        if config.get("class_name") == wanted:
            found.append(str(config.get("config", {}).get("name", wanted)))
        for value in config.values():
            found.extend(find_layer_classes(value, wanted))
    elif isinstance(config, list):
        for item in config:
            found.extend(find_layer_classes(item, wanted))
    return found


def inspect_keras(path: Path, container: str) -> Inspection:
    config = read_keras_config(path, container)
    lambdas = find_layer_classes(config, "Lambda")
    if lambdas:
        raise InvalidModel(
            f"The model contains Lambda layer(s) {', '.join(lambdas)}. Loading a Lambda layer runs "
            "Python code stored in the file, so Modelyard refuses it. Replace the Lambda with a "
            "built-in layer, or upload a SavedModel export instead."
        )
    import tensorflow as tf
    import tf_keras

    try:
        model = tf_keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise InvalidModel(f"tf_keras could not load the model: {_short(exc)}") from exc

    def spec(t: Any) -> dict[str, Any]:
        return {"name": t.name.split(":")[0], "dtype": t.dtype.name,
                "shape": None if t.shape.rank is None else list(t.shape.as_list())}
    signatures = {"serving_default": {"method": PREDICT_METHOD,
                                      "inputs": [spec(t) for t in model.inputs],
                                      "outputs": [spec(t) for t in model.outputs]}}
    keras_version = config.get("keras_version") if isinstance(config, dict) else None
    return Inspection(
        format="keras",
        signature=_signature_doc("serving_default", signatures),
        framework={"keras": keras_version or tf_keras.__version__, "inspected_with_tensorflow": tf.__version__},
    )


# --- TFLite ----------------------------------------------------------------------------------

def inspect_tflite(path: Path) -> Inspection:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise CorruptArtifact("The file is not a TFLite flatbuffer (missing the 'TFL3' identifier).")
    import tensorflow as tf

    try:
        interpreter = tf.lite.Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    except Exception as exc:
        raise InvalidModel(f"The TFLite interpreter could not load the model: {_short(exc)}") from exc

    def spec(d: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        shape = [None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])]
        out = {"name": name or d["name"], "dtype": tf.as_dtype(d["dtype"]).name, "shape": shape}
        scale, zero = d.get("quantization", (0.0, 0))
        if scale:
            out["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
        return out

    signatures: dict[str, Any] = {}
    for key, sig in interpreter.get_signature_list().items():
        runner = interpreter.get_signature_runner(key)
        ins, outs = runner.get_input_details(), runner.get_output_details()
        signatures[key] = {"method": PREDICT_METHOD,
                           "inputs": [spec(d, n) for n, d in sorted(ins.items())],
                           "outputs": [spec(d, n) for n, d in sorted(outs.items())]}
    if not signatures:  # converted without signatures: use the raw tensors
        signatures["serving_default"] = {
            "method": PREDICT_METHOD,
            "inputs": [spec(d) for d in interpreter.get_input_details()],
            "outputs": [spec(d) for d in interpreter.get_output_details()],
        }
    key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    return Inspection(format="tflite", signature=_signature_doc(key, signatures),
                      framework={"inspected_with_tensorflow": tf.__version__})


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]
