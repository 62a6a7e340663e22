"""The web application as gunicorn serves it (``config.wsgi``), plus ``GET /__probe__``, which
answers from inside the worker: the heavy packages it has loaded, which request first loaded
each one (and the import stack that did), and its memory.

Served by tests/test_web_process.py only (``gunicorn tests.web_probe:application``): nothing in
the application imports it.
"""
from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib.abc import MetaPathFinder
from pathlib import Path
from typing import Any

from config.wsgi import application as django_application

HEAVY = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tflite_runtime")
# Any module of tensorflow_serving.apis imports TensorFlow's protos; tensorflow_serving.config does not.
HEAVY_MODULES = ("tensorflow_serving.apis",)

first_seen: dict[str, str] = {}  # heavy package -> the request during which it appeared
stacks: dict[str, str] = {}  # heavy package -> where it was first imported from
current_request = "start-up"


class _Witness(MetaPathFinder):
    """Records who imports a heavy package first; finds nothing itself (the real finders do)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        top = fullname.split(".")[0]
        if fullname in HEAVY_MODULES or top in HEAVY:
            key = fullname if fullname in HEAVY_MODULES else top
            if key not in stacks:
                stacks[key] = f"during {current_request}:\n" + "".join(traceback.format_stack(limit=40)[:-1])
        return None


sys.meta_path.insert(0, _Witness())


def loaded() -> list[str]:
    names = {m.split(".")[0] for m in sys.modules} & set(HEAVY)
    return sorted(names | {m for m in HEAVY_MODULES if m in sys.modules})


def memory_kib() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global current_request
    if environ.get("PATH_INFO") == "/__probe__":
        body = json.dumps({"loaded": loaded(), "first_seen": first_seen, "stacks": stacks,
                           "memory_kib": memory_kib()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    current_request = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}?{environ.get('QUERY_STRING', '')}"
    response = django_application(environ, start_response)
    try:
        # Consumed (and closed) here, so whatever rendering it imports counts for this request.
        return list(response)
    finally:
        getattr(response, "close", lambda: None)()
        for name in loaded():
            first_seen.setdefault(name, current_request)
