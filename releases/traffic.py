"""A steady Predict client for promotion tests and bench/promotion.py: a thread that sends
Predict to a label every few milliseconds and logs (sent at, version served, error)."""
from __future__ import annotations

import threading
import time

import numpy as np

from releases.tfserving import TFServingClient


class Traffic:
    def __init__(self, target: str, model: str, x: np.ndarray, *, label: str | None = "stable",
                 input_name: str = "x", pause_s: float = 0.005) -> None:
        self.target, self.model, self.x, self.label = target, model, x, label
        self.input_name, self.pause_s = input_name, pause_s
        self.log: list[tuple[float, int | None, str]] = []
        self._clients: dict[str, TFServingClient] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def switch(self, target: str) -> None:
        """Send to another endpoint from now on (a docker endpoint's traffic switch)."""
        self.target = target

    def _client(self, target: str) -> TFServingClient:
        if target not in self._clients:
            self._clients[target] = TFServingClient(target, timeout=5)
        return self._clients[target]

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                _, version = self._client(self.target).predict(self.model, {self.input_name: self.x},
                                                               label=self.label)
                self.log.append((sent, version, ""))
            except Exception as exc:  # every failure is the finding, recorded
                self.log.append((sent, None, f"{type(exc).__name__}: {exc}"))
            time.sleep(self.pause_s)

    def start(self) -> "Traffic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> "Traffic":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failures(self) -> list[str]:
        return [error for _, served, error in self.log if served is None]

    def versions(self, since: float = 0.0) -> set[int | None]:
        return {served for sent, served, _ in self.log if sent >= since}

    def first_seen(self, version: int, after: float, timeout: float = 30.0) -> float:
        """Monotonic send time of the first answer from ``version`` sent after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [sent for sent, served, _ in list(self.log) if sent >= after and served == version]
            if hits:
                return hits[0]
            time.sleep(0.005)
        raise TimeoutError(f"the client never got an answer from version {version}")
