"""Model versions and their lifecycle: the part of TF Serving's ServerCore we mirror.

Versions are numeric subdirectories of a model's base_path, found by polling.
A version goes START -> LOADING -> AVAILABLE -> UNLOADING -> END; a failed load
goes to END with its error, and the other versions keep serving. The switch to a
new version preserves availability: the new one loads before the old one unloads
(AvailabilityPreservingPolicy::GetNextAction).
"""
from __future__ import annotations

import enum
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tensorflow_serving.apis import model_pb2

from . import config as cfg
from .errors import ServingError, invalid_argument, not_found, unavailable, unknown, failed_precondition
from .servable import Servable

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    """ModelVersionStatus.State values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class VersionRecord:
    version: int
    state: State = State.START
    error: ServingError | None = None
    servable: Servable | None = None


@dataclass
class ModelRecord:
    config: cfg.ModelConfig
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    removed: bool = False  # dropped from the config: kept only to report END states

    @property
    def policy(self) -> cfg.VersionPolicy:
        return cfg.version_policy(self.config)


@dataclass(frozen=True)
class ManagerOptions:
    prefer_tflite: bool = False
    enable_warmup: bool = True
    allow_labels_for_unavailable: bool = False
    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    signature_method_name_check: bool = False


# (version_dir, prefer_tflite) -> loaded servable; warmup is run by the caller.
Loader = Callable[[str, bool], Servable]
Warmup = Callable[[Servable, str], None]


def list_versions(base_path: str) -> set[int]:
    """Numeric children of base_path; anything else (e.g. '.tmp-123') is ignored."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return set()
    versions = set()
    for name in names:
        if name.isdigit() and os.path.isdir(os.path.join(base_path, name)):
            versions.add(int(name))
    return versions


class ModelManager:
    """Holds the config, the version states, the labels; loads and unloads versions."""

    def __init__(self, options: ManagerOptions, loader: Loader, warmup: Warmup) -> None:
        self.options = options
        self._loader = loader
        self._warmup = warmup
        self._config: cfg.ModelServerConfig | None = None
        self._models: dict[str, ModelRecord] = {}
        self._labels: dict[str, dict[str, int]] | None = None
        self._state_lock = threading.RLock()      # guards the dicts above (short holds)
        self._config_lock = threading.Lock()      # one ReloadConfig at a time (config_mu_)
        self._reconcile_lock = threading.Lock()   # one load/unload pass at a time
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # --- config ------------------------------------------------------------------

    def reload_config(self, new: cfg.ModelServerConfig) -> None:
        """ServerCore::ReloadConfig: validate, store, relabel, apply, await new models."""
        with self._config_lock:
            if new.WhichOneof("config") is None:
                log.info("Taking no action for empty config.")
                return
            cfg.validate_transition(self._config, new)
            for entry in new.model_config_list.config:
                cfg.check_platform_supported(entry)
            # TF Serving stores the config before the label check, so a refused label
            # still leaves the config replaced (documented in tf-serving.md).
            self._config = cfg.ModelServerConfig()
            self._config.CopyFrom(new)
            self._update_labels(new)
            added = self._apply_model_list(new)
            self.reconcile()
            self._await_available(added)

    def _update_labels(self, new: cfg.ModelServerConfig) -> None:
        labels: dict[str, dict[str, int]] = {}
        with self._state_lock:
            for entry in new.model_config_list.config:
                for label, version in sorted(entry.version_labels.items()):
                    if not self._label_allowed(entry.name, label, version):
                        raise failed_precondition(
                            f"Request to assign label to version {version} of model "
                            f"{entry.name}, which is not currently available for inference")
                    labels.setdefault(entry.name, {})[label] = version
            self._labels = labels

    def _label_allowed(self, model: str, label: str, version: int) -> bool:
        if self.options.allow_labels_for_unavailable:
            bound = (self._labels or {}).get(model, {}).get(label)
            # The flag only covers labels that are not yet bound to another version.
            if bound is None or bound == version:
                return True
        record = self._models.get(model)
        state = record.versions.get(version) if record and not record.removed else None
        return state is not None and state.state == State.AVAILABLE

    def _apply_model_list(self, new: cfg.ModelServerConfig) -> set[str]:
        """Replace the model list; returns names that are new to the server."""
        wanted = {entry.name: entry for entry in new.model_config_list.config}
        added: set[str] = set()
        with self._state_lock:
            for name, entry in wanted.items():
                record = self._models.get(name)
                if record is None or record.removed:
                    added.add(name)
                    self._models[name] = ModelRecord(config=entry)
                else:
                    record.config = entry
            for name, record in self._models.items():
                if name not in wanted:
                    record.removed = True
        return added

    def _await_available(self, names: set[str]) -> None:
        """Block until each new model has an AVAILABLE version (WaitUntilModelsAvailable)."""
        while names:
            failed = []
            pending = False
            with self._state_lock:
                for name in sorted(names):
                    record = self._models[name]
                    if any(v.state == State.AVAILABLE for v in record.versions.values()):
                        continue
                    errored = [v for v in record.versions.values() if v.error is not None]
                    settled = record.versions and all(
                        v.state == State.END for v in record.versions.values())
                    if errored and settled:
                        failed.append((name, max(errored, key=lambda v: v.version)))
                    else:
                        pending = True
            if failed and not pending:
                parts = "".join(
                    f"{{{{name: {n} version: {v.version}}} due to error: {v.error}}}, "
                    for n, v in failed)
                raise unknown(f"{len(failed)} model(s) did not become available: {{{parts}}}")
            if not pending:
                return
            poll = self.options.file_system_poll_wait_seconds
            if self._stop.wait(poll if poll > 0 else 0.5):
                raise unavailable("Server is shutting down")
            if poll > 0:  # with 0 the file system is looked at once, at config time
                self.reconcile()

    # --- polling, loading, unloading ------------------------------------------------

    def start_polling(self) -> None:
        if self.options.file_system_poll_wait_seconds <= 0:
            return  # TF Serving: 0 means look once (at config time) and never again
        self._poller = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.options.file_system_poll_wait_seconds):
            try:
                self.reconcile()
            except Exception:  # keep polling whatever one pass did
                log.exception("File system poll failed")

    def reconcile(self) -> None:
        """One pass of the source + AvailabilityPreservingPolicy for every model."""
        with self._reconcile_lock:
            with self._state_lock:
                records = list(self._models.items())
            for name, record in records:
                self._reconcile_model(name, record)

    def _reconcile_model(self, name: str, record: ModelRecord) -> None:
        aspired = set() if record.removed else record.policy.select(
            list_versions(record.config.base_path))
        if not record.removed and not aspired:
            log.debug("No versions of servable %s found under base path %s",
                      name, record.config.base_path)
        for version in sorted(aspired, reverse=True):  # highest new version first
            existing = record.versions.get(version)
            if existing is None or (existing.state == State.END and existing.error is None):
                self._load(name, record, version)
        self._unload_unaspired(name, record, aspired)

    def _unload_unaspired(self, name: str, record: ModelRecord, aspired: set[int]) -> None:
        while True:
            with self._state_lock:
                ready = [v for v in record.versions.values() if v.state == State.AVAILABLE]
                unaspired = sorted((v for v in ready if v.version not in aspired),
                                   key=lambda v: v.version)
                aspired_ready = any(v.version in aspired for v in ready)
                if not unaspired or not (not aspired or aspired_ready or len(unaspired) > 1):
                    return
                victim = unaspired[0]
                victim.state = State.UNLOADING
            log.info("Unloading servable version {name: %s version: %d}", name, victim.version)
            servable, victim.servable = victim.servable, None
            if servable is not None:
                servable.close()
            with self._state_lock:
                victim.state = State.END

    def _load(self, name: str, record: ModelRecord, version: int) -> None:
        entry = VersionRecord(version=version)
        with self._state_lock:
            record.versions[version] = entry
            entry.state = State.LOADING
        path = os.path.join(record.config.base_path, str(version))
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        error: ServingError | None = None
        for attempt in range(self.options.max_num_load_retries + 1):
            try:
                servable = self._loader(path, self.options.prefer_tflite)
                if self.options.enable_warmup:
                    self._warmup(servable, path)
            except ServingError as exc:
                error = exc
            except Exception as exc:  # a loader bug must not kill the poller
                error = unknown(f"{type(exc).__name__}: {exc}")
            else:
                with self._state_lock:
                    entry.servable, entry.state = servable, State.AVAILABLE
                log.info("Successfully loaded servable version {name: %s version: %d}",
                         name, version)
                return
            if attempt < self.options.max_num_load_retries:
                log.warning("Load of %s:%d failed (%s); retrying", name, version, error)
                if self._stop.wait(self.options.load_retry_interval_seconds):
                    break
        log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, error)
        with self._state_lock:
            entry.error, entry.state = error, State.END

    # --- lookups used by the front ends --------------------------------------------------

    def resolve(self, spec: model_pb2.ModelSpec) -> tuple[Servable, int]:
        """ServerCore::GetServableHandle: the servable (and its version) a spec names."""
        if not spec.name:
            raise invalid_argument("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        with self._state_lock:
            if choice == "version_label":
                version = self._version_for_label(spec.name, spec.version_label)
                return self._specific(spec.name, version)
            if choice == "version":
                return self._specific(spec.name, spec.version.value)
            return self._latest(spec.name)

    def _version_for_label(self, model: str, label: str) -> int:
        if self._labels is None:
            raise unavailable(f"Model labels does not init yet.{label}")
        version = self._labels.get(model, {}).get(label)
        if version is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return version

    def _available(self, model: str) -> dict[int, VersionRecord]:
        record = self._models.get(model)
        if record is None or record.removed:
            return {}
        return {v: r for v, r in record.versions.items()
                if r.state == State.AVAILABLE and r.servable is not None}

    def _specific(self, model: str, version: int) -> tuple[Servable, int]:
        record = self._available(model).get(version)
        if record is None:
            raise not_found(f"Servable not found for request: Specific({model}, {version})")
        return record.servable, version

    def _latest(self, model: str) -> tuple[Servable, int]:
        available = self._available(model)
        if not available:
            raise not_found(f"Servable not found for request: Latest({model})")
        version = max(available)
        return available[version].servable, version

    def version_states(self, model: str, version: int | None) -> list[VersionRecord]:
        """GetModelStatus: states of all versions (or one) ever managed for `model`."""
        with self._state_lock:
            record = self._models.get(model)
            versions = dict(record.versions) if record else {}
        if version is not None:
            if version not in versions:
                raise not_found(f"Could not find version {version} of model {model}")
            return [versions[version]]
        if not versions:
            raise not_found(f"Could not find any versions of model {model}")
        return [versions[v] for v in sorted(versions)]

    def model_names(self) -> list[str]:
        with self._state_lock:
            return [n for n, r in self._models.items() if not r.removed]

    def wait_idle(self, timeout: float) -> None:
        """Test/bench helper: wait until no version is START/LOADING/UNLOADING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._state_lock:
                busy = any(v.state in (State.START, State.LOADING, State.UNLOADING)
                           for r in self._models.values() for v in r.versions.values())
            if not busy:
                return
            time.sleep(0.05)
