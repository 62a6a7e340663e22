"""The OpenAPI schema's generator (settings DEFAULT_SCHEMA_CLASS): ``AutoSchema`` adds to every
operation the error statuses it can answer with, all in the one error shape (component ``Error``),
so generated clients and fuzzers know them. The view serving it is ``registry.schema``."""
from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from rest_framework import serializers


class ErrorDetail(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. validation_error, not_found.")
    message = serializers.CharField(help_text="What went wrong, for a person.")
    details = serializers.JSONField(required=False, help_text="Validation errors: messages per field.")
    request_id = serializers.CharField(required=False, help_text="500s: the id to quote (also X-Request-ID).")


class Error(serializers.Serializer):
    error = ErrorDetail()


ERRORS = {
    400: "Invalid input (body, query parameter such as page_size, or a refused request).",
    401: "Not authenticated.",
    403: "Authenticated but not allowed.",
    404: "Unknown object or page.",
    406: "No acceptable response format (Accept header).",
    409: "Conflicts with the current state.",
    413: "Body, upload or form field too large.",
    415: "Unsupported Content-Type.",
    422: "Understood but not usable (e.g. an artifact that is not a model).",
    500: "Unexpected error, logged; the body carries the request id.",
}
READ_ERRORS = (400, 401, 403, 404, 406, 500)
# Refused by the HTTP server before the app, with its own HTML page (config/gunicorn.py).
SERVER_ERRORS = {
    414: "Request line (path and query) over 8190 bytes: refused by the HTTP server, HTML body.",
    431: "A header over 8190 bytes, or over 100 headers: refused by the HTTP server, HTML body.",
}
WRITE_ERRORS = (*READ_ERRORS, 409, 413, 415, 422)


class AutoSchema(openapi.AutoSchema):
    def _resolve_path_parameters(self, variables: list[str]) -> list[dict[str, Any]]:
        """Ids and version numbers are matched by ``[0-9]+`` regexes: integers to a client."""
        parameters = super()._resolve_path_parameters(variables)
        for parameter in parameters:
            if parameter["schema"].get("pattern") == "^[0-9]+$":
                parameter["schema"] = {"type": "integer", "minimum": 0}
        return parameters

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        statuses = READ_ERRORS if self.method in ("GET", "HEAD", "OPTIONS") else WRITE_ERRORS
        for status in statuses:
            if str(status) not in responses:
                response = self._get_response_for_code(Error, str(status), direction=direction)
                responses[str(status)] = {**response, "description": ERRORS[status]}
        for status, description in SERVER_ERRORS.items():
            responses[str(status)] = {"content": {"text/html": {"schema": {"type": "string"}}},
                                      "description": description}
        return responses

