"""What every API view shares: one error shape, one permission rule."""
from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    PermissionDenied, RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent, TooManyFilesSent,
)
from django.http import Http404, HttpRequest
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from registry.errors import ModelyardError
from registry.requestid import request_id

log = logging.getLogger(__name__)

DRF_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.ParseError: "malformed_request",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ValidationError: "validation_error",
    exceptions.Throttled: "throttled",
    exceptions.NotAcceptable: "not_acceptable",
}
# Django refuses these while reading the body, before any view code runs.
TOO_LARGE = (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def _flatten(detail: Any, prefix: str = "") -> list[str]:
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            label = key if key != "non_field_errors" else ""
            out.extend(_flatten(value, f"{prefix}{label}: " if label else prefix))
        return out
    if isinstance(detail, list):
        return [m for item in detail for m in _flatten(item, prefix)]
    return [f"{prefix}{detail}"]


def too_large_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    """Django's refusal of an oversized body (a form field over DATA_UPLOAD_MAX_MEMORY_SIZE, too
    many fields) as a 413 in the error shape; Django itself answers with an HTML 400."""
    return 413, error_body("too_large", f"The request body is too large: {exc}. Upload files as files, and "
                                        f"keep form fields and JSON bodies under "
                                        f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")


def server_error_body(request: HttpRequest | None, exc: BaseException | None, *,
                      code: str = "server_error", message: str = "") -> dict[str, Any]:
    """Log an unexpected error with the request id, and say which id to quote."""
    rid = request_id(request) if request is not None else "-"
    where = f"{request.method} {request.path}" if request is not None else "?"
    log.error("unhandled error [request %s] %s", rid, where, exc_info=exc)
    body = error_body(code, f"{message or 'Something went wrong on our side.'} Quote request id {rid} when "
                            "reporting it.")
    body["error"]["request_id"] = rid
    return body


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Turn every exception an API view raises into ``{"error": {"code", "message"[, "details"]}}``:
    domain errors (every app's, by their ``status_code``/``code``/``message``/``details``), DRF's,
    Django's refusals of a request, and (as a logged 500 carrying the request id) anything
    unexpected."""
    request = context.get("request")
    if isinstance(exc, ModelyardError):
        if exc.status_code >= 500:
            body = server_error_body(request, exc, code=exc.code, message=exc.message)
            return Response(body, status=exc.status_code)
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, SuspiciousOperation):
        # Logged where Django logs these when no API view catches them.
        logging.getLogger(f"django.security.{type(exc).__name__}").warning("%s", exc)
        if isinstance(exc, TOO_LARGE):
            code, body = too_large_body(exc)
            return Response(body, status=code)
        return Response(error_body("bad_request", f"The request was refused: {exc}"), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return Response(server_error_body(request, exc), status=500)
    code = next((c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, exceptions.ValidationError):
        message = "; ".join(_flatten(exc.detail)) or "Invalid input."
        response.data = error_body(code, message, exc.detail)
    else:
        detail = exc.detail if isinstance(exc.detail, str) else "; ".join(_flatten(exc.detail))
        response.data = error_body(code, str(detail))
    return response


__all__ = ["exception_handler", "error_body", "status"]
