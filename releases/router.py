"""A gRPC router in front of a ``docker`` endpoint: one stable address, the active container behind it.

A docker endpoint's containers run side by side on different ports, so "switching traffic" needs
something at a fixed address that follows the switch. A TCP proxy would not do: gRPC keeps one
HTTP/2 connection open for good, so a client would stay on the old container until it stopped.
This router forwards *each RPC* (as raw bytes, any unary method: Predict, GetModelMetadata,
Classify, Regress, GetModelStatus, ...) to the target named in a small JSON file that the
promotion service rewrites atomically on every switch and rollback. The next RPC after the rename
goes to the new container; RPCs already in flight finish where they started, so a client sees no
error across the switch. Optionally it also forwards TF Serving's REST API, request by request,
to the route's ``rest_url``.

A canary route (``{"grpc_target": stable..., "canary": {"grpc_target": ..., "rest_url": ...,
"weight": 10}}``) sends ``weight`` % of requests to the canary backend and the rest to the stable
one, gRPC and REST each counted on their own (so each protocol's clients see the canary's share).
The split is deterministic (request n goes to the canary when floor(n * weight / 100) grows), so
10 % means one request in ten, not "about" one.

Django-free. Run it with ``python manage.py route_endpoint <endpoint> --listen HOST:PORT`` (the
file is ``$MODELYARD_ROUTES_DIR/<endpoint>.json``), or ``python -m releases.router --listen
HOST:PORT --target-file PATH``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from releases.deploy.durable import write_text_atomically

log = logging.getLogger(__name__)


def write_route(path: Path, *, grpc_target: str, **details: Any) -> None:
    """Point the router at ``grpc_target`` (atomic: a router reads the old file or the new one)."""
    write_text_atomically(Path(path), json.dumps({"grpc_target": grpc_target, **details}, sort_keys=True))


class RouteFile:
    """The current route (``grpc_target``, ``rest_url``, ...), re-read only when the file changes
    (a stat per call)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._key: tuple[int, int, int] | None = None
        self._route: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._requests = 0  # counted for the canary split

    def route(self) -> dict[str, Any] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key != self._key:
                try:
                    route = json.loads(self.path.read_text(encoding="utf-8"))
                    if not isinstance(route, dict) or not isinstance(route.get("grpc_target"), str):
                        raise ValueError("no grpc_target")
                except (OSError, ValueError) as exc:
                    log.error("route file %s is unreadable (%s); keeping %s", self.path, exc, self._route)
                    return self._route
                self._route, self._key = route, key
            return self._route

    def choose(self) -> dict[str, Any] | None:
        """The backend for the next request: the canary's every time its share grows, else the
        stable one (the route itself)."""
        route = self.route()
        if not route:
            return None
        canary = route.get("canary")
        if not isinstance(canary, dict) or not isinstance(canary.get("grpc_target"), str):
            return route
        weight = min(max(int(canary.get("weight") or 0), 0), 100)
        with self._lock:
            self._requests += 1
            n = self._requests
        return canary if (n * weight) // 100 > ((n - 1) * weight) // 100 else route

    def target(self) -> str | None:
        backend = self.choose()
        return str(backend["grpc_target"]) if backend else None

    def rest_url(self) -> str | None:
        backend = self.choose()
        return str(backend["rest_url"]) if backend and backend.get("rest_url") else None


class Router(grpc.GenericRpcHandler):
    """Forwards every unary RPC, undecoded, to ``route.target()``."""

    def __init__(self, route: RouteFile) -> None:
        self.route = route
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def _channel(self, target: str) -> grpc.Channel:
        with self._lock:
            if target not in self._channels:
                self._channels[target] = grpc.insecure_channel(target, options=[
                    ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
            return self._channels[target]

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            target = self.route.target()
            if target is None:
                context.abort(grpc.StatusCode.UNAVAILABLE,
                              f"No active container for this endpoint yet ({self.route.path} is missing)")
            call = self._channel(target).unary_unary(method)  # no (de)serializers: bytes in, bytes out
            try:
                return call(request, timeout=_timeout(context), metadata=_forwardable(context))
            except grpc.RpcError as exc:  # the container's own answer (NOT_FOUND, INVALID_ARGUMENT...)
                context.abort(exc.code(), exc.details() or f"{target}: {exc.code().name}")

        return grpc.unary_unary_rpc_method_handler(forward)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def _timeout(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline, passed on. Without one, gRPC reports an "infinite" remaining time
    that would overflow as a timeout: pass none then."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 365 * 24 * 3600 else None


def _forwardable(context: grpc.ServicerContext) -> list[tuple[str, Any]]:
    """The caller's own metadata; transport headers belong to each hop."""
    return [(k, v) for k, v in context.invocation_metadata() or ()
            if not k.startswith((":", "grpc-")) and k not in ("user-agent", "te", "content-type")]


def serve(listen: str, route_file: Path, *, max_workers: int = 32) -> tuple[grpc.Server, Router]:
    """Start a router on ``listen`` (host:port; port 0 picks one, see ``server.port``)."""
    router = Router(RouteFile(route_file))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), handlers=[router],
                         options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    server.port = port  # type: ignore[attr-defined]
    log.info("router on %s:%s follows %s", listen.rsplit(":", 1)[0], port, route_file)
    return server, router


# --- REST -----------------------------------------------------------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}


class _RestHandler(BaseHTTPRequestHandler):
    """Forwards one HTTP request (TF Serving's REST API) to the route's ``rest_url``."""

    protocol_version = "HTTP/1.1"  # keep-alive towards the client
    route: RouteFile  # set on the subclass serve_rest() makes

    def _forward(self) -> None:
        base = self.route.rest_url()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            return self._reply(400, b'{"error": "Invalid Content-Length header"}', [("Content-Type", "application/json")])
        body = self.rfile.read(length)
        if base is None:
            return self._reply(503, b'{"error": "No active container for this endpoint yet"}',
                               [("Content-Type", "application/json")])
        url = urlsplit(base)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
            self._reply(answer.status, payload,
                        [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP])
        except OSError as exc:
            self._reply(502, json.dumps({"error": f"{base} did not answer: {exc}"}).encode(),
                        [("Content-Type", "application/json")])
        finally:
            connection.close()

    def _reply(self, status: int, payload: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("rest %s", format % args)


def serve_rest(listen: str, route_file: Path) -> ThreadingHTTPServer:
    """Start the REST side on ``listen`` in a daemon thread (``server.server_port`` is the port)."""
    host, port = listen.rsplit(":", 1)
    handler = type("RestHandler", (_RestHandler,), {"route": RouteFile(route_file)})
    server = ThreadingHTTPServer((host, int(port)), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rest-router", daemon=True).start()
    log.info("REST router on %s:%s follows %s", host, server.server_port, route_file)
    return server


def run_forever(listen: str, route_file: Path, rest_listen: str | None = None) -> None:
    server, router = serve(listen, route_file)
    rest = serve_rest(rest_listen, route_file) if rest_listen else None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    if rest is not None:
        rest.shutdown()
    server.stop(grace=5).wait()  # GOAWAY, let in-flight RPCs finish
    router.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port to accept gRPC on")
    parser.add_argument("--rest-listen", help="host:port to accept TF Serving's REST API on (optional)")
    parser.add_argument("--target-file", required=True, type=Path, help="the endpoint's route file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_forever(args.listen, args.target_file, args.rest_listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
