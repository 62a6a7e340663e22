"""The warm inspector pool: every artifact is read by TensorFlow in ``registry/inspect_worker.py``.

Each process that inspects (a gunicorn worker, the task worker, a test run) owns up to
``MODELYARD_INSPECT_POOL_SIZE`` inspector processes, started lazily and kept warm: TensorFlow is
imported once per inspector, not once per upload. An inspector takes one artifact at a time and is
replaced after any crash and after any limit (``MODELYARD_INSPECT_MEMORY_MB``,
``MODELYARD_INSPECT_TIMEOUT``), the replacement starting right away so its import overlaps
whatever comes next; after ``MODELYARD_INSPECT_MAX_JOBS`` jobs its successor is started and the
worn one goes on taking jobs until the successor is ready (a few seconds with two TensorFlow
processes), so that no upload waits for a cold start at a recycle. An inspector idle for ``MODELYARD_INSPECT_IDLE_SECONDS``
exits by itself, giving its memory back.

Processes are started with ``subprocess`` (fork immediately followed by exec of a fresh
interpreter, never a fork that keeps running Python), with only the environment inspection needs:
no secrets, no database URL. A pool belongs to the process that created it; a forked child (a
gunicorn worker forked from a master that had a pool) starts with an empty pool of its own.
The version-upload view calls ``prewarm()`` before it reads the request body, so a cold inspector
imports TensorFlow while the bytes arrive.
"""
from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from registry.errors import InspectionFailed, InspectorUnavailable
from registry.inspect_worker import IDLE_EXIT

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0  # importing TensorFlow on a busy machine; not charged to the artifact
MiB = 1024 * 1024

# The inspector's environment: locale, time zone, PATH and TensorFlow / OpenMP / MKL tuning
# variables, minus anything that looks like a secret. Nothing else of the web process's
# environment (MODELYARD_SECRET_KEY, DATABASE_URL, cloud credentials...) reaches it.
PASSED_NAMES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ"})
PASSED_PREFIXES = ("LC_", "TF_", "OMP_", "KMP_", "MKL_", "ONEDNN_")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL|AUTH|_FILE$|DATABASE|_URL$", re.IGNORECASE)


def inspector_environment(source: dict[str, str] | None = None) -> dict[str, str]:
    source = dict(os.environ if source is None else source)
    env = {name: value for name, value in source.items()
           if (name in PASSED_NAMES or name.startswith(PASSED_PREFIXES)) and not SECRET_NAME.search(name)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update({"TF_USE_LEGACY_KERAS": "1", "CUDA_VISIBLE_DEVICES": "-1", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


class _Crashed(Exception):
    """The inspector ended (or was ended) without answering."""


class _LeftIdle(Exception):
    """The inspector hit its idle timeout as the job was sent: try again with a fresh one."""


@dataclass(eq=False)
class Inspector:
    """One inspector process and its two pipes; stderr goes to an unlinked temporary file."""

    proc: subprocess.Popen[bytes]
    stderr: IO[bytes]
    jobs: int = 0
    ready: bool = False
    _buffer: bytes = field(default=b"", repr=False)

    @classmethod
    def start(cls) -> "Inspector":
        stderr = tempfile.TemporaryFile(prefix="modelyard-inspector-")
        idle = str(settings.INSPECT_IDLE_SECONDS)
        try:
            proc = subprocess.Popen(
                # -E -s: ignore PYTHON* variables and the user site; cwd puts the project on sys.path.
                [sys.executable, "-E", "-s", "-m", "registry.inspect_worker", "--idle-timeout", idle],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=PROJECT_ROOT,
                env=inspector_environment(), close_fds=True)
        except OSError as exc:
            stderr.close()
            log.error("cannot start an inspector: %s", exc)
            raise InspectorUnavailable("The model inspector process could not start; see the server log.") from exc
        log.info("started an inspector (pid %s)", proc.pid)
        return cls(proc, stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            hello = self._read(time.monotonic() + START_TIMEOUT)
        except (TimeoutError, _Crashed):
            hello = None
        if not hello or hello.get("ready") != self.pid:
            self.kill()
            log.error("the inspector (pid %s) did not start: %s", self.pid, self.stderr_tail(0))
            raise InspectorUnavailable("The model inspector process could not start; see the server log.")
        self.ready = True

    def poll_ready(self) -> bool:
        """Whether it has said it is ready, without waiting (False while it imports TensorFlow,
        and for one that died starting: ``alive`` tells those apart)."""
        if self.ready:
            return True
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout.fileno()], [], [], 0)
        if readable and self.alive():
            self.wait_ready()  # the hello line is there: read it (kills and raises if it is wrong)
        return self.ready

    @property
    def worn(self) -> bool:
        return self.jobs >= settings.INSPECT_MAX_JOBS

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one job; its reply, or ``_Crashed`` / ``TimeoutError``."""
        self.jobs += 1
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _Crashed from None
        reply = self._read(time.monotonic() + timeout)
        if reply is None:
            raise _Crashed
        return reply

    def _read(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line, None at end of file; TimeoutError at the deadline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise _Crashed from None  # not our protocol: treat it like a crash
        return message if isinstance(message, dict) else {}

    def stderr_position(self) -> int:
        return os.fstat(self.stderr.fileno()).st_size

    def stderr_tail(self, since: int, limit: int = 2000) -> str:
        self.stderr.seek(max(since, self.stderr_position() - limit))
        return self.stderr.read().decode(errors="replace").strip()

    def kill(self) -> None:
        """SIGKILL and reap (its pipes stay open, so its stderr can still be read)."""
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        """Close its stdin (it exits at end of file), kill it if it does not exit in time, and
        close our side of everything."""
        self._close(self.proc.stdin)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
        self.forget()

    def forget(self) -> None:
        """Close our copies of its pipes. In a forked child this leaves the process to its owner."""
        for pipe in (self.proc.stdin, self.proc.stdout, self.stderr):
            self._close(pipe)
        if self.proc.returncode is None:
            self.proc.returncode = 0  # not ours to wait for (a forked child's inherited handle)

    @staticmethod
    def _close(pipe: IO[bytes] | None) -> None:
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass


class InspectorPool:
    """Up to ``INSPECT_POOL_SIZE`` warm inspectors of this process; one job per inspector at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._idle: list[Inspector] = []
        self._busy: set[Inspector] = set()
        # The replacement of an inspector that did its last allowed job, importing TensorFlow
        # while the worn one goes on serving: no upload waits for a cold start at a recycle.
        self._successor: Inspector | None = None

    def prewarm(self) -> bool:
        """Start an inspector unless one is idle (or the pool is full); True if one was started."""
        with self._cond:
            self._drop_dead()
            if self._idle or len(self._busy) >= settings.INSPECT_POOL_SIZE:
                return False
            try:
                self._idle.append(Inspector.start())
            except InspectorUnavailable:
                return False  # logged; the inspection itself will report it
            return True

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(i.pid for i in [*self._idle, *self._busy, *self._starting()])

    def jobs_by_pid(self) -> dict[int, int]:
        """Jobs each idle or busy inspector has done (a successor still starting is not listed)."""
        with self._cond:
            return {i.pid: i.jobs for i in [*self._idle, *self._busy]}

    def _starting(self) -> list[Inspector]:
        return [self._successor] if self._successor is not None else []

    def run(self, request: dict[str, Any], filename: str) -> dict[str, Any]:
        """Inspect in a warm inspector: the reply, or InspectionFailed naming ``filename``."""
        for attempt in range(2):
            inspector = self._acquire()
            healthy = False
            try:
                inspector.wait_ready()
                reply, healthy = self._ask(inspector, request, filename)
                return reply
            except _LeftIdle:
                if attempt:
                    raise InspectorUnavailable("The model inspector process keeps exiting; see the server log.")
            finally:
                self._release(inspector, healthy)
        raise AssertionError("unreachable")

    def _ask(self, inspector: Inspector, request: dict[str, Any], filename: str) -> tuple[dict[str, Any], bool]:
        timeout = settings.INSPECT_TIMEOUT
        since = inspector.stderr_position()
        try:
            reply = inspector.ask(request, timeout)
        except TimeoutError:
            inspector.kill()
            raise InspectionFailed(
                f"Inspecting {filename} took longer than {timeout} s (MODELYARD_INSPECT_TIMEOUT); the inspector "
                "was stopped.", code="inspection_timeout", details={"artifact": filename, "limit_seconds": timeout},
            ) from None
        except _Crashed:
            try:  # it closed its stdout: let it finish dying, so its exit status is its own
                inspector.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                inspector.kill()  # alive but talking nonsense
            if inspector.proc.returncode == IDLE_EXIT:
                raise _LeftIdle from None  # it timed out just as the job came: never saw it
            raise self._crash_error(inspector, filename, since) from None
        if reply.get("limit") == "memory":
            raise _memory_error(filename)
        return reply, True

    def _crash_error(self, inspector: Inspector, filename: str, since: int) -> InspectionFailed:
        status = inspector.proc.returncode
        tail = inspector.stderr_tail(since)
        log.warning("the inspector (pid %s) ended with status %s on %s: %s", inspector.pid, status, filename,
                    tail[-1000:])
        if status is not None and status < 0 and -status == signal.SIGXCPU:
            timeout = settings.INSPECT_TIMEOUT
            return InspectionFailed(
                f"Inspecting {filename} used more than its CPU time allowance ({timeout} s, MODELYARD_INSPECT_TIMEOUT);"
                " the inspector was stopped.", code="inspection_timeout",
                details={"artifact": filename, "limit_seconds": timeout})
        if status is not None and status < 0 and any(w in tail for w in ("bad_alloc", "OOM when allocating")):
            return _memory_error(filename)
        if status is not None and status < 0:
            name = _signal_name(-status)
            return InspectionFailed(
                f"The inspector was killed by {name} while loading {filename}: the file is damaged or is not "
                "a model TensorFlow can read. Nothing was registered.", code="inspection_crashed",
                details={"artifact": filename, "signal": name})
        return InspectionFailed(
            f"The inspector exited (status {status}) while loading {filename} without an answer: the file is "
            "damaged or is not a model TensorFlow can read. Nothing was registered.", code="inspection_crashed",
            details={"artifact": filename, "exit_status": status})

    def _acquire(self) -> Inspector:
        with self._cond:
            while True:
                self._drop_dead()
                self._take_successor_if_ready()
                if self._idle:
                    self._idle.sort(key=lambda i: i.jobs, reverse=True)  # the least used last
                    inspector = self._idle.pop()
                elif len(self._busy) < settings.INSPECT_POOL_SIZE:
                    inspector = Inspector.start()
                else:
                    self._cond.wait(timeout=1.0)
                    continue
                self._busy.add(inspector)
                return inspector

    def _release(self, inspector: Inspector, healthy: bool) -> None:
        """Back to the idle list, or replaced: at once after a failure; after its last allowed job
        once its successor is ready (until then it goes on taking jobs)."""
        with self._cond:
            self._busy.discard(inspector)
            if healthy and inspector.alive() and inspector.worn:
                self._take_successor_if_ready()
                if self._successor is None and not self._has_fresh_idle():
                    self._start_successor()
                if self._has_fresh_idle():
                    log.info("retired the inspector (pid %s) after %s job(s)", inspector.pid, inspector.jobs)
                    inspector.stop()
                else:
                    self._idle.append(inspector)
            elif healthy and inspector.alive():
                self._idle.append(inspector)
            else:
                inspector.stop()
                log.info("retired the inspector (pid %s) after %s job(s)%s", inspector.pid, inspector.jobs,
                         "" if healthy else ", on a failure")
                if len(self._busy) + len(self._idle) < settings.INSPECT_POOL_SIZE:
                    try:
                        self._idle.append(Inspector.start())
                    except InspectorUnavailable:
                        pass  # logged; the next job tries again (and this job's own error stands)
            self._cond.notify()

    def _start_successor(self) -> None:
        try:
            self._successor = Inspector.start()
        except InspectorUnavailable:
            pass  # logged; the worn inspector goes on, and its next release tries again

    def _has_fresh_idle(self) -> bool:
        return any(not i.worn for i in self._idle)

    def _take_successor_if_ready(self) -> None:
        """A successor that finished starting joins the idle list, and a worn idle inspector
        leaves it (one that is busy leaves at its release, now that a fresh one waits)."""
        successor = self._successor
        if successor is None:
            return
        try:
            ready = successor.poll_ready()
        except InspectorUnavailable:  # it died starting (logged): the next release starts another
            self._successor = None
            return
        if not ready:
            return
        self._successor = None
        self._idle.append(successor)
        for worn in [i for i in self._idle if i.worn]:
            log.info("retired the inspector (pid %s) after %s job(s)", worn.pid, worn.jobs)
            worn.stop()
            self._idle.remove(worn)

    def _drop_dead(self) -> None:
        """Idle inspectors that exited by themselves (idle timeout) are reaped and forgotten."""
        for inspector in [i for i in self._idle if not i.alive()]:
            inspector.stop()
            self._idle.remove(inspector)
        if self._successor is not None and not self._successor.alive():
            self._successor.stop()
            self._successor = None

    def shutdown(self) -> None:
        with self._cond:
            idle, self._idle = [*self._idle, *self._starting()], []
            self._successor = None
        for inspector in idle:
            inspector.stop(grace=2.0)

    def forget(self) -> None:
        for inspector in [*self._idle, *self._busy, *self._starting()]:
            inspector.forget()
        self._idle, self._busy, self._successor = [], set(), None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _memory_error(filename: str) -> InspectionFailed:
    limit = settings.INSPECT_MEMORY_MB
    return InspectionFailed(
        f"Inspecting {filename} exceeded the memory limit of {limit} MiB (MODELYARD_INSPECT_MEMORY_MB); the "
        "inspector was stopped.", code="inspection_memory_limit", details={"artifact": filename, "limit_mib": limit})


_pool = InspectorPool()


def pool() -> InspectorPool:
    return _pool


def prewarm() -> bool:
    return _pool.prewarm()


def run(request: dict[str, Any], filename: str) -> dict[str, Any]:
    return _pool.run(request, filename)


def _after_fork_in_child() -> None:
    global _pool
    _pool.forget()
    _pool = InspectorPool()


os.register_at_fork(after_in_child=_after_fork_in_child)
