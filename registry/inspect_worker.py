"""The inspector: a long-lived process that reads uploaded artifacts with TensorFlow, one at a time.

``python -m registry.inspect_worker`` is started by ``registry.inspector`` (never forked from a
process that imported TensorFlow: it is a fresh interpreter, with a cleaned environment). It
imports TensorFlow once, writes ``{"ready": pid}`` on stdout, then answers one JSON line per JSON
request line on stdin::

    request: {"path", "filename", "workdir", "limits": {...}, "memory_bytes", "cpu_seconds"}
    reply:   {"inspection": {...}} | {"error": {"class", "code", "message"}} | {"limit": "memory"}

Why a separate process: untrusted bytes go through C++ parsers (the TFLite interpreter,
protobuf, HDF5) that can crash the whole process on malformed input, and loading a model can
allocate as much memory as the file asks for. Here a crash kills only this process; the web
process turns it into a 422 and starts another inspector.

Limits applied here, per job (the parent enforces the wall-clock limit and kills on timeout):

- memory: ``RLIMIT_DATA`` (heap and private writable mappings, which is where TensorFlow's tensors
  and numpy's arrays live) is set to what the idle process already holds plus ``memory_bytes``.
  An allocation over it fails cleanly (``MemoryError``, TensorFlow's ``ResourceExhaustedError``)
  and is reported as ``{"limit": "memory"}``. ``RLIMIT_AS`` is not usable: TensorFlow reserves
  over a GiB of address space at import that it never touches.
- CPU: ``RLIMIT_CPU`` backs the parent's timer, so a job still stops if its parent is gone.
- no core files (``RLIMIT_CORE`` 0): a crash must not write the process's memory to disk.

The process exits when stdin reaches end-of-file (the parent closed it or died), when it has been
idle for ``--idle-timeout`` seconds, or when its parent process changes (checked every second).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import select
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

GC_AFTER_BYTES = 16 * 1024 * 1024
IDLE_EXIT = 3  # exit status of an inspector that left because it had nothing to do
MEMORY_WORDS = ("OOM when allocating", "bad_alloc", "Cannot allocate memory")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _exit_when_orphaned(parent: int) -> None:
    """A busy inspector whose web process died would otherwise finish its job for nobody."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


@contextmanager
def job_limits(memory_bytes: int, cpu_seconds: int) -> Iterator[None]:
    _, data_hard = resource.getrlimit(resource.RLIMIT_DATA)
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    data = _status_kib("VmData") * 1024 + memory_bytes
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime) + cpu_seconds
    resource.setrlimit(resource.RLIMIT_DATA, (min(data, _cap(data_hard)), data_hard))
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, _cap(cpu_hard)), cpu_hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (data_hard, data_hard))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_hard, cpu_hard))


def _cap(hard: int) -> int:
    return sys.maxsize if hard == resource.RLIM_INFINITY else hard


def _out_of_memory(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) is an allocation refused under the memory limit."""
    while exc is not None:
        if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":
            return True
        if any(word in str(exc) for word in MEMORY_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_job(request: dict[str, Any]) -> dict[str, Any]:
    from registry import errors, inspection
    from registry.archives import Limits

    try:
        with job_limits(int(request["memory_bytes"]), int(request["cpu_seconds"])):
            workdir = Path(request["workdir"]) if request["workdir"] else None  # archives only
            found = inspection.inspect_here(Path(request["path"]), request["filename"],
                                            workdir=workdir, limits=Limits(**request["limits"]))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reply; the process lives on
        if _out_of_memory(exc):
            return {"limit": "memory"}
        if isinstance(exc, errors.RegistryError):
            return {"error": {"class": type(exc).__name__, "code": exc.code, "message": exc.message}}
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return {"error": {"class": "InvalidModel", "code": "invalid_model",
                          "message": f"Inspecting {request['filename']} failed: {type(exc).__name__}: {text}"}}
    return {"inspection": asdict(found)}


def _forget_loaded_models(request: dict[str, Any]) -> None:
    """Drop what the job loaded, so the next job starts from the same footprint.

    TensorFlow objects sit in reference cycles, so a big model's weights wait for a full
    collection; that costs 0.3-0.6 s with TensorFlow loaded, so only large artifacts pay for it
    (small ones are left to the automatic collector and to the recycling after MAX_JOBS jobs)."""
    if request["filename"].lower().endswith(".tflite"):
        return  # the TFLite interpreter made no Keras or graph state: nothing to clear (0.45 ms a job)
    import tf_keras

    tf_keras.backend.clear_session()
    try:
        size = os.stat(request["path"]).st_size
    except OSError:
        size = GC_AFTER_BYTES
    if size >= GC_AFTER_BYTES:
        gc.collect()


def _next_request(stdin: BinaryIO, idle_timeout: float | None) -> dict[str, Any] | None:
    ready, _, _ = select.select([stdin], [], [], idle_timeout)
    if not ready:
        raise TimeoutError
    line = stdin.readline()
    return json.loads(line) if line.strip() else None


def _send(stdout: BinaryIO, message: dict[str, Any]) -> None:
    stdout.write(json.dumps(message).encode() + b"\n")
    stdout.flush()


def _protocol_stdout() -> BinaryIO:
    """Keep the real stdout for replies only: anything else that writes to file descriptor 1 (a
    library, or a print op inside a model's graph) goes to stderr instead of into the protocol."""
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-timeout", type=float, default=0,
                        help="exit after this many seconds without a request (0: never)")
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: F401  (the slow part, paid once per inspector)
    import tf_keras  # noqa: F401

    from registry import inspection  # noqa: F401

    stdin, stdout = sys.stdin.buffer, _protocol_stdout()
    _send(stdout, {"ready": os.getpid()})
    while True:
        try:
            request = _next_request(stdin, args.idle_timeout or None)
        except TimeoutError:
            return IDLE_EXIT
        if request is None:
            return 0
        _send(stdout, run_job(request))
        _forget_loaded_models(request)  # after the reply (the next job may wait for it)


if __name__ == "__main__":
    status = main()
    # Skip the interpreter's teardown: with TensorFlow loaded it takes ~0.5 s for nothing.
    sys.stderr.flush()
    os._exit(status)
