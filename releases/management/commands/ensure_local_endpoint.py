"""Register the local serving endpoint `make run` starts (idempotent).

The embedded default has no Docker engine, so the environment it belongs to (staging by default)
is set to promote the SavedModel straight from approval, without an image build. The repository
must pass the same policy as any endpoint's (under MODELYARD_SERVING_ROOTS, default
`$MODELYARD_VAR_DIR/serving`; `make run` uses `$MODELYARD_VAR_DIR/serving/staging`).
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from registry.errors import RegistryError
from releases import promotion
from releases.endpoints import validate_repository
from releases.models import Endpoint, Environment


class Command(BaseCommand):
    help = "Create or update the 'local' model_repository endpoint (gRPC 127.0.0.1:8500, REST :8501)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--repository", required=True, help="The model repository the local server reads.")
        parser.add_argument("--environment", default="staging")
        parser.add_argument("--name", default="local")
        parser.add_argument("--grpc-target", default="127.0.0.1:8500")
        parser.add_argument("--rest-url", default="http://127.0.0.1:8501")

    def handle(self, *args: Any, repository: str, environment: str, name: str, grpc_target: str, rest_url: str,
               **options: Any) -> None:
        try:
            repo, config = validate_repository(repository)  # the policy, before anything is created
        except RegistryError as exc:
            raise CommandError(f"{exc.message} (set MODELYARD_SERVING_ROOTS to allow it)") from None
        env = Environment.objects.get(name=environment)
        if env.build_image:
            env.build_image = False
            env.save(update_fields=["build_image"])
        fields = {"environment": env.name, "kind": Endpoint.Kind.MODEL_REPOSITORY, "grpc_target": grpc_target,
                  "rest_url": rest_url, "repository_path": str(repo), "config_path": str(config)}
        existing = Endpoint.objects.filter(name=name).first()
        try:
            if existing is None:
                endpoint = promotion.endpoint_create(actor=None, name=name, **fields)
            else:
                endpoint = promotion.endpoint_update(actor=None, endpoint=existing, **fields)
        except RegistryError as exc:
            raise CommandError(exc.message) from None
        repo.mkdir(parents=True, exist_ok=True)
        self.stdout.write(f"{'Created' if existing is None else 'Updated'} endpoint {endpoint.name!r} "
                          f"({env.name}) on {repo}")
