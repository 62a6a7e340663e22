"""The image build of an approved release: generate the context, build on the Docker engine
named by DOCKER_HOST, push to the team's registry, verify by pulling the digest back.

Failures land the release in ``failed`` (step ``build``) with a clear reason and whether a retry
may help (engine or registry unreachable); nothing else about the release changes.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from metrics.models import VersionMetrics
from registry import services as registry
from releases.deploy.image_build import build_image
from releases.deploy.image_context import ImageBuildError, ImageSpec
from releases.deploy.image_registry import push_image, verify_pushed
from releases.models import Release
from releases.services import ReleaseState, release_fail, transition

log = logging.getLogger(__name__)
MAX_WARMUP_REQUESTS = 100  # TF Serving reads at most 1000; a few rows prove the model runs


def docker_client() -> Any:
    import docker

    where = settings.DOCKER_HOST or "the default Docker socket (DOCKER_HOST unset)"
    try:
        if settings.DOCKER_HOST:
            return docker.DockerClient(base_url=settings.DOCKER_HOST, timeout=settings.DOCKER_TIMEOUT)
        return docker.from_env(timeout=settings.DOCKER_TIMEOUT)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"Docker engine unreachable at {where}: {exc}. Retry once it is up.",
                                     retryable=True) from exc


def registry_auth() -> dict[str, str] | None:
    if settings.IMAGE_REGISTRY_USERNAME:
        return {"username": settings.IMAGE_REGISTRY_USERNAME, "password": settings.IMAGE_REGISTRY_PASSWORD or ""}
    return None


def image_repository(release: Release) -> str:
    parts = [settings.IMAGE_REGISTRY, settings.IMAGE_NAMESPACE, release.version.model.name]
    return "/".join(p.strip("/") for p in parts if p)


def warmup_requests(release: Release) -> list[dict[str, np.ndarray]] | None:
    """The version's recorded eval samples, replayed at load by TF Serving (a failing warmup
    fails the load, so a broken model never becomes AVAILABLE)."""
    metrics = VersionMetrics.objects.filter(version=release.version).order_by("-created_at").first()
    samples = metrics.samples if metrics else None
    if not samples or not samples.get("inputs") or samples.get("input_quantization"):
        return None
    dtype = samples.get("dtype") or "float32"
    rows = np.asarray(samples["inputs"], dtype=dtype)[:MAX_WARMUP_REQUESTS]
    return [{samples["input_name"]: rows[i:i + 1]} for i in range(len(rows))]


def append_log(release_id: int, line: str) -> None:
    Release.objects.filter(pk=release_id).update(build_log=Concat(F("build_log"), Value(line.rstrip("\n") + "\n")))


def release_build_run(*, release_id: int) -> None:
    with transaction.atomic():
        release = Release.objects.select_related("version__model", "environment").get(pk=release_id)
        if release.state != ReleaseState.APPROVED:
            log.info("release %s is %s; not building", release_id, release.state)
            return
        release = transition(release, to=ReleaseState.IMAGE_BUILDING, allowed_from=[ReleaseState.APPROVED], actor=None,
                        action="release.build_start", verb="built", fields={"build_log": ""})
    workdir = Path(tempfile.mkdtemp(prefix=f"build-{release_id}-", dir=settings.FILE_UPLOAD_TEMP_DIR))
    try:
        _build(release, workdir)
    except ImageBuildError as exc:
        append_log(release.pk, f"ERROR: {exc}")
        release_fail(release, step="build", reason=str(exc), retryable=exc.retryable, allowed_from=[ReleaseState.IMAGE_BUILDING])
    except Exception as exc:  # noqa: BLE001 - any other failure must still leave a clear state
        log.exception("build of release %s failed", release_id)
        append_log(release.pk, f"ERROR: {type(exc).__name__}: {exc}")
        release_fail(release, step="build", reason=f"{type(exc).__name__}: {exc}", retryable=False,
                     allowed_from=[ReleaseState.IMAGE_BUILDING])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_spec(release: Release, model_dir: Path) -> ImageSpec:
    env = release.environment
    version = release.version
    created = (release.decided_at or release.created_at or timezone.now()).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ImageSpec(
        model_name=version.model.name, version=version.number, release_id=release.pk, saved_model_dir=model_dir,
        model_sha256=version.artifact_sha256, base_image=settings.SERVING_BASE_IMAGE,
        repository=image_repository(release), tag=str(version.number), batching=env.batching,
        gpu_memory_fraction=env.gpu_memory_fraction, xla=env.xla, prefer_tflite=env.prefer_tflite,
        version_labels={"stable": version.number}, warmup_requests=warmup_requests(release),
        source_url=settings.IMAGE_SOURCE_URL, revision=version.artifact_sha256[:12], created=created)


def _build(release: Release, workdir: Path) -> None:
    model_dir = registry.version_unpack(release.version, workdir / "model")
    if not model_dir.is_dir():
        raise ImageBuildError("Only SavedModel versions can be baked into a TF Serving image.",
                                     retryable=False)
    spec = build_spec(release, model_dir)
    client = docker_client()
    def on_log(line: str) -> None:
        append_log(release.pk, line)

    built = build_image(spec, client=client, on_log=on_log)
    pushed = push_image(built, client=client, auth=registry_auth(), on_log=on_log)  # "repo@sha256:…"
    digest = pushed.rpartition("@")[2]
    verify_pushed(spec.repository, digest, client, expected_image_id=built.image_id, auth=registry_auth())
    with transaction.atomic():
        transition(release, to=ReleaseState.IMAGE_READY, allowed_from=[ReleaseState.IMAGE_BUILDING], actor=None,
                   action="release.image_ready", verb="marked image-ready",
                   fields={"image_repository": spec.repository, "image_tag": spec.tag, "image_id": built.image_id,
                           "image_digest": digest, "image_size": built.size,
                           "context_sha256": built.context_sha256},
                   after={"image": f"{spec.repository}@{digest}"})
        if release.environment.auto_promote:
            from releases.promotion import release_promote_request

            release_promote_request(release=release, actor=None)
