"""API permission rule (kept apart from views: DRF imports it while loading its settings)."""
from __future__ import annotations

from typing import Any

from rest_framework import permissions


class ModelPermissions(permissions.DjangoModelPermissions):
    """Reads need a logged-in user; writes need the matching Django model permission.

    The model is read from the view's class-level ``queryset`` (an ``.none()`` is enough), so
    the check costs no query and runs before any lookup that could 404. A view whose POST is
    not a creation sets ``permission_action`` (e.g. ``"change"`` for cancel).
    """

    def has_permission(self, request: Any, view: Any) -> bool:
        self._action = getattr(view, "permission_action", None)
        return super().has_permission(request, view)

    def get_required_permissions(self, method: str, model_cls: Any) -> list[str]:
        """A view may name the action its POST performs (e.g. cancel = ``change``)."""
        action = getattr(self, "_action", None)
        if action and method not in permissions.SAFE_METHODS:
            return [f"{model_cls._meta.app_label}.{action}_{model_cls._meta.model_name}"]
        return super().get_required_permissions(method, model_cls)

    def _queryset(self, view: Any) -> Any:
        return view.queryset
