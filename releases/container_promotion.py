"""The Django side of promoting to a ``docker`` endpoint: run the release's image beside the
current container, validate it, then switch traffic to it and keep the previous one running for
rollback. The switch records the container as the endpoint's active one (its gRPC target is in
the API) and rewrites the endpoint's route file, which ``releases.router`` follows per RPC, so
clients of the router's fixed address move without an error. The container work is
``releases.containers``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from registry.errors import RegistryError
from releases import containers
from releases.endpoints import validate_docker_host, validate_profile
from releases.models import Endpoint, Promotion, Release
from releases.router import write_route


def docker_client(endpoint: Endpoint) -> Any:
    import docker

    # Checked at every use: MODELYARD_DOCKER_HOSTS may have changed since the endpoint was registered.
    base_url = validate_docker_host(endpoint.docker_host) or settings.DOCKER_HOST
    try:
        if base_url:
            return docker.DockerClient(base_url=base_url, timeout=settings.DOCKER_TIMEOUT)
        return docker.from_env(timeout=settings.DOCKER_TIMEOUT)
    except docker.errors.DockerException as exc:
        raise containers.ContainerError(f"Docker engine unreachable at {base_url or 'the default socket'}: {exc}",
                                        retryable=True) from exc


def _container(client: Any, container_id: str) -> Any | None:
    import docker

    if not container_id:
        return None
    try:
        return client.containers.get(container_id)
    except docker.errors.NotFound:
        return None


def _ports(endpoint: Endpoint, old: Any | None) -> tuple[int, int]:
    """Side by side on host networking: alternate between two port pairs."""
    base = int(endpoint.grpc_port_base or 9500)
    if old is not None and containers.target_of(old).grpc_port == base:
        return base + 2, base + 3
    return base, base + 1


def _mounts(profile: dict[str, Any]) -> list[Any]:
    import docker

    return [docker.types.Mount(target=m["target"], source=m["source"], type="bind",
                               read_only=bool(m.get("read_only", True))) for m in profile.get("mounts", [])]


def endpoint_lock(endpoint: Endpoint) -> Any:
    """One promotion at a time per docker endpoint (model repositories lock their own directory)."""
    from releases.promotion_engine import file_lock

    locks = Path(settings.VAR_DIR) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return file_lock(locks / f"endpoint-{endpoint.name}.lock", timeout_s=settings.PROMOTION_DEADLINE)


def promote(release: Release, promotion: Promotion, samples: dict[str, Any], on_step: Any) -> int | None:
    with endpoint_lock(promotion.endpoint):
        return _promote(release, promotion, samples, on_step)


def _promote(release: Release, promotion: Promotion, samples: dict[str, Any], on_step: Any) -> int | None:
    endpoint = Endpoint.objects.get(pk=promotion.endpoint_id)  # fresh: the previous holder moved it
    if not release.image_digest:
        raise RegistryError(f"Endpoint {endpoint.name} runs containers: release {release.pk} needs its image "
                            "built first.", code="no_image")
    client = docker_client(endpoint)
    old = _container(client, endpoint.active_container_id)
    profile = {**endpoint.serving_profile(), **validate_profile(endpoint.profile)}  # mounts checked at use too
    from releases.promotion import tolerance_for

    result = containers.promote_container(
        client, endpoint_name=endpoint.name, model_name=release.version.model.name, version=release.version.number,
        image_ref=release.image_ref, samples=samples, tolerance=tolerance_for(release.version), old=old,
        ports=_ports(endpoint, old), on_step=on_step, deadline_s=settings.PROMOTION_DEADLINE,
        gpu=bool(profile.get("gpu")), release_id=release.pk, mounts=_mounts(profile),
        environment=profile.get("environment") or None)
    previous_version = int(old.labels.get("io.modelyard.version")) if old is not None else None
    _switch(endpoint, active=result.new_container_id, previous=old.id if old is not None else "",
            grpc_target=result.grpc_target, rest_url=result.rest_url, version=release.version.number)
    keep = {result.new_container_id} | ({old.id} if old is not None else set())
    containers.retire_containers(client, endpoint.name, keep)
    return previous_version


def rollback(promotion: Promotion) -> None:
    with endpoint_lock(promotion.endpoint):
        _rollback(promotion)


def _rollback(promotion: Promotion) -> None:
    endpoint = Endpoint.objects.get(pk=promotion.endpoint_id)
    client = docker_client(endpoint)
    target = containers.rollback_container(client, endpoint_name=endpoint.name,
                                           container_id=endpoint.previous_container_id)
    _switch(endpoint, active=endpoint.previous_container_id, previous=endpoint.active_container_id,
            grpc_target=target.grpc_target, rest_url=target.rest_url, version=target.version)


def route_path(endpoint_name: str) -> Path:
    return Path(settings.ROUTES_DIR) / f"{endpoint_name}.json"


def _switch(endpoint: Endpoint, *, active: str, previous: str, grpc_target: str, rest_url: str,
            version: int | None) -> None:
    """The traffic switch: the route file first (the router follows it from its next RPC), then
    the endpoint row the API shows."""
    write_route(route_path(endpoint.name), grpc_target=grpc_target, rest_url=rest_url, container_id=active,
                version=version)
    Endpoint.objects.filter(pk=endpoint.pk).update(active_container_id=active, previous_container_id=previous,
                                                   grpc_target=grpc_target, rest_url=rest_url)
