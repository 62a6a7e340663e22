"""Template context every page gets: the "awaiting my decision" count for the navigation."""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from console import selectors


def navigation(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or request.path.startswith(("/admin/", "/api/")):
        return {}
    if getattr(request, "htmx", False) and not request.path.endswith("/awaiting-count/"):
        return {}  # a polled partial (job progress, release steps) has no navigation to fill
    return {"awaiting_count": selectors.awaiting_decision(user).count()}
