"""The `docker` endpoint kind: a release's serving image run as a container on a Docker host.

Django-free. The Release/Endpoint services pass plain values in and record what comes back.

Promotion (``promote_container``), per /work/shared/reference/tf-serving.md (Docker images):

* check: the engine answers, the image is there (pulled if not), the new ports are free;
* start: the new container starts *beside* the old one (``network_mode="host"``, its own gRPC and
  REST ports appended after the image's serving args - TF Serving's entrypoint passes
  ``--port=8500 --rest_api_port=8501`` first and both tensorflow_model_server and our
  ``serving/flags.py`` keep the last occurrence of a flag), GPU device requests when asked,
  restart policy, labels naming the release, model, version and endpoint;
* available: poll until the gRPC port answers, then until the version is AVAILABLE (a container
  that exits or restarts fails the step with its last log lines);
* validate: the signature (also against the old container's version, if it still answers) and
  Predict on the recorded samples, with the promotion engine's own checks
  (``repository_engine.check_signature`` / ``check_answers``);
* retire (optional, ``grace_s``): containers of the endpoint older than the old one are stopped
  and removed; the old one is kept for rollback.

The caller then records the new target as the endpoint's active one: that is the traffic switch.
Any failure force-removes the new container and raises ``ContainerPromotionFailed`` (a
``PromotionFailed``: ``step`` + ``reason``); the old container is never touched on failure.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker

from releases.deploy import docker_engine
from releases.deploy.repository_engine import (
    OnStep, PromotionFailed, Samples, Reporter, check_answers, check_signature)
from releases.errors import DockerEngineError
from releases.tfserving import (
    AVAILABLE, EndpointUnreachable, LoadFailed, ServingTimeout, TFServingClient, VersionNotLoaded)

log = logging.getLogger(__name__)

LABEL_RELEASE = "io.modelyard.release"
LABEL_MODEL = "io.modelyard.model"
LABEL_VERSION = "io.modelyard.version"
LABEL_ENDPOINT = "io.modelyard.endpoint"
LABEL_GRPC_PORT = "io.modelyard.grpc-port"
LABEL_REST_PORT = "io.modelyard.rest-port"
DEFAULT_HOST = "127.0.0.1"
LOG_TAIL_LINES = 30
STOP_TIMEOUT_S = 10
_NAME_OK = re.compile(r"[^a-zA-Z0-9_.-]+")


# --- errors ------------------------------------------------------------------------------------

class ContainerError(DockerEngineError):
    """The Docker engine is unreachable or refused an operation. ``retryable``: the same call may
    work later (engine down, 5xx) rather than needing a change (bad image, GPU not available)."""


class ContainerExited(DockerEngineError):
    """The new container stopped (or was restarted by its restart policy) before serving."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


class PortInUse(DockerEngineError):
    """A port the new container should listen on (host networking) is already taken."""


class ContainerGone(VersionNotLoaded):
    """A container that should be kept (the rollback target) is no longer running."""


class ContainerPromotionFailed(PromotionFailed):
    """PromotionFailed for the docker kind. ``removed_container_id``: the new container, removed."""

    def __init__(self, step: str, reason: BaseException, *, model_name: str, version: int,
                 removed_container_id: str | None, remove_error: BaseException | None = None) -> None:
        super().__init__(step, reason, model_name=model_name, version=version)
        self.removed_container_id = removed_container_id
        self.remove_error = remove_error
        if remove_error is not None:
            self.message += (f" Removing the new container {removed_container_id} failed too: "
                             f"{getattr(remove_error, 'message', remove_error)}")
            self.args = (self.message,)


# --- values ------------------------------------------------------------------------------------

@dataclass
class ContainerSpec:
    image_ref: str
    name: str
    grpc_port: int
    rest_port: int
    gpu: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    restart_policy: dict[str, Any] = field(default_factory=lambda: {"Name": "unless-stopped"})
    extra_args: list[str] = field(default_factory=list)  # after the image's args, before the ports
    mounts: list[docker.types.Mount] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerTarget:
    container_id: str
    grpc_target: str
    rest_url: str
    version: int | None

    @property
    def grpc_port(self) -> int:
        return int(self.grpc_target.rsplit(":", 1)[1])

    @property
    def rest_port(self) -> int:
        return int(self.rest_url.rsplit(":", 1)[1])


@dataclass(frozen=True)
class ContainerPromotion:
    new_container_id: str
    grpc_target: str
    rest_url: str
    previous_container_id: str | None
    model_name: str = ""
    version: int = 0
    steps: tuple[tuple[str, str], ...] = ()
    duration_s: float = 0.0
    retirement: "Retirement | None" = field(default=None, compare=False, repr=False)


# --- engine helpers ----------------------------------------------------------------------------

def _engine_error(client: Any, exc: BaseException, doing: str) -> ContainerError:
    # A host without the NVIDIA runtime answers 500 "could not select device driver": permanent.
    return docker_engine.engine_error(client, exc, doing, ContainerError, permanent=("could not select device driver",))


def free_port_pair(host: str = "0.0.0.0") -> tuple[int, int]:
    """Two distinct free TCP ports (gRPC, REST). Both are held while the second is picked."""
    first, second = socket.socket(), socket.socket()
    try:
        first.bind((host, 0))
        second.bind((host, 0))
        return first.getsockname()[1], second.getsockname()[1]
    finally:
        first.close()
        second.close()


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def container_labels(*, endpoint_name: str, model_name: str, version: int,
                     release_id: int | str | None = None, grpc_port: int | None = None,
                     rest_port: int | None = None) -> dict[str, str]:
    labels = {LABEL_ENDPOINT: endpoint_name, LABEL_MODEL: model_name, LABEL_VERSION: str(version),
              LABEL_RELEASE: "" if release_id is None else str(release_id)}
    if grpc_port is not None:
        labels[LABEL_GRPC_PORT] = str(grpc_port)
    if rest_port is not None:
        labels[LABEL_REST_PORT] = str(rest_port)
    return labels


def container_name(endpoint_name: str, version: int) -> str:
    slug = _NAME_OK.sub("-", endpoint_name).strip("-._") or "endpoint"
    return f"modelyard-{slug[:60]}-v{version}-{uuid.uuid4().hex[:8]}"


def serving_command(image_args: Sequence[str] | None, spec: ContainerSpec) -> list[str]:
    """The image's serving args (its CMD), then extra args, then the ports: last, so they win over
    the entrypoint's ``--port=8500 --rest_api_port=8501`` (last occurrence of a flag wins)."""
    return [*(image_args or []), *spec.extra_args,
            f"--port={spec.grpc_port}", f"--rest_api_port={spec.rest_port}"]


def create_kwargs(spec: ContainerSpec, image_args: Sequence[str] | None) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create`` (pure: no engine needed)."""
    kwargs: dict[str, Any] = dict(
        image=spec.image_ref, command=serving_command(image_args, spec), name=spec.name,
        labels={**spec.labels, LABEL_GRPC_PORT: str(spec.grpc_port),
                LABEL_REST_PORT: str(spec.rest_port)},
        network_mode="host", restart_policy=dict(spec.restart_policy), detach=True,
        environment=dict(spec.environment), mounts=list(spec.mounts))
    if spec.gpu:
        kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return kwargs


def image_serving_args(client: Any, image_ref: str, *, pull: bool = True) -> list[str]:
    """The image's CMD (the serving args image_build.build_image bakes in); pulls a missing image."""
    try:
        try:
            image = client.images.get(image_ref)
        except docker.errors.ImageNotFound:
            if not pull:
                raise ContainerError(f"Image {image_ref} is not on the Docker host") from None
            image = client.images.pull(image_ref)
    except ContainerError:
        raise
    except docker.errors.NotFound as exc:
        raise ContainerError(f"Image {image_ref} is neither on the Docker host nor pullable: "
                             f"{exc.explanation or exc}") from None
    except docker_engine.ENGINE_ERRORS as exc:
        raise _engine_error(client, exc, f"looking up image {image_ref}") from None
    return list((image.attrs.get("Config") or {}).get("Cmd") or [])


def start_container(client: Any, spec: ContainerSpec, image_args: Sequence[str] | None = None) -> Any:
    """Create and start the container (host networking). ``image_args``: the image's CMD, looked
    up when not given. If start fails (e.g. no GPU for a device request) the created container is
    removed and ContainerError raised."""
    if image_args is None:
        image_args = image_serving_args(client, spec.image_ref)
    try:
        container = client.containers.create(**create_kwargs(spec, image_args))
    except docker_engine.ENGINE_ERRORS as exc:
        raise _engine_error(client, exc, f"creating container {spec.name} from {spec.image_ref}") from None
    try:
        container.start()
    except docker_engine.ENGINE_ERRORS as exc:
        error = _engine_error(client, exc, f"starting container {spec.name}"
                                           f"{' with GPU device requests' if spec.gpu else ''}")
        _remove(container)
        raise error from None
    return container


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


def log_tail(container: Any, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return container.logs(tail=lines).decode("utf-8", "replace").rstrip()
    except Exception as exc:  # the container may be gone already
        return f"(logs unavailable: {exc})"


def target_of(container: Any, host: str = DEFAULT_HOST) -> ContainerTarget:
    labels = container.labels or {}
    try:
        grpc_port, rest_port = int(labels[LABEL_GRPC_PORT]), int(labels[LABEL_REST_PORT])
    except (KeyError, ValueError):
        raise ContainerError(f"Container {container.name} has no Modelyard port labels") from None
    version = labels.get(LABEL_VERSION)
    return ContainerTarget(container.id, f"{host}:{grpc_port}", f"http://{host}:{rest_port}",
                           int(version) if version and version.isdigit() else None)


def endpoint_containers(client: Any, endpoint_name: str) -> list[Any]:
    """Every container (running or not) labelled with this endpoint, oldest first."""
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint_name}"})
    except docker_engine.ENGINE_ERRORS as exc:
        raise _engine_error(client, exc, f"listing containers of endpoint {endpoint_name}") from None
    return sorted(found, key=lambda c: c.attrs.get("Created", ""))


# --- promotion ---------------------------------------------------------------------------------

class _SignatureSource:
    """check_signature reads both signatures from one client; here the reference version lives in
    the old container. Routes ``signature(version=...)`` to the container serving that version."""

    def __init__(self, new: TFServingClient, new_version: int, old: TFServingClient) -> None:
        self.new, self.new_version, self.old = new, new_version, old

    def signature(self, name: str, version: int | None = None, **kwargs: Any) -> Any:
        client = self.new if version == self.new_version else self.old
        return client.signature(name, version=version, **kwargs)


def promote_container(client: Any, *, endpoint_name: str, model_name: str, version: int,
                      image_ref: str, samples: Mapping[str, Any] | Samples,
                      tolerance: tuple[float, float] = (1e-5, 1e-6), old: Any | None = None,
                      ports: tuple[int, int] | None = None, on_step: OnStep | None = None,
                      deadline_s: float = 120.0, grace_s: float | None = None,
                      gpu: bool = False, release_id: int | str | None = None,
                      label: str | None = None, extra_args: Iterable[str] = (),
                      mounts: Iterable[docker.types.Mount] = (),
                      environment: Mapping[str, str] | None = None,
                      restart_policy: Mapping[str, Any] | None = None,
                      host: str = DEFAULT_HOST, accept_signature_change: bool = False) -> ContainerPromotion:
    """Start ``image_ref`` beside ``old``, wait until ``version`` is AVAILABLE, validate it
    (signature + recorded samples, through ``label`` if given, else the version), and return its
    target. The caller switches traffic by recording ``grpc_target``/``rest_url`` as active.

    ``grace_s``: if not None, once validated, a background ``Retirement`` (returned as
    ``.retirement``) waits ``grace_s`` seconds - time for the caller to switch traffic and for
    requests in flight to finish - then stops and removes this endpoint's containers older than
    ``old``; the new one and ``old`` (the rollback target) are kept. It is off the promotion's
    critical path; a retirement that dies with its process is picked up by the next one.
    Steps: check, start, available, validate, [retire], done; on failure remove, failed, then
    ContainerPromotionFailed(step, reason)."""
    parsed = Samples.parse(dict(samples) if isinstance(samples, Mapping) else samples)
    report = Reporter(on_step)
    started = time.monotonic()
    deadline = started + deadline_s
    state: dict[str, Any] = {"step": "check", "container": None}

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServingTimeout(f"The promotion deadline of {deadline_s:g} s passed")
        return left

    try:
        # check: nothing is started unless the engine answers, the image is there, ports are free
        try:
            client.ping()
        except docker_engine.ENGINE_ERRORS as exc:
            raise _engine_error(client, exc, "pinging") from None
        image_args = image_serving_args(client, image_ref)
        grpc_port, rest_port = ports or free_port_pair()
        if grpc_port == rest_port:
            raise PortInUse(f"gRPC and REST ports must differ (both {grpc_port})")
        busy = [p for p in (grpc_port, rest_port) if not port_free(p)]
        if busy:
            raise PortInUse(f"Port(s) {busy} are already in use on the Docker host (host "
                            f"networking): pick other ports for the new container")
        old_target = None
        if old is not None:
            old_target = target_of(old, host)
            if grpc_port in _ports(old_target) or rest_port in _ports(old_target):
                raise PortInUse(f"Ports {grpc_port}/{rest_port} are the old container's")
        report("check", f"engine {docker_engine.engine_address(client)} answers; image {image_ref}; ports "
                        f"{grpc_port}/{rest_port} free")

        state["step"] = "start"
        spec = ContainerSpec(
            image_ref=image_ref, name=container_name(endpoint_name, version), grpc_port=grpc_port,
            rest_port=rest_port, gpu=gpu,
            labels=container_labels(endpoint_name=endpoint_name, model_name=model_name,
                                    version=version, release_id=release_id),
            extra_args=list(extra_args), mounts=list(mounts), environment=dict(environment or {}))
        if restart_policy is not None:
            spec.restart_policy = dict(restart_policy)
        container = start_container(client, spec, image_args)
        state["container"] = container
        report("start", f"container {container.name} ({container.id[:12]}) beside "
                        f"{old.name if old is not None else 'nothing'}; gpu={gpu}")

        state["step"] = "available"
        grpc_target, rest_url = f"{host}:{grpc_port}", f"http://{host}:{rest_port}"
        with TFServingClient(grpc_target, rest_url=rest_url) as serving:
            _wait_serving(client, container, serving, model_name, version, remaining)
            report("available", f"version {version} is AVAILABLE at {grpc_target}")

            state["step"] = "validate"
            reference = old_target.version if old_target is not None else None
            note = ""
            signature_client: Any = serving
            if reference is not None and reference != version:
                old_serving = TFServingClient(old_target.grpc_target, timeout=5)
                if old_serving.reachable(timeout=1.0):
                    signature_client = _SignatureSource(serving, version, old_serving)
                else:
                    reference, note = None, " (old container not answering: not compared)"
            else:
                old_serving = None
            try:
                changes = check_signature(signature_client, model_name, version, parsed, reference,
                                          accept_change=accept_signature_change)
            finally:
                if old_serving is not None:
                    old_serving.close()
            remaining()
            check_answers(serving, model_name, version, parsed, tolerance, label=label)
            report("validate", f"signature{'' if reference is None else f' (vs version {reference})'}"
                               f"{note} and {len(parsed.inputs)} sample answers match through "
                               f"{f'label {label!r}' if label else f'version {version}'}"
                               + (f"; signature change approved: {'; '.join(changes)}" if changes else ""))

        retirement = None
        if grace_s is not None:
            keep = {container.id} | ({old.id} if old is not None else set())
            retirement = Retirement(client, endpoint_name, keep, grace_s)
            report("retire", f"containers of {endpoint_name} older than "
                             f"{old.name if old is not None else 'this one'} retire in the background "
                             f"after {grace_s:g} s; {old.name if old is not None else 'nothing'} kept "
                             f"for rollback")
        duration = time.monotonic() - started
        report("done", f"{model_name} version {version} serves at {grpc_target} in {duration:.2f} s; "
                       f"switch traffic to it")
        return ContainerPromotion(container.id, grpc_target, rest_url,
                                  old.id if old is not None else None, model_name, version,
                                  tuple(report.steps), duration, retirement)
    except Exception as exc:
        step, container = state["step"], state["container"]
        remove_error = None
        if container is not None:
            logs = log_tail(container)
            if logs and not isinstance(exc, ContainerExited):
                log.info("container %s logs:\n%s", container.name, logs)
            try:
                _remove(container)
                report("remove", f"removed the new container {container.name}"
                                 f"{'; old container untouched' if old is not None else ''}")
            except Exception as error:  # engine went away meanwhile
                remove_error = error
                report("remove", f"could not remove {container.name}: {error}")
        error = ContainerPromotionFailed(step, exc, model_name=model_name, version=version,
                                         removed_container_id=container.id if container is not None else None,
                                         remove_error=remove_error)
        report("failed", error.message)
        raise error from exc


def _ports(target: ContainerTarget) -> set[int]:
    return {target.grpc_port, target.rest_port}


def _check_running(client: Any, container: Any) -> None:
    try:
        container.reload()
    except docker.errors.NotFound:
        raise ContainerExited(f"Container {container.name} disappeared") from None
    except docker_engine.ENGINE_ERRORS as exc:
        raise _engine_error(client, exc, f"inspecting {container.name}") from None
    status = container.attrs.get("State") or {}
    restarts = int(container.attrs.get("RestartCount") or 0)
    if status.get("Status") in ("exited", "dead", "restarting") or restarts > 0:
        logs = log_tail(container)
        raise ContainerExited(
            f"Container {container.name} stopped before serving (status {status.get('Status')}, "
            f"exit code {status.get('ExitCode')}, restarts {restarts}); last log lines:\n{logs}",
            logs=logs)


def _wait_serving(client: Any, container: Any, serving: TFServingClient, model_name: str,
                  version: int, remaining: Any) -> None:
    """Poll until gRPC answers, then until `version` is AVAILABLE; the container's state is
    checked between polls so an exit fails fast with its logs."""
    while True:
        _check_running(client, container)
        if serving.reachable(timeout=0.5):
            break
        remaining()
        time.sleep(0.1)
    while True:
        _check_running(client, container)
        left = remaining()  # ServingTimeout once the deadline has passed
        try:
            serving.wait_available(model_name, version, min(left, 1.0))
            return
        except ServingTimeout:
            if left <= 1.0:
                raise
        except (EndpointUnreachable, LoadFailed):
            _check_running(client, container)  # an exit explains it better, with the logs
            raise


# --- retire and rollback -----------------------------------------------------------------------

class Retirement:
    """retire_containers() in a daemon thread (after its grace period); ``wait()`` returns the
    removed ids or raises what it raised."""

    def __init__(self, client: Any, endpoint_name: str, keep_ids: set[str], grace_s: float) -> None:
        self.endpoint_name, self.keep_ids, self.grace_s = endpoint_name, set(keep_ids), grace_s
        self.removed: list[str] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(client,), daemon=True,
                                        name=f"retire-{endpoint_name}")
        self._thread.start()

    def _run(self, client: Any) -> None:
        try:
            self.removed = retire_containers(client, self.endpoint_name, self.keep_ids,
                                             grace_s=self.grace_s)
        except BaseException as exc:  # reported by wait(); the next promotion retries
            self.error = exc
            log.warning("retiring containers of %s failed: %s", self.endpoint_name, exc)

    def wait(self, timeout: float | None = None) -> list[str]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise ServingTimeout(f"Retirement of {self.endpoint_name}'s old containers still running "
                                 f"after {timeout:g} s")
        if self.error is not None:
            raise self.error
        return list(self.removed)


def retire_containers(client: Any, endpoint_name: str, keep_ids: set[str], *,
                      grace_s: float = 0.0, stop_timeout: int = STOP_TIMEOUT_S) -> list[str]:
    """Stop and remove this endpoint's containers that are older than the newest kept one and not
    in ``keep_ids`` (full ids or unique prefixes). Containers newer than every kept one (another
    promotion's, in progress) are left alone. Waits ``grace_s`` first when there is anything to
    retire (requests in flight on it finish); ``stop`` then sends SIGTERM with ``stop_timeout``.
    Returns the removed container ids."""
    containers = endpoint_containers(client, endpoint_name)

    def kept(container: Any) -> bool:
        return any(container.id.startswith(k) for k in keep_ids if k)

    kept_created = [c.attrs.get("Created", "") for c in containers if kept(c)]
    newest_kept = max(kept_created) if kept_created else None
    victims = [c for c in containers if not kept(c)
               and (newest_kept is None or c.attrs.get("Created", "") < newest_kept)]
    if not victims:
        return []
    if grace_s > 0:
        time.sleep(grace_s)
    removed = []
    for container in victims:
        try:
            container.stop(timeout=stop_timeout)
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker_engine.ENGINE_ERRORS as exc:
            raise _engine_error(client, exc, f"retiring container {container.name}") from None
        removed.append(container.id)
        log.info("retired container %s of endpoint %s", container.name, endpoint_name)
    return removed


def rollback_container(client: Any, *, endpoint_name: str, container_id: str,
                       model_name: str | None = None, host: str = DEFAULT_HOST,
                       timeout: float = 2.0) -> ContainerTarget:
    """The target of the kept previous container, if it is still running and serving (its version
    AVAILABLE when ``model_name`` is given). The caller records it as the active target."""
    try:
        container = client.containers.get(container_id)
    except docker.errors.NotFound:
        raise ContainerGone(f"Rollback container {container_id[:12]} of endpoint {endpoint_name} "
                            f"no longer exists: promote that release again") from None
    except docker_engine.ENGINE_ERRORS as exc:
        raise _engine_error(client, exc, f"inspecting container {container_id[:12]}") from None
    if (container.labels or {}).get(LABEL_ENDPOINT) != endpoint_name:
        raise ContainerGone(f"Container {container.name} does not belong to endpoint {endpoint_name}")
    if container.status != "running":
        raise ContainerGone(f"Rollback container {container.name} is {container.status}, not "
                            f"running: promote that release again")
    target = target_of(container, host)
    with TFServingClient(target.grpc_target, timeout=timeout) as serving:
        if not serving.reachable(timeout=timeout):
            raise ContainerGone(f"Rollback container {container.name} runs but {target.grpc_target} "
                                f"does not answer")
        if model_name is not None and target.version is not None:
            state = serving.model_status(model_name).get(target.version, ("not loaded", ""))[0]
            if state != AVAILABLE:
                raise ContainerGone(f"Version {target.version} of {model_name} is {state} in "
                                    f"rollback container {container.name}")
    return target
