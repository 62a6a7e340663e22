"""The one-query permission backend allows exactly what Django's ModelBackend allows."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend as DjangoModelBackend
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry.auth_backend import ModelBackend


def _fresh(user):  # type: ignore[no-untyped-def]
    return get_user_model().objects.get(pk=user.pk)  # no permission caches


@pytest.mark.django_db
def test_own_and_group_permissions_in_one_statement_as_django_reads_them():
    user = get_user_model().objects.create_user("perm-user", password="x" * 12)
    group = Group.objects.create(name="perm-group")
    user.user_permissions.add(Permission.objects.get(codename="add_registeredmodel"))
    group.permissions.add(Permission.objects.get(codename="add_modelversion"),
                          Permission.objects.get(codename="add_registeredmodel"))
    user.groups.add(group)
    other = Group.objects.create(name="not-joined")
    other.permissions.add(Permission.objects.get(codename="delete_modelversion"))

    expected = DjangoModelBackend().get_all_permissions(_fresh(user))
    fresh = _fresh(user)
    with CaptureQueriesContext(connection) as ctx:
        found = ModelBackend().get_all_permissions(fresh)
        assert fresh.has_perm("registry.add_modelversion") and not fresh.has_perm("registry.delete_modelversion")
    assert found == expected == {"registry.add_registeredmodel", "registry.add_modelversion"}
    assert len(ctx.captured_queries) == 1


@pytest.mark.django_db
def test_inactive_superuser_and_object_rules_are_djangos():
    user = get_user_model().objects.create_user("perm-inactive", password="x" * 12, is_active=False)
    user.user_permissions.add(Permission.objects.get(codename="add_registeredmodel"))
    assert ModelBackend().get_all_permissions(_fresh(user)) == set() and not _fresh(user).has_perm(
        "registry.add_registeredmodel")
    root = get_user_model().objects.create_superuser("perm-root", password="x" * 12)
    assert ModelBackend().get_all_permissions(_fresh(root)) == DjangoModelBackend().get_all_permissions(_fresh(root))
    assert ModelBackend().get_all_permissions(_fresh(root), obj=object()) == set()
    nobody = get_user_model().objects.create_user("perm-nobody", password="x" * 12)
    assert ModelBackend().get_all_permissions(_fresh(nobody)) == set()
