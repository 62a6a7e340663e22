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
  Retired versions' directories are deleted once the server has unloaded them.
* Any failure restores the previous models.config (file + reload), removes the version directory
  if this promotion created it and `stable` never pointed at it, and raises PromotionFailed.
* One promotion at a time per model repository: `fcntl.flock` on `<base>/.modelyard.lock`, which
  queues threads and processes alike.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from .tfserving import (
    AVAILABLE, END, EndpointUnreachable, LoadFailed, ModelServerConfig, ReloadRefused,
    ServingTimeout, SignatureMismatch, TFServingClient, TFServingError, VersionNotLoaded,
    WrongAnswers)

log = logging.getLogger(__name__)

STABLE, CANARY = "stable", "canary"
LOCK_NAME = ".modelyard.lock"
TENSORFLOW_PLATFORM = "tensorflow"
RESTORE_TIMEOUT_S = 60.0

OnStep = Callable[[str, str], None]


# --- errors ------------------------------------------------------------------------------------

class ConfigError(TFServingError):
    """models.config cannot be read or parsed."""


class StagingError(TFServingError):
    """The SavedModel could not be placed in the model repository."""


class VersionExists(StagingError):
    """`<base>/<model>/<version>` already exists with different content: version numbers are never reused."""


class ArtifactMismatch(StagingError):
    """The SavedModel directory does not hash to the expected digest."""


class RetireRefused(TFServingError):
    """retire() was asked to drop a version that a label still points at."""


class PromotionFailed(TFServingError):
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
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source} is not a valid text ModelServerConfig: {exc}") from None
    if config.WhichOneof("config") not in (None, "model_config_list"):
        raise ConfigError(f"{source} uses {config.WhichOneof('config')}; only model_config_list is supported")
    config.model_config_list.SetInParent()
    return config


def read_config(path: Path) -> ModelServerConfig:
    """The ModelServerConfig in `path`; a missing file reads as an empty model list."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty_config()
    return parse_config(text, str(path))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    """Write a sibling temp file, fsync it, rename() over `path`, fsync the directory.

    A reader (the server's config poll) sees either the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def config_text(config: ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def write_config_atomically(path: Path, config: ModelServerConfig) -> None:
    write_text_atomically(path, config_text(config))


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
        return self.base_dir / _check_model_name(model_name)

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


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """An exclusive flock on ``path``: one promotion per endpoint, across threads and processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise ServingTimeout(f"Another promotion still holds {path} after {timeout_s:g} s") from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the flock


def _check_model_name(name: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a usable model name (a directory name, not starting with '.')")
    return name


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
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        digest.update(f"d {rel_dir}\n".encode())
        for name in sorted(filenames):
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
        _fsync_dir(directory)


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
    model_dir = Path(base_dir).resolve() / _check_model_name(model_name)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / str(version)
    if target.exists():
        return _existing(target, digest, model_name, version)
    tmp = model_dir / f".tmp-{version}-{secrets.token_hex(4)}"
    try:
        _copy_tree_durably(src, tmp)
        if tree_sha256(tmp) != digest:
            raise StagingError(f"{src} changed while it was being copied; nothing was published")
        if target.exists():  # appeared while we copied (someone not holding the lock)
            shutil.rmtree(tmp)
            return _existing(target, digest, model_name, version)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(model_dir)
    return StagedVersion(target, True, digest)


def _existing(target: Path, digest: str, model_name: str, version: int) -> StagedVersion:
    if target.is_dir() and tree_sha256(target) == digest:
        return StagedVersion(target, False, digest)
    raise VersionExists(f"{target} already exists with different content: version {version} of "
                        f"{model_name} was published before and version numbers are never reused")


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
                    reference_version: int | None) -> None:
    """The version's serving_default takes samples.input_name/dtype and gives samples.output_name;
    if a reference (the current stable) is given, the new one has the same input names and dtypes
    and at least its outputs with the same dtypes (clients of `stable` keep working)."""
    new = client.signature(model_name, version=version)
    problems = []
    spec = new.inputs.get(samples.input_name)
    if spec is None:
        problems.append(f"no input {samples.input_name!r} (inputs: {', '.join(sorted(new.inputs))})")
    elif spec.dtype != samples.dtype:
        problems.append(f"input {samples.input_name!r} is {spec.dtype}, the samples are {samples.dtype}")
    if samples.output_name not in new.outputs:
        problems.append(f"no output {samples.output_name!r} (outputs: {', '.join(sorted(new.outputs))})")
    if reference_version is not None and reference_version != version:
        old = client.signature(model_name, version=reference_version)
        old_in = {k: v.dtype for k, v in old.inputs.items()}
        new_in = {k: v.dtype for k, v in new.inputs.items()}
        if old_in != new_in:
            problems.append(f"inputs {new_in} differ from version {reference_version}'s {old_in}")
        for name, old_spec in old.outputs.items():
            if name not in new.outputs or new.outputs[name].dtype != old_spec.dtype:
                got = new.outputs[name].dtype if name in new.outputs else "missing"
                problems.append(f"output {name!r} is {got}, version {reference_version} has {old_spec.dtype}")
    if problems:
        raise SignatureMismatch(f"Signature serving_default of {model_name} version {version} does not "
                                f"match: {'; '.join(problems)}")


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
class _Reporter:
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
            expected_sha256: str | None = None, delete_retired: bool = True) -> PromotionResult:
    """Stage `saved_model_src` as `version` of `model_name` and make it `stable` (or only `canary`).

    Steps, each reported as on_step(step, message):
      lock, check, [pin], stage, load, available, validate, promote | hold, [clean], done
    and on failure: restore, failed; then PromotionFailed(step, reason) is raised (step = where it
    stopped, reason = the TFServingError/OSError behind it).
    `deadline_s` bounds the whole promotion once the lock is held (loading included).
    With `delete_retired`, directories of versions the final policy no longer serves are deleted
    once the server has let go of them (step `clean`, only reported when something was deleted).
    """
    _check_model_name(model_name)
    parsed = Samples.parse(samples)
    report = _Reporter(on_step)
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
        return run.run()


class _Promotion:
    def __init__(self, endpoint: RepositoryEndpoint, model_name: str, version: int, src: Path,
                 samples: Samples, tolerance: tuple[float, float], canary_only: bool,
                 report: _Reporter, deadline_s: float, expected_sha256: str | None,
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
        if self.endpoint.config_path.exists():
            self.previous_text = self.endpoint.config_path.read_text(encoding="utf-8")
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
        check_signature(self.client, model, new, self.samples, stable)
        check_answers(self.client, model, new, self.samples, self.tolerance)
        self.report("validate", f"signature and {len(self.samples.inputs)} sample answers of version {new} "
                                f"match the registry's")

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
            deleted = delete_unserved_dirs(self.client, self.model, Path(base_path), served)
        except Exception as exc:  # noqa: BLE001 - see docstring
            self.report("clean", f"could not delete retired version directories: {exc}")
            return
        if deleted:
            self.report("clean", f"deleted retired version directories {[p.name for p in deleted]}")

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
    report = _Reporter(on_step)
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


def retire(endpoint: RepositoryEndpoint, model_name: str, keep: set[int], *, delete_dirs: bool = False,
           grace_s: float = 0.0, on_step: OnStep | None = None) -> RetireResult:
    """Serve only `keep` (policy specific{keep}); labels must all point into `keep`.

    With delete_dirs, after `grace_s` seconds (in-flight requests finish on the old servables),
    the directories of versions not kept are deleted, unless the server still holds them
    (see delete_unserved_dirs).
    """
    report = _Reporter(on_step)
    keep = {int(v) for v in keep}
    if not keep:
        raise RetireRefused("retire() needs at least one version to keep")
    with endpoint.locked():
        config, entry = _current(endpoint, model_name)
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
        deleted: tuple[Path, ...] = ()
        if delete_dirs:
            if grace_s > 0:
                time.sleep(grace_s)
            deleted = delete_unserved_dirs(endpoint.client, model_name, Path(entry.base_path), keep)
            report("delete", f"deleted {[p.name for p in deleted]}")
        return RetireResult(model_name, tuple(sorted(keep)), dropped, deleted)


def delete_unserved_dirs(client: TFServingClient, model_name: str, model_dir: Path,
                         keep: set[int]) -> tuple[Path, ...]:
    """Delete version directories outside the policy ``keep`` that the server no longer holds.

    Call it with the endpoint lock held, after the reload that dropped them. A version still
    LOADING, AVAILABLE or UNLOADING (in-flight requests finishing) is left for the next call; so is
    anything that is not a version directory (a ``.tmp-`` staging directory, a stray file).
    """
    status = client.model_status(model_name)
    deleted = []
    for child in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
        if not child.name.isdigit() or not child.is_dir() or child.is_symlink() or int(child.name) in keep:
            continue
        if status.get(int(child.name), ("", ""))[0] in (AVAILABLE, "LOADING", "UNLOADING"):
            continue
        shutil.rmtree(child)
        deleted.append(child)
    return tuple(deleted)
