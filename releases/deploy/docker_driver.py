"""The ``docker`` kind: the release's serving image run as a container on a Docker host, behind
``releases.router`` at a fixed address.

A promotion runs the new container beside the current one (``containers.promote_container``:
start, wait until AVAILABLE, validate), then switches traffic by rewriting the endpoint's route
file, which the router follows per request: all of it to the new container, or, for a canary,
``weight`` % of it (the rest stays on the current container). ``complete_canary`` moves the route to
100 % new, ``rollback`` to 100 % on the kept previous container. The previous container is kept
running for rollback; older ones are retired.

The route file is also this driver's state (which container is active, which is kept): it is
read and written under the endpoint's lock, so two workers promoting to the same endpoint see
each other's switch. The endpoint row only mirrors it (``Outcome.endpoint_changes``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker

from releases.deploy import containers
from releases.deploy.base import EndpointDriver, Health, OnStep, Outcome, register
from releases.deploy.durable import file_lock
from releases.deploy.repository_engine import PromotionFailed
from releases.router import write_route
from releases.tfserving import TFServingClient


PORT_PAIRS = 3  # gRPC base, base+2, base+4; REST one above each


class NoImage(ValueError):
    """A docker endpoint runs images: the release has none."""


@register
class DockerDriver(EndpointDriver):
    kind = "docker"
    needs_image = True

    # --- interface ------------------------------------------------------------------------------

    def promote(self, model: str, version: int, saved_model_dir: Path | None, samples: dict[str, Any],
                canary: bool, on_step: OnStep | None, *, tolerance: tuple[float, float],
                image_ref: str = "", release_id: int | None = None, weight: int = 100,
                accept_signature_change: bool = False) -> Outcome:
        if not image_ref:
            raise PromotionFailed("prepare", NoImage(f"Endpoint {self.spec.name} runs containers: release "
                                                     f"{release_id} needs its image built first."),
                                  model_name=model, version=version)
        with self.locked():
            client = self.docker()
            state = self.state()
            old = self.container(client, state["active_container_id"])
            kept = self.container(client, state["previous_container_id"])
            profile = self.spec.profile
            result = containers.promote_container(
                client, endpoint_name=self.spec.name, model_name=model, version=version, image_ref=image_ref,
                samples=samples, tolerance=tolerance, old=old, ports=self.ports(old, kept), on_step=on_step,
                deadline_s=self.spec.deadline_s, gpu=bool(profile.get("gpu")), release_id=release_id,
                mounts=self.mounts(), environment=profile.get("environment") or None,
                accept_signature_change=accept_signature_change)
            new = {"container_id": result.new_container_id, "grpc_target": result.grpc_target,
                   "rest_url": result.rest_url, "version": version}
            if canary and old is not None:  # the current container keeps the rest of the traffic
                stable, split = self.backend(containers.target_of(old)), {**new, "weight": weight}
            else:
                stable, split = new, None
            changes = self.switch(stable, canary=split, active=result.new_container_id,
                                  previous=old.id if old is not None else "")
            containers.retire_containers(client, self.spec.name,
                                         {result.new_container_id} | ({old.id} if old is not None else set()))
        previous = int(old.labels.get(containers.LABEL_VERSION)) if old is not None else None
        return Outcome(previous_version=previous, endpoint_changes=changes)

    def complete_canary(self, model: str) -> Outcome:
        with self.locked():
            state = self.state()
            route = self.route() or {}
            if not route.get("canary"):
                return Outcome()  # already all on the active container
            new = {k: v for k, v in route["canary"].items() if k != "weight"}
            return Outcome(endpoint_changes=self.switch(new, canary=None, active=state["active_container_id"],
                                                        previous=state["previous_container_id"]))

    def rollback(self, model: str, to_version: int) -> Outcome:
        with self.locked():
            state = self.state()
            target = containers.rollback_container(self.docker(), endpoint_name=self.spec.name,
                                                   container_id=state["previous_container_id"])
            return Outcome(endpoint_changes=self.switch(
                self.backend(target), canary=None, active=state["previous_container_id"],
                previous=state["active_container_id"]))

    def recover(self, model: str, version: int, release_id: int, previous_version: int | None) -> Outcome:
        with self.locked():  # a dead worker's flock went with it
            client = self.docker()
            state = self.state()
            active = self.container(client, state["active_container_id"])
            changes: dict[str, Any] = {}
            if active is not None and active.labels.get(containers.LABEL_RELEASE) == str(release_id):
                # The route had switched to the new container (or its canary split): back to the kept one.
                target = containers.rollback_container(client, endpoint_name=self.spec.name,
                                                       container_id=state["previous_container_id"])
                changes = self.switch(self.backend(target), canary=None, active=target.container_id, previous="")
            serving = changes.get("active_container_id", state["active_container_id"])
            for container in containers.endpoint_containers(client, self.spec.name):
                if container.labels.get(containers.LABEL_RELEASE) == str(release_id) and container.id != serving:
                    container.remove(force=True)  # started by the dead promotion, never (or no longer) served
        return Outcome(endpoint_changes=changes)

    def health(self) -> Health:
        with TFServingClient(self.spec.grpc_target, timeout=self.spec.rpc_timeout_s) as client:
            reachable = client.reachable()
        return Health(reachable, error="" if reachable else f"{self.spec.grpc_target} does not answer")

    # --- parts --------------------------------------------------------------------------------------

    def locked(self) -> Any:
        """One change at a time per docker endpoint (model repositories lock their own directory)."""
        assert self.spec.lock_dir is not None
        self.spec.lock_dir.mkdir(parents=True, exist_ok=True)
        return file_lock(self.spec.lock_dir / f"endpoint-{self.spec.name}.lock", timeout_s=self.spec.deadline_s)

    def docker(self) -> Any:
        base_url = self.spec.docker_host
        try:
            if base_url:
                return docker.DockerClient(base_url=base_url, timeout=self.spec.docker_timeout_s)
            return docker.from_env(timeout=self.spec.docker_timeout_s)
        except docker.errors.DockerException as exc:
            raise containers.ContainerError(f"Docker engine unreachable at {base_url or 'the default socket'}: "
                                            f"{exc}", retryable=True) from exc

    def route(self) -> dict[str, Any] | None:
        try:
            route = json.loads(self.spec.route_file.read_text(encoding="utf-8")) if self.spec.route_file else None
        except (OSError, ValueError):
            return None
        return route if isinstance(route, dict) else None

    def state(self) -> dict[str, str]:
        """Active and kept containers: the route file's (under the lock), else the row's."""
        route = self.route() or {}
        return {"active_container_id": route.get("active_container_id", self.spec.active_container_id),
                "previous_container_id": route.get("previous_container_id", self.spec.previous_container_id)}

    @staticmethod
    def backend(target: containers.ContainerTarget) -> dict[str, Any]:
        return {"container_id": target.container_id, "grpc_target": target.grpc_target,
                "rest_url": target.rest_url, "version": target.version}

    @staticmethod
    def container(client: Any, container_id: str) -> Any | None:
        if not container_id:
            return None
        try:
            return client.containers.get(container_id)
        except docker.errors.NotFound:
            return None

    def ports(self, *running: Any | None) -> tuple[int, int]:
        """Side by side on host networking: the first of ``PORT_PAIRS`` pairs from the endpoint's base
        that no running container of it holds. Up to two run when a promotion starts (the active
        one and the one kept for rollback); neither is touched before the new one is validated,
        so the new one needs a third pair."""
        base = int(self.spec.grpc_port_base or 9500)
        held = {containers.target_of(c).grpc_port for c in running if c is not None}
        return next((port, port + 1) for port in range(base, base + 2 * PORT_PAIRS, 2) if port not in held)

    def mounts(self) -> list[Any]:
        return [docker.types.Mount(target=m["target"], source=m["source"], type="bind",
                                   read_only=bool(m.get("read_only", True))) for m in self.spec.profile.get("mounts", [])]

    def switch(self, stable: dict[str, Any], *, canary: dict[str, Any] | None, active: str,
               previous: str) -> dict[str, Any]:
        """The traffic switch: the route file (the router follows it from its next request);
        returns the endpoint fields that mirror it."""
        assert self.spec.route_file is not None
        details = {**stable, "active_container_id": active, "previous_container_id": previous}
        if canary is not None:
            details["canary"] = canary
        write_route(self.spec.route_file, **details)
        target = canary or stable
        return {"active_container_id": active, "previous_container_id": previous,
                "grpc_target": target["grpc_target"], "rest_url": target["rest_url"]}
