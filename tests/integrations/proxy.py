"""A tiny TCP proxy that breaks uploads for real: the Nth request whose bytes contain a marker
(e.g. ``POST /api/v1/models/m/versions/``) is cut mid-body, or its response is dropped after
the server handled it. Everything else is relayed unchanged."""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class CuttingProxy:
    target_port: int
    marker: bytes
    plan: list[str] = field(default_factory=list)  # per marked request: "cut_mid_body" | "drop_response"
    cut_after: int = 4096  # body bytes relayed before a cut
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        state = {"policy": "pass", "after_marker": -1}
        done = threading.Event()

        def close_both() -> None:
            done.set()
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        def up() -> None:
            try:
                while not done.is_set():
                    data = client.recv(65536)
                    if not data:
                        break
                    if state["after_marker"] < 0 and self.marker in data:
                        with self.lock:
                            state["policy"] = self.plan.pop(0) if self.plan else "pass"
                            self.seen.append(state["policy"])
                        state["after_marker"] = len(data) - data.index(self.marker)
                    elif state["after_marker"] >= 0:
                        state["after_marker"] += len(data)
                    if state["policy"] == "cut_mid_body" and state["after_marker"] > self.cut_after:
                        upstream.sendall(data[: max(0, len(data) - (state["after_marker"] - self.cut_after))])
                        close_both()
                        return
                    upstream.sendall(data)
            except OSError:
                pass

        def down() -> None:
            try:
                while not done.is_set():
                    data = upstream.recv(65536)
                    if not data:
                        break
                    if state["policy"] == "drop_response":
                        close_both()  # the server answered; the client never hears it
                        return
                    client.sendall(data)
            except OSError:
                pass
            close_both()

        threading.Thread(target=up, daemon=True).start()
        down()

    def close(self) -> None:
        self.listener.close()
