"""Django's ModelBackend, reading a user's permissions in one query instead of two.

Every write through the API checks a model permission (``registry.permissions``), and Django's
backend reads the user's own permissions and their groups' permissions as two statements before
caching them on the user object for the request. Here both come from one statement (a UNION of
the two), into the same per-request caches; what is allowed is exactly what Django allows (same
rules for inactive, anonymous and superusers; object permissions are still none).
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth import backends
from django.contrib.auth.models import Permission


class ModelBackend(backends.ModelBackend):
    def get_all_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            if user_obj.is_superuser:
                return super().get_all_permissions(user_obj, obj)
            fields = ("content_type__app_label", "codename")
            own = Permission.objects.filter(user=user_obj).values_list(*fields).order_by()
            grouped = Permission.objects.filter(group__user=user_obj).values_list(*fields).order_by()
            user_obj._perm_cache = {f"{app}.{codename}" for app, codename in own.union(grouped)}
        return user_obj._perm_cache
