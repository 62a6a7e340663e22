"""REST front end: TF Serving's /v1 paths on a stdlib ThreadingHTTPServer.

Routing uses TF Serving's own regular expressions (http_rest_api_util.cc); the
status/metadata bodies are the proto JSON TF Serving prints; errors are
{"error": message} with the HTTP status mapped from the canonical code.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from . import inference, json_tensor
from .errors import ServingError, invalid_argument
from .grpc_service import SIGNATURE_DEF_FIELD, model_metadata, model_status
from .manager import ModelManager
from .monitoring import ServingMetrics

log = logging.getLogger(__name__)

PREDICTION_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
API_PREFIX_RE = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)


def model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    """FillModelSpecWithNameVersionAndLabel()."""
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version:
        try:
            spec.version.value = int(version)
        except ValueError:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.") from None
        if spec.version.value >= 2**63:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    if label:
        spec.version_label = unquote(label)
    return spec


class RestApi:
    """Dispatches one request; returns (http status, JSON body). No HTTP details here."""

    def __init__(self, manager: ModelManager, metrics: ServingMetrics | None = None) -> None:
        self._manager = manager
        self._metrics = metrics

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        started, status = time.perf_counter(), "OK"
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as exc:
            status = exc.code.name
            return exc.http_status, json_tensor.render_error(exc.message)
        except Exception as exc:  # a bug must still answer like TF Serving would
            status = "INTERNAL"
            log.exception("REST %s %s failed", method, path)
            return 500, json_tensor.render_error(f"{type(exc).__name__}: {exc}")
        finally:
            self._record(method, path, status, time.perf_counter() - started)

    def _record(self, method: str, path: str, status: str, seconds: float) -> None:
        """Inference calls only (classify, regress, predict), as TF Serving counts them."""
        match = PREDICTION_RE.fullmatch(path) if method == "POST" and self._metrics is not None else None
        if match and self._metrics is not None:
            self._metrics.record(model_name=unquote(match.group(1)), api=match.group(4).lower(),
                                 entrypoint="REST", status=status, seconds=seconds)

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        if method == "POST":
            match = PREDICTION_RE.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                spec = model_spec(name, version, label)
                return getattr(self, f"_{verb.lower()}")(spec, body)
        elif method == "GET":
            match = STATUS_RE.fullmatch(path)
            if match:
                name, version, label, sub = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                spec = model_spec(name, version, label)
                return self._metadata(spec) if sub else self._status(spec)
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _status(self, spec: model_pb2.ModelSpec) -> str:
        response = model_status(self._manager, get_model_status_pb2.GetModelStatusRequest(
            model_spec=spec))
        return json_format.MessageToJson(response, always_print_fields_with_no_presence=True)

    def _metadata(self, spec: model_pb2.ModelSpec) -> str:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
        response = model_metadata(self._manager, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        return json.dumps({
            "model_spec": json.loads(json_format.MessageToJson(response.model_spec, **options)),
            "metadata": {SIGNATURE_DEF_FIELD: json.loads(
                json_format.MessageToJson(signature_map, **options))},
        }, indent=1)

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        doc = json_tensor.parse_json(body)
        signature_name = json_tensor.signature_name_of(doc)
        servable, _ = self._manager.resolve(spec)
        # GetInfoMap(): REST looks the signature up itself, with its own wording.
        key = inference.signature_key(signature_name)
        signature = servable.signature_defs.get(key)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        inputs, row_format = json_tensor.predict_inputs(doc, signature)
        outputs = inference.predict(servable, signature_name, inputs)
        return json_tensor.render_predict(outputs, row_format)

    def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        doc = json_tensor.parse_json(body)
        signature_name = json_tensor.signature_name_of(doc)
        request_input = json_tensor.example_input(doc, "classify")
        servable, _ = self._manager.resolve(spec)
        return json_tensor.render_classification(
            inference.classify(servable, signature_name, request_input,
                               self._manager.options.signature_method_name_check))

    def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        doc = json_tensor.parse_json(body)
        signature_name = json_tensor.signature_name_of(doc)
        # TF Serving reuses the classify parser, message included.
        request_input = json_tensor.example_input(doc, "classify")
        servable, _ = self._manager.resolve(spec)
        return json_tensor.render_regression(
            inference.regress(servable, signature_name, request_input,
                              self._manager.options.signature_method_name_check))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's evhttp server
    # Headers and body are separate writes; without TCP_NODELAY, Nagle + delayed ACK
    # add ~40 ms to every response.
    disable_nagle_algorithm = True
    api: RestApi  # set on the subclass built by create_server
    metrics: ServingMetrics | None = None
    metrics_path: str | None = None  # --monitoring_config_file's prometheus_config.path, when enabled

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if method == "GET" and self.metrics_path and path == self.metrics_path and self.metrics is not None:
            self._reply(200, self.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
            return
        if not API_PREFIX_RE.fullmatch(path):
            # TF Serving registers no handler outside /v1/: the HTTP server answers 404.
            self._reply(404, json_tensor.render_error(f"Not found: {path}"))
            return
        status, payload = self.api.handle(method, path, body)
        self._reply(status, payload)

    def _reply(self, status: int, payload: str, content_type: str = "application/json") -> None:
        data = payload.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s - %s", self.address_string(), fmt % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def create_server(manager: ModelManager, port: int, metrics: ServingMetrics | None = None,
                  metrics_path: str | None = None) -> tuple[ThreadingHTTPServer, int]:
    handler = type("RestHandler", (_Handler,), {"api": RestApi(manager, metrics), "metrics": metrics,
                                                "metrics_path": metrics_path})
    server = _Server(("0.0.0.0", port), handler)
    return server, server.server_address[1]


def serve_in_background(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="rest", daemon=True)
    thread.start()
    return thread
