"""Record every endpoint's health (reachability, what each label serves); `--loop N` repeats
every N seconds (`make run` runs it so the admin and API show fresh health)."""
from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand

from releases.promotion import check_all_endpoints


class Command(BaseCommand):
    help = "Check every serving endpoint's health once, or every --loop seconds."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", type=float, default=0, help="Repeat every N seconds (0: once).")

    def handle(self, *args: Any, loop: float = 0, **options: Any) -> None:
        while True:
            count = check_all_endpoints()
            self.stdout.write(f"checked {count} endpoint(s)")
            if not loop:
                return
            time.sleep(loop)
