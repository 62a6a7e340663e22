"""Helpers for tests that start real processes (task workers, the supervisor, the reaper) against
the test database this run uses."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from django.db import connection

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def database_env() -> dict[str, str]:
    """Point a child process at the test database this test run uses (SQLite file or PostgreSQL)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return {"MODELYARD_SQLITE_PATH": str(db["NAME"])}
    auth = f"{quote(db['USER'] or '')}:{quote(db['PASSWORD'] or '')}@" if db.get("USER") else ""
    host = db.get("HOST") or ""
    netloc = f"{auth}{host}:{db['PORT']}" if host and not host.startswith("/") and db.get("PORT") else auth + (
        "" if host.startswith("/") else host)
    query = f"?host={quote(host)}" if host.startswith("/") else ""
    return {"DATABASE_URL": f"postgres://{netloc}/{db['NAME']}{query}"}


def wait_for(predicate: Callable[[], T], timeout: float = 120, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def start_manage(argv: list[str], *, storage_root: Path, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """A real ``manage.py`` command on the test database and storage root, with the test's serving
    roots and routes directory (settings the child reads from its environment)."""
    from django.conf import settings

    full_env = {**os.environ, **database_env(), "MODELYARD_STORAGE_ROOT": str(storage_root),
                "MODELYARD_SERVING_ROOTS": ",".join(str(r) for r in settings.SERVING_ROOTS),
                "MODELYARD_ROUTES_DIR": str(settings.ROUTES_DIR), "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "manage.py", *argv], cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)


def start_worker(*, storage_root: Path, log_path: Path, queues: str = "*", worker_id: str | None = None,
                 **env: str) -> subprocess.Popen[bytes]:
    """A real ``manage.py db_worker`` serving ``queues`` (a comma list, or ``*``)."""
    argv = ["db_worker", "--queue-name", queues, "--interval", "0.2", "--no-startup-delay", "--no-reload"]
    return start_manage(argv + (["--worker-id", worker_id] if worker_id else []), storage_root=storage_root,
                        log_path=log_path, **env)


def stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid``, from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            pass
    return sorted(found)


def free_port() -> int:
    """A TCP port nothing listens on now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
