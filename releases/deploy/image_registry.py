"""Push a built serving image to the team's registry and verify it: pull the pushed manifest digest
back and check it resolves to the image that was built. Credentials go in the X-Registry-Auth
header only; every message is scrubbed of them. Django-free."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import docker

from releases.deploy.docker_engine import ENGINE_ERRORS, api_of, engine_error
from releases.deploy.image_build import BuiltImage, LogFn
from releases.deploy.image_context import ImageBuildError


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
    api = api_of(client)
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
    except ENGINE_ERRORS as exc:
        # `from None`: the original exception could carry request details; only the scrubbed text
        error = engine_error(client, exc, f"pushing {built.tag_ref}", ImageBuildError)
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
    api = api_of(client)
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
    except ENGINE_ERRORS as exc:
        error = engine_error(client, exc, f"pulling {ref}", ImageBuildError)
        raise ImageBuildError(_scrub(error.message, auth), retryable=error.retryable) from None
    if pulled_digest and pulled_digest != digest:
        raise ImageBuildError(f"Registry served {pulled_digest} for {ref}")
    if ref not in (info.get("RepoDigests") or []):
        raise ImageBuildError(f"{ref} is not among the pulled image's digests "
                              f"{info.get('RepoDigests')}")
    if expected_image_id and info["Id"] != expected_image_id:
        raise ImageBuildError(f"{ref} is image {info['Id']}, but {expected_image_id} was pushed")
