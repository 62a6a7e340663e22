"""Build a release's serving image on a Docker engine: the context (``image_context``) is produced
by a thread while it is sent, the build stream goes to ``on_log`` line by line, and the result is
checked against what the engine then holds. Django-free."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from releases.deploy.docker_engine import ENGINE_ERRORS, api_of, engine_error
from releases.deploy.image_context import (
    BASE_IMAGE_SETTING, ContextStream, ImageBuildError, ImageSpec, context_entries)

BUILD_TIMEOUT_SECONDS = 3600  # per read of the build stream: COPY of a big model prints nothing

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    tag_ref: str
    size: int
    context_sha256: str
    layers: tuple[str, ...] = ()  # RootFS.Layers (diff ids), base image first
    cache_hits: int = 0  # build steps answered "Using cache"



_STEP = re.compile(r"^Step (\d+)/(\d+) : (\S+)")
_TRANSIENT = ("dial tcp", "i/o timeout", "connection refused", "connection reset", "tls handshake",
              "temporary failure", "no such host", "timeout")


def build_image(spec: ImageSpec, *, client: Any, on_log: LogFn,
                nocache: bool = False, timeout: int = BUILD_TIMEOUT_SECONDS) -> BuiltImage:
    """Build ``spec`` on the engine behind ``client``; every build-stream line goes to ``on_log``.

    The context is produced by a thread while it is sent (chunked, ~1 MiB writes): no temporary
    copy of the model on disk and bounded memory. Every build-stream line goes to ``on_log``."""
    api = api_of(client)
    entries = context_entries(spec)  # refuses a bad spec before the engine is contacted
    context = ContextStream(entries)
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
    except ENGINE_ERRORS as exc:
        raise engine_error(client, exc, f"building {spec.image_ref}", ImageBuildError) from exc
    finally:
        context.close()
    context_sha = context.sha256 or ""
    on_log(f"build context sha256 {context_sha} ({context.size} bytes)")
    if not image_id:
        raise ImageBuildError(f"Build of {spec.image_ref} ended without an image id", retryable=True)
    try:
        info = api.inspect_image(spec.image_ref)
    except ENGINE_ERRORS as exc:
        raise engine_error(client, exc, f"inspecting {spec.image_ref}", ImageBuildError) from exc
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
