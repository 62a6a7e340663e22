"""Serve a docker endpoint at one fixed gRPC address: `route_endpoint gpu-1 --listen 0.0.0.0:8500`
forwards every RPC to the endpoint's active container and follows each promotion and rollback
(see releases/router.py)."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from releases.promotion import route_path
from releases.models import Endpoint
from releases.router import run_forever


class Command(BaseCommand):
    help = "Route gRPC traffic for a docker endpoint to its active container (follows switches)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("endpoint", help="name of a docker endpoint")
        parser.add_argument("--listen", default="0.0.0.0:8500", help="host:port to accept gRPC on")
        parser.add_argument("--rest-listen", default=None,
                            help="host:port to accept TF Serving's REST API on (e.g. 0.0.0.0:8501)")

    def handle(self, *args: Any, endpoint: str, listen: str, rest_listen: str | None = None,
               **options: Any) -> None:
        found = Endpoint.objects.filter(name=endpoint).first()
        if found is None:
            raise CommandError(f"No endpoint named {endpoint!r}.")
        if found.kind != Endpoint.Kind.DOCKER:
            raise CommandError(f"Endpoint {endpoint!r} is a {found.kind} endpoint: its server already has a "
                               "fixed address; only docker endpoints need a router.")
        path = route_path(found.name)
        rest = f" and REST {rest_listen}" if rest_listen else ""
        self.stdout.write(f"routing gRPC {listen}{rest} -> the active container of {found.name} (route file {path})")
        run_forever(listen, path, rest_listen)
