"""Reap work whose worker died (no heartbeat): every installed app's ``stale_work_reapers`` (its
AppConfig names them, so this command imports no other app): optimization jobs are queued again
for another worker or failed with the reason; promotions restore their endpoint and fail their
release, retryable. `--loop N` repeats every N seconds — `make run`'s supervisor and the fleet run
it that way, so reaping happens on a schedule, not inside API requests."""
from __future__ import annotations

import logging
import time
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import close_old_connections
from django.utils.module_loading import import_string

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = ("Retry or fail jobs and promotions whose worker stopped sending heartbeats; once or every --loop "
            "seconds.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", type=float, default=0, help="Repeat every N seconds (0: once).")

    def handle(self, *args: Any, loop: float = 0, **options: Any) -> None:
        while True:
            close_old_connections()  # a database restart between rounds must not end the loop
            reaped: dict[str, int] = {}
            for what, reaper in reapers().items():
                try:
                    reaped[what] = reaper()
                except Exception:
                    if not loop:
                        raise
                    log.exception("reaping %ss failed; trying again in %s s", what, loop)
            if any(reaped.values()) or not loop:
                self.stdout.write("reaped " + ", ".join(f"{n} {what}(s)" for what, n in reaped.items()), ending="\n")
                self.stdout.flush()
            if not loop:
                return
            time.sleep(loop)


def reapers() -> dict[str, Any]:
    """{what: service} from every installed app's ``stale_work_reapers``."""
    return {what: import_string(path) for config in apps.get_app_configs()
            for what, path in getattr(config, "stale_work_reapers", {}).items()}
