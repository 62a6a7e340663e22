"""Register a local serving endpoint `make run` starts (idempotent).

`make run` starts two: `local` (staging, gRPC 8500) and `local-production` (production, gRPC
8510). Staging never builds an image there. Production (``--images auto``) builds images only
where a Docker engine answers; without one, approved production releases promote the SavedModel
straight into the endpoint's model repository, so request → approval → promote → rollback works
in the embedded default. Four-eyes stays on for production either way.

Each repository must pass the same policy as any endpoint's (under MODELYARD_SERVING_ROOTS,
default `$MODELYARD_VAR_DIR/serving`; `make run` uses `$MODELYARD_VAR_DIR/serving/staging` and
`.../production`).
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from registry.errors import ModelyardError
from releases import promotion
from releases.endpoints import validate_repository
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
        try:
            repo, config = validate_repository(repository)  # the policy, before anything is created
        except ModelyardError as exc:
            raise CommandError(f"{exc.message} (set MODELYARD_SERVING_ROOTS to allow it)") from None
        env = Environment.objects.get(name=environment)
        build = images == "auto" and engine_reachable()
        if env.build_image != build:
            env.build_image = build
            env.save(update_fields=["build_image"])
        fields = {"environment": env.name, "kind": Endpoint.Kind.MODEL_REPOSITORY,
                  "grpc_target": f"127.0.0.1:{grpc_port}", "rest_url": f"http://127.0.0.1:{rest_port}",
                  "repository_path": str(repo), "config_path": str(config)}
        existing = Endpoint.objects.filter(name=name).first()
        try:
            if existing is None:
                endpoint = promotion.endpoint_create(actor=None, name=name, **fields)
            else:
                endpoint = promotion.endpoint_update(actor=None, endpoint=existing, **fields)
        except ModelyardError as exc:
            raise CommandError(exc.message) from None
        repo.mkdir(parents=True, exist_ok=True)
        how = "builds images (Docker engine reachable)" if build else "promotes the SavedModel directly (no image)"
        self.stdout.write(f"{'Created' if existing is None else 'Updated'} endpoint {endpoint.name!r} "
                          f"({env.name}, {how}) on {repo}")
