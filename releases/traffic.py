"""Steady clients for promotion tests and bench/promotion.py: a thread that sends Predict every few
milliseconds and logs (sent at, version served, error). ``Traffic`` speaks gRPC (the answer names
the version); ``RestTraffic`` speaks TF Serving's REST API, whose predict answer carries no version,
so the caller says how to tell versions apart by their predictions."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

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

    def call(self) -> int:
        """One Predict; the version that answered."""
        _, version = self._client(self.target).predict(self.model, {self.input_name: self.x}, label=self.label)
        return version

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                self.log.append((sent, self.call(), ""))
            except Exception as exc:  # every failure is the finding, recorded
                self.log.append((sent, None, f"{type(exc).__name__}: {exc}"))
            time.sleep(self.pause_s)

    def start(self) -> "Traffic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.close()

    def __enter__(self) -> "Traffic":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failures(self) -> list[str]:
        return [error for _, served, error in self.log if served is None]

    def versions(self, since: float = 0.0) -> set[int | None]:
        return {served for sent, served, _ in self.log if sent >= since}

    def served(self, since: float = 0.0, until: float = float("inf")) -> list[int | None]:
        """Versions that answered the calls sent in [since, until), in order."""
        return [served for sent, served, _ in list(self.log) if since <= sent < until]

    def wait_calls(self, count: int, since: float, timeout: float = 60.0) -> None:
        """Until ``count`` calls sent at or after ``since`` have been answered (or failed)."""
        deadline = time.monotonic() + timeout
        while len(self.served(since)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.served(since))} of {count} calls in {timeout} s")
            time.sleep(0.02)

    def first_seen(self, version: int, after: float, timeout: float = 30.0) -> float:
        """Monotonic send time of the first answer from ``version`` sent after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [sent for sent, served, _ in list(self.log) if sent >= after and served == version]
            if hits:
                return hits[0]
            time.sleep(0.005)
        raise TimeoutError(f"the client never got an answer from version {version}")


class RestTraffic(Traffic):
    """Predict over REST (``POST {base_url}/v1/models/<model>[/labels/<label>]:predict``, a kept-alive
    session). ``identify(predictions)`` names the version that answered: a REST predict answer
    carries none (as TF Serving's), so e.g. compare with each version's known outputs; an answer it
    cannot place (None) is logged as a failure."""

    def __init__(self, base_url: str, model: str, x: np.ndarray, *, identify: Callable[[Any], int | None],
                 label: str | None = "stable", pause_s: float = 0.005) -> None:
        import requests

        super().__init__(base_url.rstrip("/"), model, x, label=label, pause_s=pause_s)
        self.identify = identify
        self._session = requests.Session()
        self._body = {"instances": np.asarray(x).tolist()}

    def call(self) -> int:
        path = f"/v1/models/{self.model}" + (f"/labels/{self.label}" if self.label else "") + ":predict"
        answer = self._session.post(self.target + path, json=self._body, timeout=5)
        if answer.status_code != 200:
            raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")
        version = self.identify(answer.json()["predictions"])
        if version is None:
            raise RuntimeError(f"an answer no known version gives: {answer.text[:200]}")
        return version

    def close(self) -> None:
        self._session.close()
