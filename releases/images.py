"""Serving images for releases: a deterministic Docker build context, build, push, verify.

Django-free: the Release services pass everything in (an ``ImageSpec``) and get plain values
back (``BuiltImage``, a repo digest) or an ``ImageBuildError`` whose ``retryable`` flag says
whether the same call may succeed later (engine/registry down) or needs a change first (bad
spec, missing base image).

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

import functools
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import docker
import requests

from releases.errors import DockerEngineError

MODELS_ROOT = "/models"
MODELS_CONFIG = "models.config"
BATCHING_FILE = "batching_parameters.txt"
WARMUP_RELATIVE_PATH = "assets.extra/tf_serving_warmup_requests"
CONTEXT_MTIME = 0
BASE_IMAGE_SETTING = "MODELYARD_SERVING_BASE_IMAGE"
STANDIN_ENTRYPOINT = "/usr/bin/tf_serving_entrypoint.sh"
BUILD_TIMEOUT_SECONDS = 3600  # per read of the build stream: COPY of a big model prints nothing

_SLUG = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_VERSION_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
BATCHING_KEYS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                 "num_batch_threads", "allowed_batch_sizes")

LogFn = Callable[[str], None]


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


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    tag_ref: str
    size: int
    context_sha256: str
    layers: tuple[str, ...] = ()  # RootFS.Layers (diff ids), base image first
    cache_hits: int = 0  # build steps answered "Using cache"


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


@functools.cache
def batching_parameters_class() -> Any:
    """``tensorflow.serving.BatchingParameters``, declared from session_bundle_config.proto (same
    package, names, field numbers and types; see ``releases.protos``). tensorflow-serving-api does
    not ship its generated module, and one that did would import TensorFlow's protos: endpoint
    profiles are checked in web processes, which never import TensorFlow."""
    from releases import protos

    fdp = protos.new_file("tensorflow_serving/servables/tensorflow/session_bundle_config.proto", wrappers=True)
    msg = fdp.message_type.add(name="BatchingParameters")
    F = protos.Field
    for name, number, wrapper in (("max_batch_size", 1, "Int64Value"),
                                  ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"),
                                  ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue")):
        protos.add_field(msg, name, number, F.TYPE_MESSAGE, type_name=f".google.protobuf.{wrapper}")
    protos.add_field(msg, "allowed_batch_sizes", 6, F.TYPE_INT64, repeated=True)
    protos.add_field(msg, "pad_variable_length_inputs", 7, F.TYPE_BOOL)
    return protos.message_classes(fdp)["BatchingParameters"]


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
        "# Generated by Modelyard (releases/images.py) - do not edit.",
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


def _tarinfo(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
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
        from . import warmup

        try:
            records = warmup.build_prediction_logs(spec.model_name, spec.warmup_requests)
        except warmup.WarmupError as exc:
            raise ImageBuildError(f"Invalid warmup requests: {exc}") from exc
        generated[f"{version_prefix}/{WARMUP_RELATIVE_PATH}"] = _tfrecord(records)
        entries.setdefault(f"{version_prefix}/assets.extra", None)
    entries.update(generated)
    return entries


def _write_context(entries: Mapping[str, Path | bytes | None], dest: Any) -> str:
    writer = _HashingWriter(dest)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for name in sorted(entries):
            source = entries[name]
            if source is None:
                tar.addfile(_tarinfo(name, tarfile.DIRTYPE))
            elif isinstance(source, bytes):
                tar.addfile(_tarinfo(name, tarfile.REGTYPE, len(source)), io.BytesIO(source))
            else:
                with open(source, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    tar.addfile(_tarinfo(name, tarfile.REGTYPE, size), fh)
    writer.flush()
    return writer.sha.hexdigest()


def build_context(spec: ImageSpec, dest: BinaryIO) -> str:
    """Write the build context tar for ``spec`` to ``dest``; return its sha256 (hex).

    Streams the model files (never holds them in memory). Same spec -> same bytes."""
    return _write_context(context_entries(spec), dest)


class _Aborted(Exception):
    pass


class _ContextStream:
    """The context tar produced by a thread and consumed as an iterator of ~1 MiB chunks (the
    request body, sent chunked): no temporary copy of the model on disk, bounded memory
    (``depth`` chunks), and large writes to the engine's socket."""

    _END = object()

    def __init__(self, entries: Mapping[str, Path | bytes | None], chunk: int = 1 << 20, depth: int = 8):
        import queue
        import threading

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
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Aborted

    def __iter__(self) -> Any:
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


def _tfrecord(records: Sequence[bytes]) -> bytes:
    """TFRecord framing, written by TensorFlow's own writer (masked CRC32C)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="modelyard-warmup-") as tmp:
        path = os.path.join(tmp, "warmup")
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
        with open(path, "rb") as fh:
            return fh.read()


# --------------------------------------------------------------------------------------------
# Docker engine


def _api(client: Any) -> Any:
    """The low-level APIClient of a DockerClient, or the APIClient itself."""
    return getattr(client, "api", client)


_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def engine_address(client: Any) -> str:
    api = _api(client)
    adapter = getattr(api, "_custom_adapter", None)
    socket_path = getattr(adapter, "socket_path", None)
    if socket_path:
        return f"unix://{socket_path}"
    base = getattr(api, "base_url", "") or ""
    if base and not base.startswith("http+docker://"):
        return base
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _is_connection_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError,
                            FileNotFoundError)):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


E = TypeVar("E", bound=Exception)


def engine_error(client: Any, exc: BaseException, doing: str, error: Callable[..., E], *,
                 permanent: tuple[str, ...] = ()) -> E:
    """Translate a docker SDK failure into ``error(message, retryable=...)``: the engine being
    unreachable and its 5xx answers are retryable, except 5xx whose text holds one of
    ``permanent`` (e.g. no GPU driver: retrying will not help)."""
    if _is_connection_error(exc) or (isinstance(exc, docker.errors.DockerException)
                                     and "Error while fetching server API version" in str(exc)):
        return error(f"Docker engine unreachable at {engine_address(client)} while "
                     f"{doing}: is dockerd running and its socket accessible?", retryable=True)
    if isinstance(exc, docker.errors.APIError):
        status = getattr(exc, "status_code", None) or 0
        text = str(exc.explanation or exc)
        return error(f"Docker engine refused {doing}: {text}",
                     retryable=status >= 500 and not any(p in text for p in permanent))
    return error(f"Docker error while {doing}: {exc}", retryable=True)


def _engine_error(client: Any, exc: BaseException, doing: str) -> ImageBuildError:
    return engine_error(client, exc, doing, ImageBuildError)


_STEP = re.compile(r"^Step (\d+)/(\d+) : (\S+)")
_TRANSIENT = ("dial tcp", "i/o timeout", "connection refused", "connection reset", "tls handshake",
              "temporary failure", "no such host", "timeout")


def build_image(spec: ImageSpec, *, client: Any, on_log: LogFn,
                nocache: bool = False, timeout: int = BUILD_TIMEOUT_SECONDS) -> BuiltImage:
    """Build ``spec`` on the engine behind ``client``; every build-stream line goes to ``on_log``.

    The context is produced by a thread while it is sent (chunked, ~1 MiB writes): no temporary
    copy of the model on disk and bounded memory. Every build-stream line goes to ``on_log``."""
    api = _api(client)
    entries = context_entries(spec)  # refuses a bad spec before the engine is contacted
    context = _ContextStream(entries)
    on_log(f"build context -> {spec.image_ref}")
    image_id = None
    step = None
    cache_hits = 0
    try:
        stream = api.build(fileobj=context, custom_context=True, encoding=None, tag=spec.image_ref,
                           rm=True, forcerm=True, pull=False, decode=True, nocache=nocache,
                           network_mode="none", timeout=timeout)
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = str(chunk.get("error") or detail.get("message") or chunk).strip()
                on_log(f"ERROR: {message}")
                raise _build_failure(spec, step, message)
            text = chunk.get("stream")
            if text is not None:
                for line in text.splitlines():
                    if not line.strip():
                        continue
                    on_log(line)
                    match = _STEP.match(line)
                    if match:
                        step = match.group(3).upper()
                    if "Using cache" in line:
                        cache_hits += 1
                    if line.startswith("Successfully built "):
                        image_id = image_id or line.split()[-1]
                continue
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
                on_log(f"image {image_id}")
                continue
            status = chunk.get("status")
            if status:
                on_log(f"{chunk.get('id', '')}: {status}".lstrip(": "))
    except ImageBuildError:
        raise
    except _ENGINE_ERRORS as exc:
        raise _engine_error(client, exc, f"building {spec.image_ref}") from exc
    finally:
        context.close()
    context_sha = context.sha256 or ""
    on_log(f"build context sha256 {context_sha} ({context.size} bytes)")
    if not image_id:
        raise ImageBuildError(f"Build of {spec.image_ref} ended without an image id", retryable=True)
    try:
        info = api.inspect_image(spec.image_ref)
    except _ENGINE_ERRORS as exc:
        raise _engine_error(client, exc, f"inspecting {spec.image_ref}") from exc
    if not image_id.startswith("sha256:"):
        image_id = info["Id"] if info["Id"].split(":", 1)[-1].startswith(image_id) else image_id
    if info["Id"] != image_id:
        raise ImageBuildError(f"{spec.image_ref} is {info['Id']}, not the image just built "
                              f"({image_id}): a concurrent build retagged it?", retryable=True)
    on_log(f"built {spec.image_ref} {image_id} ({info.get('Size', 0)} bytes)")
    return BuiltImage(image_id=image_id, tag_ref=spec.image_ref, size=int(info.get("Size") or 0),
                      context_sha256=context_sha,
                      layers=tuple((info.get("RootFS") or {}).get("Layers") or ()),
                      cache_hits=cache_hits)


def _build_failure(spec: ImageSpec, step: str | None, message: str) -> ImageBuildError:
    lowered = message.lower()
    base_missing = step == "FROM" or (spec.base_image.split(":")[0].lower() in lowered and any(
        s in lowered for s in ("no such image", "pull access denied", "not found",
                               "manifest unknown", "repository does not exist")))
    if base_missing:
        return ImageBuildError(
            f"Base image {spec.base_image!r} is not available: it must be present in the local "
            f"Docker engine or pullable from its registry (setting {BASE_IMAGE_SETTING}). "
            f"Docker said: {message}",
            retryable=any(s in lowered for s in _TRANSIENT))
    return ImageBuildError(f"Build of {spec.image_ref} failed at {step or 'start'}: {message}",
                           retryable=any(s in lowered for s in _TRANSIENT))


# --------------------------------------------------------------------------------------------
# Registry


def _scrub(text: str, auth: Mapping[str, Any] | None) -> str:
    """Remove any credential material from a message before it is logged or raised."""
    if not auth:
        return text
    import base64

    secrets = [str(v) for k, v in auth.items()
               if k in ("password", "identitytoken", "registrytoken", "auth") and v]
    if auth.get("username") and auth.get("password"):
        secrets.append(base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode())
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def push_image(built: BuiltImage, *, client: Any, auth: Mapping[str, Any] | None = None,
               on_log: LogFn) -> str:
    """Push ``built.tag_ref``; return ``repository@sha256:...`` (the manifest digest).

    ``auth``: ``{"username", "password"}`` (or None: the engine's/config's credentials). It is
    sent in the X-Registry-Auth header only; messages and logs are scrubbed of it."""
    api = _api(client)
    repository, tag = built.tag_ref.rsplit(":", 1)
    digest = None
    last_status: dict[str, str] = {}
    try:
        stream = api.push(repository, tag=tag, stream=True, decode=True,
                          auth_config=dict(auth) if auth else None)
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = _scrub(str(chunk.get("error") or detail.get("message") or chunk).strip(), auth)
                on_log(f"ERROR: {message}")
                raise ImageBuildError(_push_message(built.tag_ref, message), retryable=True)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
                continue
            status = str(chunk.get("status") or "")
            if not status:
                continue
            match = _DIGEST.search(status)
            if match:
                digest = digest or match.group(1)
            layer = chunk.get("id", "")
            if layer and last_status.get(layer) == status:
                continue  # progress ticks of the same layer and status
            last_status[layer] = status
            on_log(_scrub(f"{layer}: {status}" if layer else status, auth))
    except _ENGINE_ERRORS as exc:
        # `from None`: the original exception could carry request details; only the scrubbed text
        error = _engine_error(client, exc, f"pushing {built.tag_ref}")
        raise ImageBuildError(_scrub(error.message, auth), retryable=error.retryable) from None
    if not digest:
        raise ImageBuildError(f"Push of {built.tag_ref} finished without reporting a digest",
                              retryable=True)
    on_log(f"pushed {repository}@{digest}")
    return f"{repository}@{digest}"


def _push_message(ref: str, message: str) -> str:
    registry = ref.split("/", 1)[0]
    lowered = message.lower()
    if "unauthorized" in lowered or "authentication required" in lowered or "denied" in lowered:
        why = "the registry refused the credentials (check the registry username/password)"
    elif any(s in lowered for s in ("connection refused", "dial tcp", "no such host", "timeout",
                                    "connection reset")):
        why = f"registry {registry} is unreachable"
    else:
        why = "the registry refused the push"
    return f"Push of {ref} failed: {why}. Docker said: {message}"


def verify_pushed(repository: str, digest: str, client: Any, *,
                  expected_image_id: str | None = None,
                  auth: Mapping[str, Any] | None = None) -> None:
    """Pull ``repository@digest`` back through the engine and check it is what was pushed:
    the registry serves that manifest digest, and (if given) it resolves to the same image id."""
    api = _api(client)
    if "@" in digest:
        repository, digest = digest.split("@", 1)
    ref = f"{repository}@{digest}"
    pulled_digest = None
    try:
        for chunk in api.pull(repository, tag=digest, stream=True, decode=True,
                              auth_config=dict(auth) if auth else None):
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = _scrub(str(chunk.get("error") or detail.get("message")), auth)
                raise ImageBuildError(f"Pulling {ref} back failed: {message}", retryable=True)
            status = str(chunk.get("status") or "")
            if status.startswith("Digest: "):
                pulled_digest = status.split(": ", 1)[1].strip()
        info = api.inspect_image(ref)
    except ImageBuildError:
        raise
    except docker.errors.APIError as exc:
        status = getattr(exc, "status_code", None) or 0
        raise ImageBuildError(f"Pulling {ref} back failed: {_scrub(str(exc.explanation or exc), auth)}",
                              retryable=status >= 500) from None
    except _ENGINE_ERRORS as exc:
        error = _engine_error(client, exc, f"pulling {ref}")
        raise ImageBuildError(_scrub(error.message, auth), retryable=error.retryable) from None
    if pulled_digest and pulled_digest != digest:
        raise ImageBuildError(f"Registry served {pulled_digest} for {ref}")
    if ref not in (info.get("RepoDigests") or []):
        raise ImageBuildError(f"{ref} is not among the pulled image's digests "
                              f"{info.get('RepoDigests')}")
    if expected_image_id and info["Id"] != expected_image_id:
        raise ImageBuildError(f"{ref} is image {info['Id']}, but {expected_image_id} was pushed")


# --------------------------------------------------------------------------------------------
# Stand-in base image (tests and `make run` only; production uses the real TF Serving image)

STANDIN_APPLETS = ("sh", "ls", "cat", "echo", "env", "find", "sha256sum", "sleep", "test", "true")
STANDIN_SCRIPT = (
    "#!/bin/sh\n"
    "# Modelyard stand-in for tensorflow/serving's entrypoint: prints the command it would run.\n"
    "echo tensorflow_model_server --port=8500 --rest_api_port=8501 "
    "--model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} \"$@\"\n"
)


def standin_rootfs(busybox: str | os.PathLike[str] = "/bin/busybox") -> bytes:
    """A tiny rootfs tar: static busybox, applet symlinks, the fake serving entrypoint."""
    busybox_bytes = Path(busybox).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("bin", "models", "tmp", "usr", "usr/bin"):
            info = _tarinfo(d, tarfile.DIRTYPE)
            if d == "tmp":
                info.mode = 0o1777
            tar.addfile(info)
        info = _tarinfo("bin/busybox", tarfile.REGTYPE, len(busybox_bytes))
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(busybox_bytes))
        for applet in STANDIN_APPLETS:
            link = _tarinfo(f"bin/{applet}", tarfile.SYMTYPE)
            link.linkname = "busybox"
            link.mode = 0o777
            tar.addfile(link)
        script = STANDIN_SCRIPT.encode()
        info = _tarinfo(STANDIN_ENTRYPOINT.lstrip("/"), tarfile.REGTYPE, len(script))
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(script))
    return buf.getvalue()


def ensure_standin_base_image(client: Any, tag: str, *,
                              busybox: str | os.PathLike[str] = "/bin/busybox") -> str:
    """Make sure ``tag`` is the stand-in TF Serving base image; return its image id.

    Imported (``docker import`` semantics) from ``standin_rootfs()`` with the real image's
    ENTRYPOINT/ENV/EXPOSE; reused when ``tag`` already holds the same rootfs (label
    ``io.modelyard.standin-rootfs``)."""
    api = _api(client)
    rootfs = standin_rootfs(busybox)
    fingerprint = hashlib.sha256(rootfs + STANDIN_SCRIPT.encode()).hexdigest()
    try:
        try:
            info = api.inspect_image(tag)
            if ((info.get("Config") or {}).get("Labels") or {}).get("io.modelyard.standin-rootfs") == fingerprint:
                return str(info["Id"])
        except docker.errors.ImageNotFound:
            pass
        repository, _, image_tag = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
        api.import_image_from_data(rootfs, repository=repository, tag=image_tag, changes=[
            f'ENTRYPOINT ["{STANDIN_ENTRYPOINT}"]',
            "ENV MODEL_BASE_PATH=/models MODEL_NAME=model",
            "EXPOSE 8500 8501",
            f"LABEL io.modelyard.standin-rootfs={fingerprint}",
        ])
        return str(api.inspect_image(tag)["Id"])
    except _ENGINE_ERRORS as exc:
        raise _engine_error(client, exc, f"importing the stand-in base image {tag}") from exc
