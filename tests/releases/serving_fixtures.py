"""Fixtures with real model servers, for every test that promotes to one (a pytest plugin: the
root conftest.py lists it, so no test module imports these fixtures).

Servers are `python -m serving` processes (or, with TF_SERVING_BINARY=/path/to/
tensorflow_model_server, the real TF Serving with the same flags) on free ports, each with its own
model repository and models.config, as tests/serving/ starts them. The engine only ever talks to
them through the public protocol.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from releases.deploy.repository_engine import RepositoryEndpoint
from releases.tfserving import TFServingClient
from tests.processes import free_port, stop as stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_BINARY = os.environ.get("TF_SERVING_BINARY", "")
STARTUP_TIMEOUT = 90.0
EMPTY_CONFIG = "model_config_list {\n}\n"


# --- servers -------------------------------------------------------------------------------------

@dataclass
class LiveServer:
    """A model server process with its own repository (`base_dir`) and `config_path`."""

    root: Path
    poll_s: int
    grpc_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.base_dir = self.root / "models"
        self.base_dir.mkdir(parents=True)
        self.config_path = self.base_dir / "models.config"  # inside the repository, as endpoints require
        self.config_path.write_text(EMPTY_CONFIG)
        self.log_path = self.root / "server.log"
        self.client = TFServingClient(f"127.0.0.1:{self.grpc_port}",
                                      rest_url=f"http://127.0.0.1:{self.rest_port}", timeout=10)
        self.endpoint = RepositoryEndpoint(self.base_dir, self.config_path, self.client)

    @property
    def flags(self) -> list[str]:
        return [f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
                f"--model_config_file={self.config_path}",
                f"--model_config_file_poll_wait_seconds={self.poll_s}",
                "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"]

    def start(self) -> "LiveServer":
        command = [REAL_BINARY, *self.flags] if REAL_BINARY else [sys.executable, "-m", "serving", *self.flags]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            if self.client.reachable(timeout=0.5):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.client.close()
        if self.process is not None:
            stop_process(self.process, timeout=10)
        if hasattr(self, "_log"):
            self._log.close()


@pytest.fixture(scope="module")
def launch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    """Start servers for one module (`poll_s` = --model_config_file_poll_wait_seconds); all stop at the end."""
    started: list[LiveServer] = []

    def start(poll_s: int = 0) -> LiveServer:
        server = LiveServer(tmp_path_factory.mktemp("endpoint"), poll_s)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def allowed_server(settings, launch_server):  # type: ignore[no-untyped-def]
    """A real serving process whose repository the operator allows: the test's serving roots are set
    to it before any worker process starts (a worker reads MODELYARD_SERVING_ROOTS at start-up), so
    list this fixture before `worker`."""
    server = launch_server(0)
    settings.SERVING_ROOTS = [str(server.root)]
    return server


@pytest.fixture(scope="module")
def model_server(launch_server: Callable[..., LiveServer]) -> LiveServer:
    """One server (config file read once) shared by a module; tests use their own model names."""
    return launch_server(0)
