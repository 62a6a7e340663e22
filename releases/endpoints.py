"""What an endpoint may point Modelyard at: the operator's policy for paths, Docker hosts and
serving profiles.

Promotion writes into an endpoint's model repository, rewrites its ``models.config`` and deletes
retired version directories there; a docker endpoint runs containers on its Docker host with the
profile's mounts. So every path, host and profile key an endpoint names is checked here against
what the operator configured (``MODELYARD_SERVING_ROOTS``, ``MODELYARD_DOCKER_HOSTS``), when the
endpoint is registered or changed and again each time it is used (settings may have changed since,
or the row may predate these rules). Every refusal is an ``EndpointRefused`` naming the field.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings

from registry.models import slug_validator
from releases.errors import ReleaseError

DEFAULT_CONFIG_NAME = "models.config"
MAX_MOUNTS = 32
MAX_ENV_VARS = 64
MAX_ENV_VALUE = 4096
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_MODEL_NAME = re.compile(slug_validator.regex.pattern)


class EndpointRefused(ReleaseError):
    """An endpoint field names something the operator did not allow (400, names the field)."""

    code = "validation_error"

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}", details={"field": field})
        self.field = field


# --- paths ---------------------------------------------------------------------------------------

def serving_roots() -> list[Path]:
    """The directories model repositories must lie under (MODELYARD_SERVING_ROOTS), resolved."""
    return [Path(root).resolve() for root in settings.SERVING_ROOTS]


def owned_paths() -> dict[str, Path]:
    """Modelyard's own directories, which no repository may equal, enter or contain."""
    var = Path(settings.VAR_DIR).resolve()
    return {"the storage root": Path(settings.STORAGE_ROOT).resolve(),
            "the routes directory": Path(settings.ROUTES_DIR).resolve(),
            "the upload directory": Path(settings.FILE_UPLOAD_TEMP_DIR).resolve(),
            "the log directory": var / "log",
            "the locks directory": var / "locks",
            "the static files": Path(settings.STATIC_ROOT).resolve()}


def enclosing_paths() -> dict[str, Path]:
    """Directories a repository may lie inside (the default root is in the var dir) but never
    equal or contain: a repository holding them would let promotion's clean-up reach them."""
    return {"the var directory": Path(settings.VAR_DIR).resolve(),
            "Modelyard's code": Path(settings.BASE_DIR).resolve()}


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _overlap(path: Path, other: Path) -> bool:
    return _within(path, other) or _within(other, path)


def _clean_absolute(field: str, raw: str) -> Path:
    """An absolute path without `..` or NUL, as written (symlinks not yet resolved)."""
    if not raw:
        raise EndpointRefused(field, "is required")
    if "\0" in raw:
        raise EndpointRefused(field, "contains a NUL byte")
    if not os.path.isabs(raw):
        raise EndpointRefused(field, f"must be an absolute path, got {raw!r}")
    if ".." in Path(raw).parts:
        raise EndpointRefused(field, f"must not contain '..' ({raw!r})")
    return Path(raw)


def check_not_owned(field: str, path: Path) -> None:
    """Refuse a (resolved) path that overlaps Modelyard's own storage, var dir or code."""
    for what, owned in owned_paths().items():
        if _overlap(path, owned):
            raise EndpointRefused(field, f"{path} overlaps {what} ({owned}); Modelyard never serves from there")
    for what, enclosing in enclosing_paths().items():
        if _within(enclosing, path):
            raise EndpointRefused(field, f"{path} contains {what} ({enclosing})")


def validate_repository(repository_path: str, config_path: str = "", *,
                        other_repositories: Iterable[str] = ()) -> tuple[Path, Path]:
    """The resolved (repository, models.config) of a model_repository endpoint, or EndpointRefused.

    The repository, symlinks resolved, must lie under one of MODELYARD_SERVING_ROOTS, must not
    overlap Modelyard's own directories, and must not nest inside or around another endpoint's
    repository (sharing one is fine: several servers may read one volume). The config file
    (default ``<repository>/models.config``) must be a file directly inside the repository whose
    name can never be a model's directory. Nothing is created or read here.
    """
    raw = _clean_absolute("repository_path", repository_path)
    repository = raw.resolve()
    roots = serving_roots()
    if not any(_within(repository, root) for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "none configured"
        via = "" if repository == raw else f" (resolves to {repository})"
        raise EndpointRefused("repository_path", f"{raw}{via} is not under an allowed serving root "
                                                 f"(MODELYARD_SERVING_ROOTS: {allowed})")
    check_not_owned("repository_path", repository)
    for other in other_repositories:
        other_path = Path(other).resolve()
        if other_path != repository and _overlap(repository, other_path):
            raise EndpointRefused("repository_path", f"{repository} nests with another endpoint's repository "
                                                     f"({other_path})")
    return repository, validate_config_path(config_path, repository)


def validate_config_path(config_path: str, repository: Path) -> Path:
    if not config_path:
        return repository / DEFAULT_CONFIG_NAME
    raw = _clean_absolute("config_path", config_path)
    config = raw.resolve()
    if config.parent != repository:
        raise EndpointRefused("config_path", f"{raw} must be a file directly inside repository_path "
                                             f"({repository}), e.g. {repository / DEFAULT_CONFIG_NAME}")
    if config.name.startswith(".") or _MODEL_NAME.match(config.name):
        raise EndpointRefused("config_path", f"{config.name!r} could collide with a model directory or "
                                             f"Modelyard's own files; use a name like {DEFAULT_CONFIG_NAME}")
    if config.is_dir():
        raise EndpointRefused("config_path", f"{config} is a directory")
    return config


# --- docker hosts ----------------------------------------------------------------------------------

def _normal_host(host: str) -> str:
    return host.strip().rstrip("/")


def allowed_docker_hosts() -> list[str]:
    return [_normal_host(h) for h in settings.DOCKER_HOSTS]


def validate_docker_host(docker_host: str) -> str:
    """An empty host means the configured default engine; any other must be in MODELYARD_DOCKER_HOSTS."""
    if not docker_host:
        return ""
    if _normal_host(docker_host) not in allowed_docker_hosts():
        raise EndpointRefused("docker_host", f"{docker_host!r} is not an allowed Docker host "
                                             f"(MODELYARD_DOCKER_HOSTS: {', '.join(allowed_docker_hosts())})")
    return docker_host


# --- serving profile -------------------------------------------------------------------------------

def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise EndpointRefused(f"profile.{key}", f"must be true or false, got {type(value).__name__}")
    return value


def _batching(key: str, value: Any) -> dict[str, Any] | None:
    from releases.deploy.image_context import ImageBuildError, batching_parameters

    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise EndpointRefused(f"profile.{key}", "must be an object of BatchingParameters fields, or null")
    try:
        batching_parameters(value)
    except ImageBuildError as exc:
        raise EndpointRefused(f"profile.{key}", str(exc)) from None
    return dict(value)


def _fraction(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise EndpointRefused(f"profile.{key}", f"must be a number in (0, 1], got {value!r}")
    return float(value)


def _mounts(key: str, value: Any) -> list[dict[str, Any]]:
    """Read-only bind mounts for the serving container. Read-only because a served SavedModel's
    graph can run file ops (tf.io.write_file), and the model comes from release rights, not the
    operator."""
    if not isinstance(value, list) or len(value) > MAX_MOUNTS:
        raise EndpointRefused(f"profile.{key}", f"must be a list of at most {MAX_MOUNTS} mounts")
    mounts = []
    for i, mount in enumerate(value):
        where = f"profile.{key}[{i}]"
        if not isinstance(mount, Mapping) or set(mount) - {"source", "target", "read_only"}:
            raise EndpointRefused(where, "must be an object with source, target and optional read_only")
        if mount.get("read_only", True) is not True:
            raise EndpointRefused(f"{where}.read_only", "mounts are read-only: a served model's graph can "
                                                        "write files")
        paths = {}
        for part in ("source", "target"):
            raw = mount.get(part)
            if not isinstance(raw, str):
                raise EndpointRefused(f"{where}.{part}", "must be an absolute path")
            paths[part] = str(_clean_absolute(f"{where}.{part}", raw))
        check_not_owned(f"{where}.source", Path(paths["source"]).resolve())
        mounts.append({**paths, "read_only": True})
    return mounts


def _environment(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_ENV_VARS:
        raise EndpointRefused(f"profile.{key}", f"must be an object of at most {MAX_ENV_VARS} variables")
    for name, text in value.items():
        if not _ENV_NAME.match(str(name)):
            raise EndpointRefused(f"profile.{key}", f"{str(name)[:40]!r} is not an environment variable name")
        if not isinstance(text, str) or len(text) > MAX_ENV_VALUE or "\0" in text:
            raise EndpointRefused(f"profile.{key}.{name}", f"must be a string of at most {MAX_ENV_VALUE} "
                                                          "characters")
    return dict(value)


# Every key something reads: batching, gpu_memory_fraction, xla, prefer_tflite (Endpoint.serving_profile,
# image_context.ImageSpec), gpu, mounts, environment (releases/deploy/docker_driver.py).
PROFILE_SCHEMA = {
    "batching": _batching, "gpu_memory_fraction": _fraction, "xla": _bool, "prefer_tflite": _bool,
    "gpu": _bool, "mounts": _mounts, "environment": _environment,
}


def validate_profile(profile: Any) -> dict[str, Any]:
    """The endpoint's serving-profile overrides, checked key by key; unknown keys are refused."""
    if profile is None:
        return {}
    if not isinstance(profile, Mapping):
        raise EndpointRefused("profile", f"must be a JSON object, got {type(profile).__name__}")
    unknown = sorted(str(k)[:40] for k in profile if k not in PROFILE_SCHEMA)
    if unknown:
        raise EndpointRefused(f"profile.{unknown[0]}", f"unknown key (known: {', '.join(PROFILE_SCHEMA)})")
    return {key: PROFILE_SCHEMA[key](key, value) for key, value in profile.items()}


# --- per kind: the fields each kind needs, checked now ------------------------------------------------

def _repository_fields(endpoint: Any) -> dict[str, Any]:
    """A model_repository endpoint: a gRPC address and a repository under a serving root."""
    from releases.models import Endpoint

    if not endpoint.grpc_target:
        raise EndpointRefused("grpc_target", "a model_repository endpoint needs the server's gRPC address")
    if endpoint.docker_host:
        raise EndpointRefused("docker_host", "only docker endpoints have a Docker host")
    others = Endpoint.objects.filter(kind=endpoint.kind).exclude(pk=endpoint.pk)
    base, config = validate_repository(endpoint.repository_path, endpoint.config_path,
                                       other_repositories=others.values_list("repository_path", flat=True))
    return {"repository_path": base, "config_path": config}


def _docker_fields(endpoint: Any) -> dict[str, Any]:
    """A docker endpoint: a port base for its containers and an allowed engine."""
    if not endpoint.grpc_port_base:
        raise EndpointRefused("grpc_port_base", "a docker endpoint needs it (containers use base/base+1, "
                                                "base+2/base+3 and base+4/base+5)")
    if endpoint.repository_path or endpoint.config_path:
        raise EndpointRefused("repository_path", "only model_repository endpoints have a repository")
    return {"docker_host": validate_docker_host(endpoint.docker_host)}


# A kind missing here has no fields beyond the common ones (name, gRPC target, profile).
KIND_FIELDS = {"model_repository": _repository_fields, "docker": _docker_fields}


def checked_fields(endpoint: Any) -> dict[str, Any]:
    """The endpoint's kind-specific fields, resolved and checked against the operator's policy
    (again at every use: the settings may have changed since it was registered)."""
    check = KIND_FIELDS.get(endpoint.kind)
    return check(endpoint) if check is not None else {}
