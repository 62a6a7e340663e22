"""Out-of-process inspection (``registry/inspect_worker.py``), with one warm spare per process.

A fresh inspector spends ~1.5 s importing TensorFlow before it can look at the artifact. The
version-upload view calls ``prewarm()`` as soon as it sees a large request body, before reading
it: the spare imports TensorFlow while the bytes stream in, and ``run()`` hands it the request.
A spare is used once (its memory goes back to the system when it exits) and exits by itself
after ``MODELYARD_INSPECT_SPARE_IDLE_SECONDS`` without a request (0 turns prewarming off).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings

from registry.inspect_worker import IDLE_EXIT

log = logging.getLogger(__name__)
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_lock = threading.Lock()
_spare: subprocess.Popen[str] | None = None


def _spawn(idle_timeout: float | None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "registry.inspect_worker"]
    if idle_timeout is not None:
        command += ["--idle-timeout", str(idle_timeout)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=_PROJECT_ROOT)


def prewarm() -> bool:
    """Start a spare inspector unless one is already waiting; True if one was started."""
    global _spare
    idle = settings.INSPECT_SPARE_IDLE_SECONDS
    if idle <= 0:
        return False
    with _lock:
        if _spare is not None and _spare.poll() is None:
            return False
        _spare = _spawn(idle)
        log.info("started a spare inspector (pid %s)", _spare.pid)
        return True


def _take_spare() -> subprocess.Popen[str] | None:
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is not None and spare.poll() is None:
        return spare
    return None  # none, or it already gave up waiting (poll() reaped it)


def run(request: dict[str, Any]) -> tuple[str, str, int]:
    """Inspect in a child process: (stdout, stderr, exit status). Uses the spare if one waits."""
    spare = _take_spare()
    if spare is not None:
        out, err, status = _communicate(spare, request)
        if status != IDLE_EXIT:
            log.info("inspected %s in the spare inspector (pid %s)", request.get("filename"), spare.pid)
            return out, err, status
        # It hit its idle timeout just as the request arrived: start afresh.
    process = _spawn(None)
    log.info("inspecting %s in a new inspector (pid %s)", request.get("filename"), process.pid)
    return _communicate(process, request)


def _communicate(process: subprocess.Popen[str], request: dict[str, Any]) -> tuple[str, str, int]:
    try:
        out, err = process.communicate(json.dumps(request), timeout=settings.INSPECT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    except BrokenPipeError:  # the spare exited between poll() and our write
        out, err = process.communicate()
        return out, err, IDLE_EXIT
    return out, err, process.returncode
