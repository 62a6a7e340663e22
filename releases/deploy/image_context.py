"""A release's serving image, as files: the ``ImageSpec``, its checks, the generated files and
the deterministic Docker build context. Neither Django nor the Docker engine: ``image_build``
sends this context to an engine, ``image_registry`` pushes and verifies the result.

Every refusal is an ``ImageBuildError`` whose ``retryable`` flag says whether the same call may
succeed later (engine/registry down) or needs a change first (bad spec, missing base image).

The Dockerfile is the TF Serving base image plus, in this order:

1. ``ENV MODEL_NAME=<name>`` - depends on the model name only, so it is cached for every release
   of the model (a metadata step still costs a container commit, so it goes where it is reused);
2. ``COPY models/<name>/<version>/ /models/<name>/<version>/`` - the SavedModel (with the
   generated warmup file in ``assets.extra/``): the big layer;
3. ``COPY models/models.config [models/batching_parameters.txt] /models/`` - the small config
   layer (ModelServerConfig and BatchingParameters text protos);
4. ``CMD [serving flags]`` (depends on the serving profile), then ``LABEL``s (change with every
   release: release id, created, revision): metadata only, last.

Why the model before the config: Docker's build cache is a chain - a step is reused only when
every step before it was - so the layer that is reused is the one that comes first. The two
cases are not symmetric:

* the serving profile (batching, labels, GPU fraction, XLA) can change without the model - a
  re-release of the same version with another profile. Model first: the model layer (GBs for
  real models, and vfs/overlay copies it) is reused and only a few hundred config bytes are
  rewritten. Config first: the whole model would be copied again.
* the model cannot change without the config: versions are immutable, so different model bytes
  mean a new version number, which is both in the model's path and in models.config
  (``specific { versions: N }``, ``version_labels``). Either order rebuilds both layers then. A
  same-version model-only change (tests, a rebuilt warmup file) rebuilds the tiny config layer
  after the model: it costs nothing measurable, and its files are byte-identical, but its layer
  digest is not (the engine stamps the build time on ``/models``, which the COPY modifies).

The context is byte-identical for the same spec: entries sorted, mtime ``CONTEXT_MTIME``,
uid/gid 0, empty user/group names, modes 0644/0755, GNU tar format (no pax headers, so no
atime/ctime records), generated files serialized deterministically. Nothing in the Dockerfile
needs the network (no ``RUN``); the build runs with ``network_mode="none"``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import re
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from releases.errors import DockerEngineError
from serving import batching_params as serving_batching

MODELS_ROOT = "/models"
MODELS_CONFIG = "models.config"
BATCHING_FILE = "batching_parameters.txt"
WARMUP_RELATIVE_PATH = "assets.extra/tf_serving_warmup_requests"
CONTEXT_MTIME = 0
BASE_IMAGE_SETTING = "MODELYARD_SERVING_BASE_IMAGE"

_SLUG = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_VERSION_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
BATCHING_KEYS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                 "num_batch_threads", "allowed_batch_sizes")


class ImageBuildError(DockerEngineError):
    """Building, pushing or verifying an image failed. ``retryable``: the same call may work
    later (engine or registry unreachable, transient registry errors); otherwise the spec or the
    configuration has to change first."""


@dataclass
class ImageSpec:
    model_name: str
    version: int
    release_id: int
    saved_model_dir: Path
    model_sha256: str
    base_image: str
    repository: str
    created: str  # ISO 8601, e.g. the release's approval time: keeps the context deterministic
    tag: str = ""  # default: str(version)
    labels_extra: dict[str, str] = field(default_factory=dict)
    batching: dict[str, Any] | None = None
    gpu_memory_fraction: float | None = None
    xla: bool = False
    prefer_tflite: bool = False
    version_labels: dict[str, int] = field(default_factory=dict)
    warmup_requests: list[Mapping[str, Any]] | None = None
    source_url: str = ""
    revision: str = ""

    def __post_init__(self) -> None:
        self.saved_model_dir = Path(self.saved_model_dir)
        if not self.tag:
            self.tag = str(self.version)

    @property
    def image_ref(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def version_dir(self) -> str:
        return f"{MODELS_ROOT}/{self.model_name}/{self.version}"




# --------------------------------------------------------------------------------------------
# Validation and generated files


def validate_spec(spec: ImageSpec) -> None:
    def bad(msg: str) -> ImageBuildError:
        return ImageBuildError(f"Invalid image spec for {spec.model_name!r} v{spec.version}: {msg}")

    if not isinstance(spec.model_name, str) or not _SLUG.match(spec.model_name):
        raise bad("model_name must be a lowercase slug (a-z, 0-9, '.', '_', '-')")
    if isinstance(spec.version, bool) or not isinstance(spec.version, int) or spec.version < 1:
        raise bad("version must be a positive integer")
    if isinstance(spec.release_id, bool) or not isinstance(spec.release_id, int):
        raise bad("release_id must be an integer")
    if not re.fullmatch(r"[0-9a-f]{64}", spec.model_sha256 or ""):
        raise bad("model_sha256 must be 64 lowercase hex digits")
    if not spec.base_image or any(c.isspace() for c in spec.base_image):
        raise bad(f"base_image {spec.base_image!r} is not an image reference "
                  f"(setting {BASE_IMAGE_SETTING})")
    if not spec.repository or spec.repository != spec.repository.lower() or "@" in spec.repository \
            or any(c.isspace() for c in spec.repository) or spec.repository.rsplit("/", 1)[-1].count(":"):
        raise bad(f"repository {spec.repository!r} must be a lowercase repository name without tag")
    if not _TAG.match(spec.tag):
        raise bad(f"tag {spec.tag!r} is not a valid Docker tag")
    try:
        datetime.fromisoformat(spec.created)
    except (TypeError, ValueError):
        raise bad(f"created {spec.created!r} is not an ISO 8601 timestamp") from None
    for key, value in spec.labels_extra.items():
        if not _LABEL_KEY.match(str(key)):
            raise bad(f"label key {key!r} is not allowed")
        _check_label_value(bad, key, value)
    for key, value in (("source_url", spec.source_url), ("revision", spec.revision),
                       ("created", spec.created)):
        _check_label_value(bad, key, value)
    for label, version in spec.version_labels.items():
        if not _VERSION_LABEL.match(str(label)):
            raise bad(f"version label {label!r} is not a valid label name")
        if version != spec.version:
            raise bad(f"version label {label!r} points to version {version}, but this image only "
                      f"serves version {spec.version}")
    if spec.gpu_memory_fraction is not None:
        f = spec.gpu_memory_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise bad(f"gpu_memory_fraction must be in (0, 1], got {f!r}")
    if spec.batching is not None:
        batching_parameters(spec.batching)  # raises with its own message
    d = spec.saved_model_dir
    if not d.is_dir():
        raise bad(f"saved_model_dir {str(d)!r} is not a directory")
    if not (d / "saved_model.pb").is_file() and not (d / "saved_model.pbtxt").is_file():
        raise bad(f"{str(d)!r} has no saved_model.pb: not an unpacked SavedModel")
    if spec.prefer_tflite and not (d / "model.tflite").is_file():
        raise bad("prefer_tflite is set but the model directory has no model.tflite")


def _check_label_value(bad: Callable[[str], ImageBuildError], key: str, value: Any) -> None:
    if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise bad(f"label {key!r} must be a string without control characters")


def model_server_config_text(spec: ImageSpec) -> str:
    """models.config: a ModelServerConfig text proto serving exactly ``spec.version``."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = spec.model_name
    entry.base_path = f"{MODELS_ROOT}/{spec.model_name}"
    entry.model_platform = "tensorflow"
    entry.model_version_policy.specific.versions.append(spec.version)
    for label in sorted(spec.version_labels):
        entry.version_labels[label] = spec.version_labels[label]
    return text_format.MessageToString(config)


def batching_parameters_class() -> Any:
    """``tensorflow.serving.BatchingParameters``: the serving package's declaration of it (the
    server reads the very file this writes), TensorFlow-free, as endpoint profiles are checked in
    web processes."""
    return serving_batching.batching_parameters_class()


def batching_parameters(batching: Mapping[str, Any]) -> Any:
    """Validate a batching dict and return the BatchingParameters message."""
    def bad(msg: str) -> ImageBuildError:
        return ImageBuildError(f"Invalid batching parameters: {msg}")

    unknown = sorted(set(batching) - set(BATCHING_KEYS))
    if unknown:
        raise bad(f"unknown keys {unknown}; allowed: {list(BATCHING_KEYS)}")
    message = batching_parameters_class()()
    for key in BATCHING_KEYS[:4]:
        value = batching.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "batch_timeout_micros" else 1):
            raise bad(f"{key} must be a {'non-negative' if key == 'batch_timeout_micros' else 'positive'} "
                      f"integer, got {value!r}")
        getattr(message, key).value = value
    sizes = batching.get("allowed_batch_sizes") or []
    if sizes:
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise bad(f"allowed_batch_sizes must be positive integers, got {list(sizes)!r}")
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise bad(f"allowed_batch_sizes must be strictly increasing, got {list(sizes)!r}")
        max_batch = batching.get("max_batch_size")
        if max_batch is None:
            raise bad("allowed_batch_sizes needs max_batch_size (its last entry must equal it)")
        if sizes[-1] != max_batch:
            raise bad(f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                      f"max_batch_size ({max_batch})")
        message.allowed_batch_sizes.extend(sizes)
    return message


def batching_parameters_text(batching: Mapping[str, Any]) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(batching_parameters(batching))


def serving_args(spec: ImageSpec) -> list[str]:
    """Arguments appended to the base image's entrypoint (tensorflow_model_server flags)."""
    args = [f"--model_config_file={MODELS_ROOT}/{MODELS_CONFIG}"]
    if spec.version_labels:
        # Labels in the start-up config name a version that is not loaded yet; TF Serving refuses
        # them without this flag.
        args.append("--allow_version_labels_for_unavailable_models=true")
    if spec.batching is not None:
        args += ["--enable_batching=true", f"--batching_parameters_file={MODELS_ROOT}/{BATCHING_FILE}"]
    if spec.gpu_memory_fraction is not None:
        args.append(f"--per_process_gpu_memory_fraction={float(spec.gpu_memory_fraction)!r}")
    if spec.xla:
        args.append("--xla_gpu_compilation_enabled=true")
    if spec.prefer_tflite:
        args.append("--prefer_tflite_model=true")
    return args


def image_labels(spec: ImageSpec) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.source": spec.source_url,
        "org.opencontainers.image.revision": spec.revision,
        "org.opencontainers.image.created": spec.created,
        "org.opencontainers.image.title": spec.model_name,
        "org.opencontainers.image.version": str(spec.version),
        "io.modelyard.model": spec.model_name,
        "io.modelyard.version": str(spec.version),
        "io.modelyard.model-sha256": spec.model_sha256,
        "io.modelyard.release": str(spec.release_id),
    }
    clash = sorted(set(spec.labels_extra) & set(labels))
    if clash:
        raise ImageBuildError(f"labels_extra may not override {clash}")
    return {**labels, **{str(k): v for k, v in spec.labels_extra.items()}}


def dockerfile_text(spec: ImageSpec) -> str:
    config_files = [f"models/{MODELS_CONFIG}"]
    if spec.batching is not None:
        config_files.append(f"models/{BATCHING_FILE}")
    version_src = f"models/{spec.model_name}/{spec.version}/"
    labels = image_labels(spec)
    label_lines = " \\\n      ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return "\n".join([
        "# Generated by Modelyard (releases/deploy/image_context.py) - do not edit.",
        f"FROM {spec.base_image}",
        f"ENV MODEL_NAME={spec.model_name}",
        "# the model first: serving-profile changes then reuse this (big) layer",
        f"COPY {version_src} {spec.version_dir}/",
        f"COPY {' '.join(config_files)} {MODELS_ROOT}/",
        f"CMD {json.dumps(serving_args(spec))}",
        f"LABEL {label_lines}",
        "",
    ])


# --------------------------------------------------------------------------------------------
# The build context


class _HashingWriter:
    def __init__(self, dest: BinaryIO):
        self.dest = dest
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.dest.write(data)
        return len(data)

    def flush(self) -> None:
        if hasattr(self.dest, "flush"):
            self.dest.flush()


def tar_member(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
    """A tar header with nothing of this machine in it (mtime ``CONTEXT_MTIME``, root, 0644/0755)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mtime = CONTEXT_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _model_entries(spec: ImageSpec, prefix: str) -> dict[str, Path | None]:
    """arcname -> source file (None for directories) for the SavedModel directory."""
    entries: dict[str, Path | None] = {}
    root = spec.saved_model_dir
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ImageBuildError(f"SavedModel directory contains a symlink ({rel}): refused")
            if stat.S_ISDIR(mode):
                entries[f"{prefix}/{rel}"] = None
            elif stat.S_ISREG(mode):
                entries[f"{prefix}/{rel}"] = path
            else:
                raise ImageBuildError(f"SavedModel directory contains a special file ({rel})")
    return entries


def context_entries(spec: ImageSpec) -> dict[str, Path | bytes | None]:
    """Validate ``spec`` and plan the context: tar name -> model file (Path), generated content
    (bytes) or None (a directory). Everything that can refuse the spec happens here, before any
    byte is written or sent."""
    validate_spec(spec)
    generated: dict[str, bytes] = {
        "Dockerfile": dockerfile_text(spec).encode(),
        f"models/{MODELS_CONFIG}": model_server_config_text(spec).encode(),
    }
    if spec.batching is not None:
        generated[f"models/{BATCHING_FILE}"] = batching_parameters_text(spec.batching).encode()
    version_prefix = f"models/{spec.model_name}/{spec.version}"
    entries: dict[str, Path | bytes | None] = {
        "models": None, f"models/{spec.model_name}": None, version_prefix: None}
    entries.update(_model_entries(spec, version_prefix))
    if spec.warmup_requests is not None:
        from releases import warmup

        try:
            records = warmup.build_prediction_logs(spec.model_name, spec.warmup_requests)
        except warmup.WarmupError as exc:
            raise ImageBuildError(f"Invalid warmup requests: {exc}") from exc
        generated[f"{version_prefix}/{WARMUP_RELATIVE_PATH}"] = tfrecord(records)
        entries.setdefault(f"{version_prefix}/assets.extra", None)
    entries.update(generated)
    return entries


def _write_context(entries: Mapping[str, Path | bytes | None], dest: Any) -> str:
    writer = _HashingWriter(dest)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for name in sorted(entries):
            source = entries[name]
            if source is None:
                tar.addfile(tar_member(name, tarfile.DIRTYPE))
            elif isinstance(source, bytes):
                tar.addfile(tar_member(name, tarfile.REGTYPE, len(source)), io.BytesIO(source))
            else:
                with open(source, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    tar.addfile(tar_member(name, tarfile.REGTYPE, size), fh)
    writer.flush()
    return writer.sha.hexdigest()


def build_context(spec: ImageSpec, dest: BinaryIO) -> str:
    """Write the build context tar for ``spec`` to ``dest``; return its sha256 (hex).

    Streams the model files (never holds them in memory). Same spec -> same bytes."""
    return _write_context(context_entries(spec), dest)


class _Aborted(Exception):
    """The consumer closed the stream: the producer thread stops."""


class ContextStream:
    """The context tar produced by a thread and consumed as an iterator of ~1 MiB chunks (the
    request body, sent chunked): no temporary copy of the model on disk, bounded memory
    (``depth`` chunks), and large writes to the engine's socket."""

    _END = object()

    def __init__(self, entries: Mapping[str, Path | bytes | None], chunk: int = 1 << 20, depth: int = 8):
        self._queue: Any = queue.Queue(depth)
        self._chunk = chunk
        self._buf = bytearray()
        self._stop = threading.Event()
        self.sha256: str | None = None
        self.size = 0
        self._thread = threading.Thread(target=self._produce, args=(entries,), daemon=True,
                                        name="modelyard-build-context")
        self._thread.start()

    def _produce(self, entries: Mapping[str, Path | bytes | None]) -> None:
        try:
            self.sha256 = _write_context(entries, self)
            if self._buf:
                self._put(bytes(self._buf))
            self._put(self._END)
        except _Aborted:
            pass
        except BaseException as exc:  # handed to the consumer
            try:
                self._put(exc)
            except _Aborted:
                pass

    def write(self, data: bytes) -> int:
        self._buf += data
        self.size += len(data)
        while len(self._buf) >= self._chunk:
            self._put(bytes(self._buf[:self._chunk]))
            del self._buf[:self._chunk]
        return len(data)

    def flush(self) -> None:
        pass

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Aborted

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise ImageBuildError(f"Could not read the model files for the build context: {item}") from item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def write_context(spec: ImageSpec) -> bytes:
    """The build context as bytes (small models and tests; ``build_context`` streams)."""
    buf = io.BytesIO()
    build_context(spec, buf)
    return buf.getvalue()


def tfrecord(records: Sequence[bytes]) -> bytes:
    """TFRecord framing, written by TensorFlow's own writer (masked CRC32C)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="modelyard-warmup-") as tmp:
        path = os.path.join(tmp, "warmup")
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
        with open(path, "rb") as fh:
            return fh.read()
