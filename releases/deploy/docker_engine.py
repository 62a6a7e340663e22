"""Docker engine calls shared by image builds and containers: the low-level client of either SDK
client, where the engine is, and one translation of SDK failures into a caller's error with a
``retryable`` flag. Django-free."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import requests

ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)
E = TypeVar("E", bound=Exception)


def api_of(client: Any) -> Any:
    """The low-level APIClient of a DockerClient, or the APIClient itself."""
    return getattr(client, "api", client)


def engine_address(client: Any) -> str:
    api = api_of(client)
    adapter = getattr(api, "_custom_adapter", None)
    socket_path = getattr(adapter, "socket_path", None)
    if socket_path:
        return f"unix://{socket_path}"
    base = getattr(api, "base_url", "") or ""
    if base and not base.startswith("http+docker://"):
        return base
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def is_connection_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError,
                            FileNotFoundError)):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def engine_error(client: Any, exc: BaseException, doing: str, error: Callable[..., E], *,
                 permanent: tuple[str, ...] = ()) -> E:
    """Translate a docker SDK failure into ``error(message, retryable=...)``: the engine being
    unreachable and its 5xx answers are retryable, except 5xx whose text holds one of
    ``permanent`` (e.g. no GPU driver: retrying will not help)."""
    if is_connection_error(exc) or (isinstance(exc, docker.errors.DockerException)
                                     and "Error while fetching server API version" in str(exc)):
        return error(f"Docker engine unreachable at {engine_address(client)} while "
                     f"{doing}: is dockerd running and its socket accessible?", retryable=True)
    if isinstance(exc, docker.errors.APIError):
        status = getattr(exc, "status_code", None) or 0
        text = str(exc.explanation or exc)
        return error(f"Docker engine refused {doing}: {text}",
                     retryable=status >= 500 and not any(p in text for p in permanent))
    return error(f"Docker error while {doing}: {exc}", retryable=True)

