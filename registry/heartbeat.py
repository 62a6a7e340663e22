"""Worker liveness for long-running work (optimization jobs, promotions): the worker refreshes the
row's ``heartbeat_at`` from a side thread while it works, and a scheduled reaper treats a row whose
heartbeat is older than ``MODELYARD_JOB_HEARTBEAT_TIMEOUT`` as lost with its worker."""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

log = logging.getLogger(__name__)


def heartbeat_interval() -> float:
    """Beat well inside the timeout, so only a dead worker ever looks stale."""
    return min(5.0, settings.OPTIMIZATION_HEARTBEAT_TIMEOUT / 3)


def worker_name() -> str:
    """Who is running it (host:pid), for the row and the reaper's message."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Refresh ``heartbeat_at`` of the rows ``rows()`` selects, every ``heartbeat_interval()``, from a
    side thread, so a long step never looks like a dead worker. ``rows`` should select only while
    the work is this worker's (e.g. by state and attempt): a worker thought lost must not keep a
    later attempt alive."""

    def __init__(self, rows: Callable[[], QuerySet[Any]], name: str) -> None:
        self.rows = rows
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{name}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        # Short: a beat waiting on a database lock must not hold the finished work up, and a late
        # beat only touches rows ``rows()`` still selects (the work's state has moved on by then).
        self._thread.join(timeout=1)

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _beat(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(heartbeat_interval()):
                self.rows().update(heartbeat_at=timezone.now())
        except Exception:  # a missed heartbeat is only a risk of being reaped; never crash the work
            log.exception("heartbeat %s failed", self._thread.name)
        finally:
            connection.close()


def close_orphan_task_results(task_path: str, args: list[Any], *, worker: str) -> None:
    """The database task backend still shows a dead worker's task as running: close it, so queue
    metrics and the admin tell the truth (another backend keeps its own books)."""
    from django_tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING, task_path=task_path, args_kwargs__args=args).update(
        status=TaskResultStatus.FAILED, finished_at=timezone.now(), exception_class_path="builtins.RuntimeError",
        traceback=f"worker lost: {worker or 'unknown'} (reaped by heartbeat timeout)")
