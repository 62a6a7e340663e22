"""Django's ModelBackend, reading a user's permissions in one statement instead of two.

Every write through the API checks a model permission (``registry.permissions``), and Django's
backend reads the user's own permissions and their groups' permissions as two statements before
caching them on the user object for the request. Here both come from one statement, written in
SQL (``registry.sql``: the ORM took longer to build this UNION than the database to run it), into
the same per-request cache; what is allowed is exactly what Django allows (same rules for
inactive, anonymous and superusers; object permissions are still none).
"""
from __future__ import annotations

import functools
from typing import Any

from django.contrib.auth import backends, get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType

from registry import sql


class ModelBackend(backends.ModelBackend):
    def get_all_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            if user_obj.is_superuser:
                return super().get_all_permissions(user_obj, obj)
            rows = sql.fetch(_permissions_sql(), [user_obj.pk, user_obj.pk])
            user_obj._perm_cache = {f"{app}.{codename}" for app, codename in rows}
        return user_obj._perm_cache


@functools.cache
def _permissions_sql() -> str:
    """(app label, codename) of the permissions a user holds directly or through a group; the
    statement is the same for every user (two bound parameters), so it is built once."""
    own = get_user_model().user_permissions.field  # user <-> permission
    member = get_user_model().groups.field  # user <-> group
    granted = Group.permissions.field  # group <-> permission

    def link(m2m: Any, side: str) -> str:  # a column of the many-to-many's link table
        end = m2m.m2m_field_name() if side == "from" else m2m.m2m_reverse_field_name()
        return sql.column(m2m.remote_field.through, end)

    return (
        f"SELECT {sql.column(ContentType, 'app_label')}, {sql.column(Permission, 'codename')} "
        f"FROM {sql.table(Permission)} INNER JOIN {sql.table(ContentType)} "
        f"ON {sql.column(Permission, 'content_type')} = {sql.column(ContentType, 'id')} "
        f"WHERE {sql.column(Permission, 'id')} IN ("
        f"SELECT {link(own, 'to')} FROM {sql.table(own.remote_field.through)} WHERE {link(own, 'from')} = %s "
        f"UNION SELECT {link(granted, 'to')} FROM {sql.table(granted.remote_field.through)} "
        f"INNER JOIN {sql.table(member.remote_field.through)} ON {link(member, 'to')} = {link(granted, 'from')} "
        f"WHERE {link(member, 'from')} = %s)"
    )
