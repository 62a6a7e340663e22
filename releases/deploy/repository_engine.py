"""Promotion engine: put a SavedModel version on a TF Serving endpoint without ever dropping traffic.

Django-free. The Release/Endpoint services call these functions; everything they do to the server
goes through TF Serving's public protocol (releases.tfserving) plus the model repository and the
`models.config` file the server reads.

The rules it follows (see /work/shared/reference/tf-serving.md):

* A version is published by copying it to `<base>/<model>/.tmp-<version>-<random>` (saved_model.pb
  last), fsyncing files and directories, then `rename()` to `<base>/<model>/<version>`. A version
  directory is never overwritten; re-staging identical content is a no-op (idempotent).
* Every config change is written to `models.config` atomically (temp file + fsync + rename) AND sent
  with HandleReloadConfigRequest, so a server that polls the file and one that does not agree.
* A label is only ever put on a version that is already AVAILABLE, and a version stays in the
  `specific` policy for as long as any label of the config being applied points at it. So no
  reload ever makes a label name an unloaded version, and `stable` never stops serving.
* Promotion of `stable` N -> N+1 in two reloads: serve {N, N+1} (labels unchanged); wait until
  N+1 is AVAILABLE (END = failure); validate version N+1 by number (signature + recorded sample
  answers); then move `stable` and `canary` -> N+1 in one reload and prove with one Predict through
  `stable` that the label routes there; keep {N, N+1} loaded so that rollback is one label flip.
  Retired versions' directories are deleted once the server has unloaded them, and only if
  Modelyard wrote them: each staged version carries `.modelyard-manifest.json` (model, version,
  tree_sha256), checked (content re-hashed, symlinks never followed) before anything is deleted;
  whatever else the repository holds is reported, never touched.
* Any failure restores the previous models.config (file + reload), removes the version directory
  if this promotion created it and `stable` never pointed at it, and raises PromotionFailed.
* One promotion at a time per model repository: `fcntl.flock` on `<base>/.modelyard.lock`, which
  queues threads and processes alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from releases.deploy import signatures
from releases.deploy.durable import NotARegularFile, file_lock, fsync_dir, write_text_atomically
from releases.errors import EndpointError
from releases.tfserving import (
    AVAILABLE, END, EndpointUnreachable, LoadFailed, ModelServerConfig, ReloadRefused,
    ServingTimeout, SignatureMismatch, TFServingClient, VersionNotLoaded, WrongAnswers)

log = logging.getLogger(__name__)

STABLE, CANARY = "stable", "canary"
LOCK_NAME = ".modelyard.lock"
MANIFEST_NAME = ".modelyard-manifest.json"
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_MANIFEST_BYTES = 64 * 1024
_STAGING_DIR = re.compile(r"\A\.tmp-[0-9]+-[0-9a-f]{8}\Z")
_VERSION_DIR = re.compile(r"\A[0-9]{1,18}\Z")  # what TF Serving reads as a version (an int64)
TENSORFLOW_PLATFORM = "tensorflow"
RESTORE_TIMEOUT_S = 60.0

OnStep = Callable[[str, str], None]


# --- errors ------------------------------------------------------------------------------------

class ConfigError(EndpointError):
    """models.config is not a valid ModelServerConfig. Messages never quote the file: it may be
    any file an endpoint was pointed at, and they reach health_error and the audit log."""


class ConfigUnreadable(ConfigError):
    """models.config cannot be read (not a regular file, too large, not UTF-8, no permission)."""


class StagingError(EndpointError):
    """The SavedModel could not be placed in the model repository."""


class VersionExists(StagingError):
    """`<base>/<model>/<version>` already exists with different content: version numbers are never reused."""


class ArtifactMismatch(StagingError):
    """The SavedModel directory does not hash to the expected digest."""


class RetireRefused(EndpointError):
    """retire() was asked to drop a version that a label still points at."""


class PromotionFailed(EndpointError):
    """A promotion stopped at `step` because of `reason`; the previous config was restored if `restored`."""

    def __init__(self, step: str, reason: BaseException, *, model_name: str = "", version: int | None = None,
                 restored: bool = True, restore_error: BaseException | None = None,
                 removed_dir: Path | None = None) -> None:
        what = f"Promotion of {model_name} version {version}" if model_name else "Promotion"
        text = (getattr(reason, "message", None) or str(reason) or type(reason).__name__).rstrip()
        message = f"{what} failed at step '{step}': {text}{'' if text.endswith('.') else '.'}"
        if restore_error is not None:
            message += (f" The previous models.config was written back but the server did not take it: "
                        f"{getattr(restore_error, 'message', restore_error)}")
        elif not restored:
            message += " The previous config could not be restored."
        super().__init__(message)
        self.step = step
        self.reason = reason
        self.restored = restored
        self.restore_error = restore_error
        self.removed_dir = removed_dir


# --- models.config -------------------------------------------------------------------------------

def empty_config() -> ModelServerConfig:
    config = ModelServerConfig()
    config.model_config_list.SetInParent()
    return config


def parse_config(text: str, source: str = "<string>") -> ModelServerConfig:
    """A text ModelServerConfig that declares `model_config_list` (what Modelyard writes). Anything
    else (an empty file, some other file an endpoint was pointed at) is refused, so it is never
    overwritten."""
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        where = f" (line {exc.GetLine()}, column {exc.GetColumn()})" if exc.GetLine() else ""
        raise ConfigError(f"{source} is not a valid text ModelServerConfig{where}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{source} declares no model_config_list: not a models.config Modelyard may rewrite")
    return config


def read_config_text(path: Path) -> str | None:
    """The text of models.config, or None if there is none. Only a regular file (never through a
    symlink, never a FIFO or device) of at most MAX_CONFIG_BYTES is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigUnreadable(f"{path} cannot be opened ({errno.errorcode.get(exc.errno, 'error')})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigUnreadable(f"{path} is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigUnreadable(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
        data = handle.read(MAX_CONFIG_BYTES + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigUnreadable(f"{path} is not UTF-8 text") from None


def read_config(path: Path) -> ModelServerConfig:
    """The ModelServerConfig in `path`; a missing file reads as an empty model list."""
    text = read_config_text(path)
    return empty_config() if text is None else parse_config(text, str(path))


def config_text(config: ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def write_config_atomically(path: Path, config: ModelServerConfig) -> None:
    try:
        write_text_atomically(path, config_text(config))
    except NotARegularFile as exc:
        raise ConfigError(str(exc)) from exc


def model_entry(config: ModelServerConfig, name: str) -> Any | None:
    for entry in config.model_config_list.config:
        if entry.name == name:
            return entry
    return None


def policy_versions(entry: Any) -> set[int] | None:
    """The versions of a `specific` policy; None for latest/all (not pinned)."""
    if entry.model_version_policy.WhichOneof("policy_choice") != "specific":
        return None
    return set(entry.model_version_policy.specific.versions)


def with_model(config: ModelServerConfig, name: str, base_path: str, versions: set[int],
               labels: dict[str, int]) -> ModelServerConfig:
    """A copy of `config` where model `name` has policy specific{versions} and exactly `labels`.

    Other models, and the model's other fields (platform, logging...), are kept as they are.
    """
    new = ModelServerConfig()
    new.CopyFrom(config)
    new.model_config_list.SetInParent()
    entry = model_entry(new, name)
    if entry is None:
        entry = new.model_config_list.config.add()
        entry.name = name
        entry.base_path = base_path
        entry.model_platform = TENSORFLOW_PLATFORM
    entry.ClearField("model_version_policy")
    entry.model_version_policy.specific.versions.extend(sorted(versions))
    entry.ClearField("version_labels")
    for label, version in sorted(labels.items()):
        entry.version_labels[label] = version
    return new


# --- the repository -----------------------------------------------------------------------------

@dataclass
class RepositoryEndpoint:
    """A TF Serving endpoint as the engine sees it: the model repository the server reads
    (`base_dir`, one sub-directory per model), the models.config it was started with, a client."""

    base_dir: Path
    config_path: Path
    client: TFServingClient
    lock_timeout_s: float | None = None   # None: wait as long as it takes for the lock

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir).resolve()
        self.config_path = Path(self.config_path).resolve()

    def model_dir(self, model_name: str) -> Path:
        path = model_dir_in(self.base_dir, model_name)
        if path == self.config_path:
            raise StagingError(f"model {model_name!r} would be the repository's config file")
        return path

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock on `<base>/.modelyard.lock` (flock: works across threads and processes).

        Not re-entrant: a thread holding it must not ask again.
        """
        self.base_dir.mkdir(parents=True, exist_ok=True)
        return file_lock(self.base_dir / LOCK_NAME, self.lock_timeout_s)

    def apply(self, config: ModelServerConfig, timeout: float | None = None) -> None:
        """Write models.config atomically, then send the same config with HandleReloadConfigRequest."""
        write_config_atomically(self.config_path, config)
        self.client.reload_config(config, timeout=timeout)


def _check_model_name(name: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a usable model name (a directory name, not starting with '.')")
    return name


def model_dir_in(base_dir: Path, model_name: str) -> Path:
    """`<base>/<model>`, refusing anything that would leave the repository: a name with a
    separator or a leading dot, or an existing entry that is a symlink or not a directory."""
    base = Path(base_dir).resolve()
    path = base / _check_model_name(model_name)
    if path.parent != base:
        raise StagingError(f"model {model_name!r} does not name a directory inside {base}")
    if os.path.lexists(path) and not stat.S_ISDIR(os.lstat(path).st_mode):
        raise StagingError(f"{path} is not a directory (a symlink or a file): Modelyard did not make it and "
                           "will not stage through it")
    return path


# --- manifests: what Modelyard wrote ----------------------------------------------------------------

def write_manifest(directory: Path, model_name: str, version: int, digest: str) -> None:
    """Record in a staged version directory (before it is renamed into place) that Modelyard wrote
    it, for which model and version, and the tree_sha256 of its content. Clean-up deletes only
    directories whose manifest matches; TF Serving ignores the extra file."""
    body = json.dumps({"written_by": "modelyard", "model": model_name, "version": version,
                       "tree_sha256": digest}, sort_keys=True)
    with open(Path(directory) / MANIFEST_NAME, "x", encoding="utf-8") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a real (not symlinked) version directory, or None if it has none we wrote."""
    path = Path(directory) / MANIFEST_NAME
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    try:
        manifest = json.loads(data) if len(data) <= MAX_MANIFEST_BYTES else None
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("written_by") == "modelyard" else None


def manifest_matches(directory: Path, model_name: str, version: int, *, verify_content: bool) -> bool:
    """The directory is version `version` of `model_name` as Modelyard staged it; with
    verify_content, its files still hash to the recorded tree_sha256 (checked before deleting)."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("model") != model_name or manifest.get("version") != version:
        return False
    return not verify_content or manifest.get("tree_sha256") == tree_sha256(directory)


# --- staging ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StagedVersion:
    path: Path
    created: bool     # False: an identical directory was already there (idempotent re-stage)
    tree_sha256: str


def tree_sha256(root: Path) -> str:
    """Content digest of a directory: sha256 over every (relative path, kind, file sha256), sorted.

    Names and bytes count; timestamps and permissions do not. Used for `expected_sha256` and to
    tell an identical re-stage from a conflicting one.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):  # never follows a symlinked directory
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        digest.update(f"d {rel_dir}\n".encode())
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            if rel_dir == "." and name == MANIFEST_NAME:
                continue  # the manifest records the digest; it is not part of it
            if os.path.islink(os.path.join(dirpath, name)):  # hashed as a link, never read through
                digest.update(f"l {os.path.join(rel_dir, name)} {os.readlink(os.path.join(dirpath, name))}\n"
                              .encode())
                continue
            file_digest = hashlib.sha256()
            with open(os.path.join(dirpath, name), "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    file_digest.update(chunk)
            digest.update(f"f {os.path.join(rel_dir, name)} {file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def _copy_tree_durably(src: Path, dst: Path) -> None:
    """Copy src into the new directory dst: every file fsynced, saved_model.pb(txt) last, dirs fsynced."""
    dst.mkdir()
    last: list[tuple[Path, Path]] = []
    made_dirs = [dst]
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(dirpath).relative_to(src)
        target_dir = dst / rel
        if target_dir != dst:
            target_dir.mkdir()
            made_dirs.append(target_dir)
        for name in sorted(filenames):
            pair = (Path(dirpath) / name, target_dir / name)
            if rel == Path(".") and name in ("saved_model.pb", "saved_model.pbtxt"):
                last.append(pair)  # TFX Pusher habit: the graph file goes in last
                continue
            _copy_file_durably(*pair)
    for pair in last:
        _copy_file_durably(*pair)
    for directory in reversed(made_dirs):
        fsync_dir(directory)


def _copy_file_durably(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_version(base_dir: Path, model_name: str, version: int, saved_model_src: Path,
                  expected_sha256: str | None = None) -> StagedVersion:
    """Publish a SavedModel directory as `<base>/<model>/<version>`, all or nothing.

    Copies into `<base>/<model>/.tmp-<version>-<random>` (which the server ignores), fsyncs, and
    renames. Never overwrites: if `<version>` exists with the same content (tree_sha256) this is a
    no-op returning created=False; with different content it raises VersionExists. If
    `expected_sha256` is given, the source must hash to it (tree_sha256) or ArtifactMismatch.
    Callers racing on the same repository should hold RepositoryEndpoint.locked() (promote does).
    """
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise StagingError(f"Version must be a positive integer, got {version!r}")
    src = Path(saved_model_src)
    if not src.is_dir():
        raise StagingError(f"{src} is not a SavedModel directory")
    if not ((src / "saved_model.pb").is_file() or (src / "saved_model.pbtxt").is_file()):
        raise StagingError(f"{src} has no saved_model.pb: not a SavedModel directory")
    digest = tree_sha256(src)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ArtifactMismatch(f"{src} hashes to {digest}, expected {expected_sha256}: "
                               f"the SavedModel is not the one that was validated")
    model_dir = model_dir_in(base_dir, model_name)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / str(version)
    if os.path.lexists(target):
        return _existing(target, digest, model_name, version)
    tmp = model_dir / f".tmp-{version}-{secrets.token_hex(4)}"
    try:
        _copy_tree_durably(src, tmp)
        if tree_sha256(tmp) != digest:
            raise StagingError(f"{src} changed while it was being copied; nothing was published")
        write_manifest(tmp, model_name, version, digest)
        fsync_dir(tmp)
        if os.path.lexists(target):  # appeared while we copied (someone not holding the lock)
            shutil.rmtree(tmp)
            return _existing(target, digest, model_name, version)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(model_dir)
    return StagedVersion(target, True, digest)


def _existing(target: Path, digest: str, model_name: str, version: int) -> StagedVersion:
    """An existing `<model>/<version>` is used only if it holds exactly these files; it is never
    changed or replaced, whoever wrote it."""
    if not stat.S_ISDIR(os.lstat(target).st_mode):
        raise StagingError(f"{target} exists and is not a directory (a symlink or a file); Modelyard did not "
                           "write it; left untouched")
    if tree_sha256(target) == digest:
        return StagedVersion(target, False, digest)
    raise VersionExists(f"{target} already exists with different content (left untouched): version {version} "
                        f"of {model_name} was published before and version numbers are never reused")


# --- samples -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Samples:
    inputs: np.ndarray
    outputs: np.ndarray
    input_name: str
    output_name: str
    dtype: str

    @classmethod
    def parse(cls, samples: dict[str, Any] | "Samples") -> "Samples":
        if isinstance(samples, Samples):
            return samples
        try:
            dtype = np.dtype(samples.get("dtype", "float32")).name
            inputs = np.asarray(samples["inputs"], dtype=dtype)
            outputs = np.asarray(samples["outputs"])
            input_name, output_name = str(samples["input_name"]), str(samples["output_name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("samples needs inputs, outputs, input_name, output_name (and dtype): "
                             f"{exc}") from None
        if inputs.ndim == 0 or len(inputs) == 0 or len(inputs) != len(outputs):
            raise ValueError(f"samples need as many outputs as inputs (got {len(np.atleast_1d(inputs))} "
                             f"inputs, {len(np.atleast_1d(outputs))} outputs) and at least one")
        return cls(inputs, outputs, input_name, output_name, dtype)


def check_signature(client: TFServingClient, model_name: str, version: int, samples: Samples,
                    reference_version: int | None, *, accept_change: bool = False) -> list[str]:
    """The version's serving_default takes samples.input_name/dtype and gives samples.output_name;
    if a reference (the current stable) is given, the new one keeps its clients working
    (``signatures.differences``: same input names and dtypes, every old output, compatible shapes).
    ``accept_change``: a change from the reference was approved (an override of the signature
    gate): the differences are returned, to be reported, instead of refusing."""
    new = client.signature(model_name, version=version)
    problems = []
    spec = new.inputs.get(samples.input_name)
    if spec is None:
        problems.append(f"no input {samples.input_name!r} (inputs: {', '.join(sorted(new.inputs))})")
    elif spec.dtype != samples.dtype:
        problems.append(f"input {samples.input_name!r} is {spec.dtype}, the samples are {samples.dtype}")
    if samples.output_name not in new.outputs:
        problems.append(f"no output {samples.output_name!r} (outputs: {', '.join(sorted(new.outputs))})")
    changes: list[str] = []
    if reference_version is not None and reference_version != version:
        old = client.signature(model_name, version=reference_version)
        changes = signatures.differences(signatures.from_served(old.inputs), signatures.from_served(old.outputs),
                                         signatures.from_served(new.inputs), signatures.from_served(new.outputs),
                                         old_name=f"version {reference_version}")
    if problems or (changes and not accept_change):
        raise SignatureMismatch(f"Signature serving_default of {model_name} version {version} does not "
                                f"match: {'; '.join(problems + changes)}")
    return changes


def check_answers(client: TFServingClient, model_name: str, version: int, samples: Samples,
                  tolerance: tuple[float, float], *, label: str | None = None) -> None:
    """Predict the samples (through `label`, else the version) and compare with the recorded outputs."""
    rtol, atol = tolerance
    outputs, served = client.predict(model_name, {samples.input_name: samples.inputs},
                                      version=None if label else version, label=label)
    via = f"label {label!r}" if label else f"version {version}"
    if served != version:
        raise WrongAnswers(f"Predict through {via} of {model_name} was served by version {served}, "
                           f"expected {version}")
    if samples.output_name not in outputs:
        raise WrongAnswers(f"{model_name} version {version} returned no output {samples.output_name!r} "
                           f"(got {', '.join(sorted(outputs))})")
    actual = outputs[samples.output_name]
    expected = samples.outputs
    if actual.shape != expected.shape:
        raise WrongAnswers(f"{model_name} version {version} answered shape {list(actual.shape)} for the "
                           f"samples, the recorded outputs have shape {list(expected.shape)}")
    if not np.allclose(actual, expected, rtol=rtol, atol=atol):
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
        bad = int(np.sum(~np.isclose(actual, expected, rtol=rtol, atol=atol)))
        raise WrongAnswers(
            f"{model_name} version {version} answered differently from the recorded outputs: "
            f"{bad} of {diff.size} values off, worst at {list(map(int, worst))}: got "
            f"{float(actual[worst]):.6g}, expected {float(expected[worst]):.6g} "
            f"(rtol={rtol:g}, atol={atol:g})")


# --- promotion -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromotionResult:
    model_name: str
    previous_version: int | None   # `stable` before (None: first promotion)
    new_version: int
    canary_only: bool              # True: `canary` -> new, `stable` still -> previous
    staged_path: Path
    staged_created: bool           # False: the directory was already there, identical
    steps: tuple[tuple[str, str], ...]
    duration_s: float


@dataclass(frozen=True)
class LabelChange:
    model_name: str
    stable_before: int | None
    stable_after: int
    labels: dict[str, int]
    versions_loaded: tuple[int, ...]   # the `specific` policy after the change
    duration_s: float


@dataclass
class Reporter:
    """Collects the steps of a promotion and passes each to ``on_step`` (whose failure is logged, never raised)."""

    on_step: OnStep | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, step: str, message: str) -> None:
        self.steps.append((step, message))
        log.info("promotion %s: %s", step, message)
        if self.on_step is not None:
            try:
                self.on_step(step, message)
            except Exception:  # a broken progress callback must not leave a half-done promotion
                log.exception("on_step callback failed at step %s", step)


def promote(endpoint: RepositoryEndpoint, *, model_name: str, version: int, saved_model_src: Path,
            samples: dict[str, Any] | Samples, tolerance: tuple[float, float] = (1e-5, 1e-6),
            canary_only: bool = False, on_step: OnStep | None = None, deadline_s: float = 60.0,
            expected_sha256: str | None = None, delete_retired: bool = True,
            accept_signature_change: bool = False) -> PromotionResult:
    """Stage `saved_model_src` as `version` of `model_name` and make it `stable` (or only `canary`).

    Steps, each reported as on_step(step, message):
      lock, check, [pin], stage, load, available, validate, promote | hold, [clean], done
    and on failure: restore, failed; then PromotionFailed(step, reason) is raised (step = where it
    stopped, reason = the EndpointError/OSError behind it).
    `deadline_s` bounds the whole promotion once the lock is held (loading included).
    With `delete_retired`, directories of versions the final policy no longer serves are deleted
    once the server has let go of them (step `clean`, only reported when something was deleted).
    """
    _check_model_name(model_name)
    parsed = Samples.parse(samples)
    report = Reporter(on_step)
    if not endpoint.client.reachable():  # before the lock, so a dead endpoint leaves no trace at all
        error = PromotionFailed("check", EndpointUnreachable(
            f"TF Serving endpoint {endpoint.client.grpc_target} does not answer; nothing was staged or "
            f"changed"), model_name=model_name, version=version)
        report("failed", error.message)
        raise error
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(endpoint.locked())
        except ServingTimeout as exc:
            error = PromotionFailed("lock", exc, model_name=model_name, version=version)
            report("failed", error.message)
            raise error from exc
        report("lock", f"holding {endpoint.base_dir / LOCK_NAME}")
        run = _Promotion(endpoint, model_name, version, Path(saved_model_src), parsed, tolerance,
                         canary_only, report, deadline_s, expected_sha256, delete_retired)
        run.accept_signature_change = accept_signature_change  # an approved override of the signature gate
        return run.run()


class _Promotion:
    def __init__(self, endpoint: RepositoryEndpoint, model_name: str, version: int, src: Path,
                 samples: Samples, tolerance: tuple[float, float], canary_only: bool,
                 report: Reporter, deadline_s: float, expected_sha256: str | None,
                 delete_retired: bool = True) -> None:
        self.endpoint, self.client = endpoint, endpoint.client
        self.model, self.version, self.src = model_name, version, src
        self.samples, self.tolerance, self.canary_only = samples, tolerance, canary_only
        self.report, self.expected_sha256 = report, expected_sha256
        self.started = time.monotonic()
        self.deadline = self.started + deadline_s
        self.deadline_s = deadline_s
        self.step = "check"
        self.previous_text: str | None = None
        self.previous = empty_config()
        self.config_changed = False
        self.staged: StagedVersion | None = None
        self.stable_moved = False
        self.delete_retired = delete_retired
        self.accept_signature_change = False

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ServingTimeout(f"The promotion deadline of {self.deadline_s:g} s passed")
        return left

    def apply(self, config: ModelServerConfig) -> None:
        self.config_changed = True
        self.endpoint.apply(config, timeout=self.remaining())

    def run(self) -> PromotionResult:
        try:
            return self._run()
        except PromotionFailed:
            raise
        except Exception as exc:
            raise self._fail(exc) from exc

    def _run(self) -> PromotionResult:
        model, new = self.model, self.version
        base_path = str(self.endpoint.model_dir(model))
        # check: nothing is written before the endpoint answers and the config makes sense.
        if not self.client.reachable():
            raise EndpointUnreachable(f"TF Serving endpoint {self.client.grpc_target} does not answer; "
                                      f"nothing was staged or changed")
        # Refuses (before anything is written) a config file that is not a models.config.
        self.previous_text = read_config_text(self.endpoint.config_path)
        if self.previous_text is not None:
            self.previous = parse_config(self.previous_text, str(self.endpoint.config_path))
        entry = model_entry(self.previous, model)
        labels = dict(entry.version_labels) if entry is not None else {}
        if entry is not None and entry.base_path.rstrip("/") != base_path:
            raise ConfigError(f"{self.endpoint.config_path} serves {model} from {entry.base_path}, "
                              f"not from this repository ({base_path})")
        status = self.client.model_status(model) if entry is not None else {}
        stable = labels.get(STABLE)
        for label, labelled in sorted(labels.items()):
            state = status.get(labelled, ("not loaded", ""))[0]
            if state != AVAILABLE:  # every reload re-checks every label: it would be refused
                raise VersionNotLoaded(f"Label {label!r} of {model} points at version {labelled}, which is "
                                       f"{state} on {self.client.grpc_target}; fix the endpoint first")
        if status.get(new, ("", ""))[0] == END and status[new][1]:
            raise LoadFailed(f"Version {new} of {model} already failed to load on this endpoint "
                             f"({status[new][1]}); publish the fix under a new version number")
        if stable == new:
            raise VersionExists(f"Version {new} of {model} is already stable")
        self.report("check", f"{self.client.grpc_target} answers; {model}: "
                             f"{'not configured yet' if entry is None else f'labels {labels}'}")

        if entry is not None and policy_versions(entry) is None:
            # A latest/all policy would load (and unload) on its own as soon as a directory appears.
            self.step = "pin"
            pinned = {v for v, (state, _) in status.items() if state == AVAILABLE} | set(labels.values())
            self.apply(with_model(self.previous, model, base_path, pinned, labels))
            self.report("pin", f"policy pinned to specific {sorted(pinned)} before staging")

        self.step = "stage"
        self.staged = stage_version(self.endpoint.base_dir, model, new, self.src, self.expected_sha256)
        self.report("stage", f"{self.staged.path} "
                             f"{'published' if self.staged.created else 'already there, identical'}")

        # load: serve everything labelled now, plus the new version; labels unchanged.
        self.step = "load"
        held = set(labels.values())
        serving = held | {new}
        try:
            self.apply(with_model(self.previous, model, base_path, serving, labels))
        except ReloadRefused as exc:
            # A model new to the server: the reload itself waits for the load and reports its failure.
            state, message = self.client.model_status(model).get(new, ("", ""))
            if state == END and message:
                raise LoadFailed(f"Version {new} of model {model} failed to load on "
                                 f"{self.client.grpc_target}: {message}") from exc
            raise
        self.report("load", f"policy specific {sorted(serving)}, labels {labels}")

        self.step = "available"
        self.client.wait_available(model, new, self.remaining())
        self.report("available", f"version {new} is AVAILABLE")

        # validate by version number: nothing has to move before the new version is proven, so a
        # promotion is two reloads (load, then the label flip), the minimum TF Serving allows.
        self.step = "validate"
        changes = check_signature(self.client, model, new, self.samples, stable,
                                  accept_change=self.accept_signature_change)
        check_answers(self.client, model, new, self.samples, self.tolerance)
        self.report("validate", f"signature and {len(self.samples.inputs)} sample answers of version {new} "
                                f"match the registry's" + (f"; signature change approved: {'; '.join(changes)}"
                                                           if changes else ""))

        # final: keep the previous stable (for rollback), the new one, and other labels' versions.
        others = {v for label, v in labels.items() if label not in (STABLE, CANARY)}
        final_versions = ({stable} if stable is not None else set()) | {new} | others
        if self.canary_only:
            self.step, moved = "hold", CANARY
            final_labels = {**labels, CANARY: new}
        else:
            self.step, moved = "promote", STABLE
            final_labels = {**labels, STABLE: new, CANARY: new}
            self.stable_moved = True  # from here on the version may have served stable traffic
        self.apply(with_model(self.previous, model, base_path, final_versions, final_labels))
        # One Predict through the moved label proves the flip routes to the new version.
        check_answers(self.client, model, new, self.samples, self.tolerance, label=moved)
        self.report(self.step, f"{moved} {labels.get(moved)} -> {new} (stable -> {final_labels.get(STABLE)}); "
                               f"policy {sorted(final_versions)}, labels {final_labels}")
        self._clean(base_path, final_versions)
        self.report("done", f"{model} version {new} is {'canary' if self.canary_only else 'stable'} "
                            f"in {time.monotonic() - self.started:.2f} s")
        return PromotionResult(model, stable, new, self.canary_only, self.staged.path, self.staged.created,
                               tuple(self.report.steps), time.monotonic() - self.started)

    def _clean(self, base_path: str, served: set[int]) -> None:
        """Delete the directories of versions the final reload stopped serving (retired ones).

        The promotion has succeeded by now, so a failure here is reported, not raised: an extra
        directory on disk is harmless and the next promotion tries again. Rollback re-stages a
        version whose directory is gone."""
        if not self.delete_retired:
            return
        try:
            sweep = delete_unserved_dirs(self.client, self.model, Path(base_path), served)
        except Exception as exc:  # noqa: BLE001 - see docstring
            self.report("clean", f"could not delete retired version directories: {exc}")
            return
        if sweep.deleted or sweep.unmanaged:
            self.report("clean", sweep.describe())

    def _fail(self, exc: Exception) -> PromotionFailed:
        step = self.step
        restored, restore_error, removed = True, None, None
        if self.config_changed:
            try:
                if self.previous_text is not None:
                    write_text_atomically(self.endpoint.config_path, self.previous_text)
                else:
                    write_config_atomically(self.endpoint.config_path, self.previous)
                self.client.reload_config(self.previous, timeout=RESTORE_TIMEOUT_S)
            except Exception as error:
                restored, restore_error = False, error
        if (restored and self.staged is not None and self.staged.created and not self.stable_moved):
            shutil.rmtree(self.staged.path, ignore_errors=True)
            removed = self.staged.path
        note = ("nothing had been changed" if not self.config_changed else
                "previous models.config restored (file + reload)" if restored else
                f"restoring the previous config failed: {restore_error}")
        if removed is not None:
            note += f"; removed {removed}"
        self.report("restore", note)
        error = PromotionFailed(step, exc, model_name=self.model, version=self.version,
                                restored=restored, restore_error=restore_error, removed_dir=removed)
        self.report("failed", error.message)
        return error


# --- label flips and clean-up -------------------------------------------------------------------------

def _current(endpoint: RepositoryEndpoint, model_name: str) -> tuple[ModelServerConfig, Any]:
    config = read_config(endpoint.config_path)
    entry = model_entry(config, model_name)
    if entry is None:
        raise VersionNotLoaded(f"{model_name} is not in {endpoint.config_path}")
    return config, entry


def _flip(endpoint: RepositoryEndpoint, model_name: str, to_version: int, labels: dict[str, int],
          versions: set[int], on_step: OnStep | None, what: str) -> LabelChange:
    started = time.monotonic()
    report = Reporter(on_step)
    config, entry = _current(endpoint, model_name)
    before = dict(entry.version_labels).get(STABLE)
    state = endpoint.client.model_status(model_name).get(to_version, ("not loaded", ""))[0]
    if state != AVAILABLE:
        raise VersionNotLoaded(f"Version {to_version} of {model_name} is {state} on "
                               f"{endpoint.client.grpc_target}; re-stage it with promote()")
    new = with_model(config, model_name, entry.base_path, versions, labels)
    try:
        endpoint.apply(new)
    except Exception as exc:
        with contextlib.suppress(Exception):
            write_config_atomically(endpoint.config_path, config)
            endpoint.client.reload_config(config, timeout=RESTORE_TIMEOUT_S)
        raise PromotionFailed(what, exc, model_name=model_name, version=to_version) from exc
    report(what, f"stable {before} -> {to_version}; labels {labels}, policy {sorted(versions)}")
    return LabelChange(model_name, before, to_version, labels, tuple(sorted(versions)),
                       time.monotonic() - started)


def rollback(endpoint: RepositoryEndpoint, *, model_name: str, to_version: int,
             on_step: OnStep | None = None) -> LabelChange:
    """Point `stable` (and `canary`, if set) back at `to_version`, if it is still loaded: one reload.

    The version rolled away from stays loaded (inspect it, or drop it with retire()).
    Raises VersionNotLoaded if `to_version` is not AVAILABLE: the caller re-stages it.
    """
    with endpoint.locked():
        _, entry = _current(endpoint, model_name)
        versions = policy_versions(entry)
        if versions is None or to_version not in versions:
            raise VersionNotLoaded(f"Version {to_version} of {model_name} is not in the served policy "
                                   f"({sorted(versions or [])}); re-stage it with promote()")
        labels = dict(entry.version_labels)
        labels[STABLE] = to_version
        if CANARY in labels:
            labels[CANARY] = to_version
        return _flip(endpoint, model_name, to_version, labels, versions, on_step, "rollback")


def complete_canary(endpoint: RepositoryEndpoint, model_name: str,
                    on_step: OnStep | None = None) -> LabelChange:
    """Move `stable` to the `canary` version; keep the previous stable loaded for rollback."""
    with endpoint.locked():
        _, entry = _current(endpoint, model_name)
        labels = dict(entry.version_labels)
        if CANARY not in labels:
            raise VersionNotLoaded(f"{model_name} has no canary label to complete")
        canary, stable = labels[CANARY], labels.get(STABLE)
        labels[STABLE] = canary
        others = {v for label, v in labels.items() if label not in (STABLE, CANARY)}
        versions = {canary} | ({stable} if stable is not None else set()) | others
        return _flip(endpoint, model_name, canary, labels, versions, on_step, "complete")


@dataclass(frozen=True)
class RetireResult:
    model_name: str
    kept: tuple[int, ...]
    dropped: tuple[int, ...]
    deleted: tuple[Path, ...]
    unmanaged: tuple[str, ...] = ()


def retire(endpoint: RepositoryEndpoint, model_name: str, keep: set[int], *, delete_dirs: bool = False,
           grace_s: float = 0.0, on_step: OnStep | None = None) -> RetireResult:
    """Serve only `keep` (policy specific{keep}); labels must all point into `keep`.

    With delete_dirs, after `grace_s` seconds (in-flight requests finish on the old servables),
    the directories of versions not kept are deleted, unless the server still holds them
    (see delete_unserved_dirs).
    """
    report = Reporter(on_step)
    keep = {int(v) for v in keep}
    if not keep:
        raise RetireRefused("retire() needs at least one version to keep")
    with endpoint.locked():
        config, entry = _current(endpoint, model_name)
        model_dir = endpoint.model_dir(model_name)
        if delete_dirs and entry.base_path.rstrip("/") != str(model_dir):
            raise RetireRefused(f"{endpoint.config_path} serves {model_name} from elsewhere, not from "
                                f"{model_dir}; Modelyard deletes only in its own repository")
        labels = dict(entry.version_labels)
        stray = {label: v for label, v in labels.items() if v not in keep}
        if stray:
            raise RetireRefused(f"Cannot stop serving versions that labels point at: {stray}; "
                                f"move the labels first")
        before = policy_versions(entry)
        dropped = tuple(sorted((before or set()) - keep))
        new = with_model(config, model_name, entry.base_path, keep, labels)
        endpoint.apply(new)
        report("retire", f"policy specific {sorted(keep)}; dropped {list(dropped)}")
        sweep = Sweep()
        if delete_dirs:
            if grace_s > 0:
                time.sleep(grace_s)
            sweep = delete_unserved_dirs(endpoint.client, model_name, model_dir, keep)
            report("delete", sweep.describe())
        return RetireResult(model_name, tuple(sorted(keep)), dropped, sweep.deleted, sweep.unmanaged)


@dataclass(frozen=True)
class Sweep:
    """What a clean-up did: directories deleted, and entries it left alone because Modelyard did
    not write them (no matching manifest, a symlink, a file, changed content)."""

    deleted: tuple[Path, ...] = ()
    unmanaged: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"deleted retired version directories {[p.name for p in self.deleted]}"] if self.deleted else []
        if self.unmanaged:
            parts.append(f"left {len(self.unmanaged)} entries Modelyard did not write untouched: "
                         f"{list(self.unmanaged[:20])}{' …' if len(self.unmanaged) > 20 else ''}")
        return "; ".join(parts) or "nothing to delete"


def unmanaged_entries(model_dir: Path, model_name: str) -> tuple[str, ...]:
    """Names in `<base>/<model>` that are not version directories Modelyard staged for this model
    (by their manifest; content not re-hashed: cheap enough for every health check)."""
    if not os.path.lexists(model_dir):
        return ()
    if not stat.S_ISDIR(os.lstat(model_dir).st_mode):
        return (model_dir.name,)
    return tuple(sorted(entry.name for entry in os.scandir(model_dir) if not _is_ours(entry, model_name)))


def _is_ours(entry: os.DirEntry, model_name: str) -> bool:
    if _STAGING_DIR.match(entry.name) and entry.is_dir(follow_symlinks=False):
        return True  # a staging directory (in progress, or left by a killed worker)
    return (_VERSION_DIR.match(entry.name) is not None and entry.is_dir(follow_symlinks=False)
            and manifest_matches(Path(entry.path), model_name, int(entry.name), verify_content=False))


def delete_unserved_dirs(client: TFServingClient, model_name: str, model_dir: Path,
                         keep: set[int]) -> Sweep:
    """Delete version directories outside the policy ``keep`` that the server no longer holds,
    if Modelyard wrote them: a real directory (never a symlink) whose manifest names this model and
    version and whose files still hash to the manifest's digest. Anything else is left untouched
    and reported in ``Sweep.unmanaged``.

    Call it with the endpoint lock held, after the reload that dropped them. A version still
    LOADING, AVAILABLE or UNLOADING (in-flight requests finishing) is left for the next call.
    """
    unmanaged = list(unmanaged_entries(model_dir, model_name))
    if not os.path.lexists(model_dir) or not stat.S_ISDIR(os.lstat(model_dir).st_mode):
        return Sweep((), tuple(unmanaged))
    status = client.model_status(model_name)
    deleted = []
    for entry in sorted(os.scandir(model_dir), key=lambda e: e.name):
        if entry.name in unmanaged or not _VERSION_DIR.match(entry.name) or int(entry.name) in keep:
            continue
        if status.get(int(entry.name), ("", ""))[0] in (AVAILABLE, "LOADING", "UNLOADING"):
            continue
        path = Path(entry.path)
        if not manifest_matches(path, model_name, int(entry.name), verify_content=True):
            unmanaged.append(entry.name)  # changed since it was staged: not what Modelyard wrote
            continue
        shutil.rmtree(path)  # a verified real directory; rmtree never follows symlinks inside it
        deleted.append(path)
    return Sweep(tuple(deleted), tuple(sorted(unmanaged)))
