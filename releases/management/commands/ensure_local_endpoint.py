"""Register a local serving endpoint `make run` starts (idempotent).

`make run` starts two: `local` (staging, gRPC 8500) and `local-production` (production, gRPC
8510). Staging never builds an image there. Production (``--images auto``) builds images only
where a Docker engine answers; without one, approved production releases promote the SavedModel
straight into the endpoint's model repository, so request → approval → promote → rollback works
in the embedded default. Four-eyes stays on for production either way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand

from releases.models import Endpoint, Environment


def engine_reachable() -> bool:
    """Whether a Docker engine answers at DOCKER_HOST (or the default socket), within 3 s."""
    try:
        import docker
        from django.conf import settings

        client = (docker.DockerClient(base_url=settings.DOCKER_HOST, timeout=3) if settings.DOCKER_HOST
                  else docker.from_env(timeout=3))
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means: no engine to build with
        return False


class Command(BaseCommand):
    help = "Create or update a local model_repository endpoint (default 'local': gRPC 127.0.0.1:8500, REST :8501)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--repository", required=True, help="The model repository the local server reads.")
        parser.add_argument("--environment", default="staging")
        parser.add_argument("--name", default="local")
        parser.add_argument("--grpc-port", type=int, default=8500)
        parser.add_argument("--rest-port", type=int, default=8501)
        parser.add_argument("--images", choices=["off", "auto"], default="off",
                            help="off: the environment never builds images; auto: only where a Docker engine answers.")

    def handle(self, *args: Any, repository: str, environment: str, name: str, grpc_port: int, rest_port: int,
               images: str, **options: Any) -> None:
        repo = Path(repository).resolve()
        env = Environment.objects.get(name=environment)
        build = images == "auto" and engine_reachable()
        if env.build_image != build:
            env.build_image = build
            env.save(update_fields=["build_image"])
        endpoint, created = Endpoint.objects.update_or_create(name=name, defaults={
            "environment": env, "kind": Endpoint.Kind.MODEL_REPOSITORY, "grpc_target": f"127.0.0.1:{grpc_port}",
            "rest_url": f"http://127.0.0.1:{rest_port}", "repository_path": str(repo),
            "config_path": str(repo / "models.config")})
        how = "builds images (Docker engine reachable)" if build else "promotes the SavedModel directly (no image)"
        self.stdout.write(f"{'Created' if created else 'Updated'} endpoint {endpoint.name!r} ({env.name}, {how}) "
                          f"on {repo}")
