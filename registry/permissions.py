"""API permission rule (kept apart from views: DRF imports it while loading its settings)."""
from __future__ import annotations

from typing import Any

from rest_framework import permissions


class ModelPermissions(permissions.DjangoModelPermissions):
    """Reads need a logged-in user; writes need the matching Django model permission.

    The model is read from the view's class-level ``queryset`` (an ``.none()`` is enough), so
    the check costs no query and runs before any lookup that could 404.
    """

    def _queryset(self, view: Any) -> Any:
        return view.queryset
