"""Django's error views (config/urls.py handler400/403/404/500, settings.CSRF_FAILURE_VIEW).

These run for errors no API view handled: an unknown URL, a refusal by a middleware (CSRF, a
disallowed host), an exception outside DRF. Under ``/api/`` they answer in the API's one error
shape; everywhere else with a small HTML page (templates/400.html ... 500.html).
"""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader

from registry.api_common import TOO_LARGE, error_body, server_error_body, too_large_body

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def _page(request: HttpRequest, status: int, message: str, template: str = "", **context: Any) -> HttpResponse:
    try:
        html = loader.render_to_string(template or f"{status}.html", {"message": message, **context}, request=None)
    except Exception:  # never let the error page itself fail (e.g. a broken base template)
        html = f"<!doctype html><title>{status}</title><h1>{status}</h1>"
    return HttpResponse(html, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if isinstance(exception, TOO_LARGE):
        status, body = too_large_body(exception)
    else:
        status, body = 400, error_body("bad_request", f"The request was refused: {exception or 'bad request'}")
    if _is_api(request):
        return JsonResponse(body, status=status)
    return _page(request, status, body["error"]["message"], template="400.html")  # 400 or 413


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = str(exception or "") or "You do not have permission to do this."
    if _is_api(request):
        return JsonResponse(error_body("permission_denied", message), status=403)
    return _page(request, 403, message)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body("not_found", f"There is no API endpoint at {request.path[:200]} "
                                                    "(see /api/docs/)."), status=404)
    return _page(request, 404, "There is no page here.")


def server_error(request: HttpRequest) -> HttpResponse:
    # Django has already logged the exception; log the request id with it.
    body = server_error_body(request, None)
    if _is_api(request):
        return JsonResponse(body, status=500)
    return _page(request, 500, body["error"]["message"], request_id=body["error"]["request_id"])


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    message = f"CSRF check failed: {reason or 'missing or wrong token'}. Reload the page and try again."
    if _is_api(request):
        return JsonResponse(error_body("csrf_failed", message), status=403)
    return _page(request, 403, message)
