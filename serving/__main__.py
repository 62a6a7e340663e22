"""`python -m serving --port=8500 --rest_api_port=8501 --model_config_file=...`"""
from __future__ import annotations

import logging
import os
import signal
import sys

# Before TensorFlow is imported: quiet C++ logs, and tf_keras as the project uses.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def main(argv: list[str]) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("serving")
    from .flags import FlagError, parse

    try:
        flags, ignored = parse(argv)
    except FlagError as exc:
        log.error("%s", exc)
        return 2
    for name, value in ignored.items():
        log.info("Ignoring --%s=%s (no effect in the Modelyard server)", name, value)

    from .server import ModelServer, StartupError  # imports TensorFlow: after flag checks

    server = ModelServer(flags)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    try:
        grpc_port, rest_port = server.start()
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    rest_text = f"rest=0.0.0.0:{rest_port}" if rest_port else "rest=off"
    print(f"Modelyard serving ready: grpc=0.0.0.0:{grpc_port} {rest_text}",
          file=sys.stderr, flush=True)
    server.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
