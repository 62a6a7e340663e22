"""Every request gets an id: the caller's ``X-Request-ID`` when it is a sane token, else a new one.

The id goes back in the response's ``X-Request-ID`` header, into ``error.request_id`` of a 500,
and into the log line of an unexpected exception, so a user's report can be matched to the log.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

HEADER = "X-Request-ID"
# Letters, digits and a few separators, at most 128 characters: anything else (spaces, newlines,
# quotes) could forge log lines or headers, so it is replaced rather than echoed.
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id(request: HttpRequest) -> str:
    """The request's id, assigned on first use (also for requests the middleware never saw)."""
    rid = getattr(request, "request_id", None)
    if rid is None:
        incoming = request.headers.get(HEADER, "") if hasattr(request, "headers") else ""
        rid = incoming if _SANE.fullmatch(incoming) else uuid.uuid4().hex
        request.request_id = rid  # type: ignore[attr-defined]
    return rid


class RequestIdMiddleware:
    """First in MIDDLEWARE, so even an error page made by a later middleware carries the id."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rid = request_id(request)
        response = self.get_response(request)
        response[HEADER] = rid
        return response
