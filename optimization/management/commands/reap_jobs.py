"""Reap jobs whose worker died (no heartbeat): queue them again for another worker or fail them
with the reason. `--loop N` repeats every N seconds — `make run`'s supervisor and the fleet run it
that way, so reaping happens on a schedule, not inside API requests."""
from __future__ import annotations

import logging
import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from optimization.services import jobs_reap_stale

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Retry or fail optimization jobs whose worker stopped sending heartbeats; once or every --loop seconds."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", type=float, default=0, help="Repeat every N seconds (0: once).")

    def handle(self, *args: Any, loop: float = 0, **options: Any) -> None:
        while True:
            close_old_connections()  # a database restart between rounds must not end the loop
            try:
                reaped = jobs_reap_stale()
            except Exception:
                if not loop:
                    raise
                log.exception("reaping failed; trying again in %s s", loop)
            else:
                if reaped or not loop:
                    self.stdout.write(f"reaped {reaped} job(s)", ending="\n")
                    self.stdout.flush()
            if not loop:
                return
            time.sleep(loop)
