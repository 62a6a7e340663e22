"""Register the local serving endpoint `make run` starts (idempotent).

The embedded default has no Docker engine, so the environment it belongs to (staging by default)
is set to promote the SavedModel straight from approval, without an image build.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand

from releases.models import Endpoint, Environment


class Command(BaseCommand):
    help = "Create or update the 'local' model_repository endpoint (gRPC 127.0.0.1:8500, REST :8501)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--repository", required=True, help="The model repository the local server reads.")
        parser.add_argument("--environment", default="staging")
        parser.add_argument("--name", default="local")

    def handle(self, *args: Any, repository: str, environment: str, name: str, **options: Any) -> None:
        repo = Path(repository).resolve()
        env = Environment.objects.get(name=environment)
        if env.build_image:
            env.build_image = False
            env.save(update_fields=["build_image"])
        endpoint, created = Endpoint.objects.update_or_create(name=name, defaults={
            "environment": env, "kind": Endpoint.Kind.MODEL_REPOSITORY, "grpc_target": "127.0.0.1:8500",
            "rest_url": "http://127.0.0.1:8501", "repository_path": str(repo),
            "config_path": str(repo / "models.config")})
        self.stdout.write(f"{'Created' if created else 'Updated'} endpoint {endpoint.name!r} ({env.name}) on {repo}")
