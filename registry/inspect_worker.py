"""Inspect one artifact in a separate process: ``python -m registry.inspect_worker`` reads a JSON
request on stdin and writes the Inspection (or the error) as JSON on stdout.

Why: loading a SavedModel materialises its weights. In a web worker that memory stays with the
process (glibc keeps freed arenas), so a 1 GiB model grows the worker by ~1 GiB for good. Large
artifacts are inspected here instead, and the memory goes back to the system when this exits.
No Django project is loaded: only the few settings inspection reads are configured.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def main() -> int:
    request = json.load(sys.stdin)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from django.conf import settings

    settings.configure(**request["settings"])
    from registry import errors, inspection

    try:
        found = inspection._inspect(Path(request["path"]), request["filename"])
    except errors.RegistryError as exc:
        reply: dict[str, Any] = {"error": {"class": type(exc).__name__, "message": exc.message, "code": exc.code}}
    else:
        reply = {"inspection": asdict(found)}
    sys.stdout.write(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
