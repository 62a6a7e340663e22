"""Inspect one artifact in a separate process: ``python -m registry.inspect_worker`` reads a JSON
request on stdin and writes the Inspection (or the error) as JSON on stdout.

Why: loading a SavedModel materialises its weights. In a web worker that memory stays with the
process (glibc keeps freed arenas), so a 1 GiB model grows the worker by ~1 GiB for good. Large
artifacts are inspected here instead, and the memory goes back to the system when this exits.
No Django project is loaded: only the few settings inspection reads are configured.

The process imports TensorFlow *before* it reads its request, so it can be started early as a
warm spare (``registry.inspector.prewarm``: while a large upload is still streaming in) and the
~1.5 s import overlaps the transfer. A spare that gets no request within ``--idle-timeout``
seconds exits with status ``IDLE_EXIT``; one whose parent died sees end-of-file and exits too.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

IDLE_EXIT = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="seconds to wait for the request before exiting (default: forever)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: F401  (the slow part; done while the caller is still busy)

    if args.idle_timeout is not None:
        ready, _, _ = select.select([sys.stdin], [], [], args.idle_timeout)
        if not ready:
            return IDLE_EXIT
    raw = sys.stdin.read()
    if not raw.strip():
        return IDLE_EXIT  # the parent went away (or gave up on this spare) without a request
    request = json.loads(raw)
    from django.conf import settings

    settings.configure(**request["settings"])
    from registry import errors, inspection

    try:
        found = inspection._inspect(Path(request["path"]), request["filename"])
    except errors.RegistryError as exc:
        reply: dict[str, Any] = {"error": {"class": type(exc).__name__, "message": exc.message, "code": exc.code}}
    else:
        reply = {"inspection": asdict(found)}
    reply["pid"] = os.getpid()
    sys.stdout.write(json.dumps(reply))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    status = main()
    # Skip the interpreter's teardown: with TensorFlow and a loaded model in memory it takes
    # ~0.5 s, and the caller waits for this process to exit. Everything is written and flushed;
    # the OS reclaims the rest.
    sys.stderr.flush()
    os._exit(status)
