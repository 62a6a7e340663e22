"""Create the first admin user and the standard groups, once.

Credentials come from MODELYARD_ADMIN_USERNAME / MODELYARD_ADMIN_PASSWORD (or *_FILE); without a
password one is generated and printed once — it is never written anywhere else.
"""
from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand
from django.db import transaction

from config.env import env_str

GROUPS: dict[str, list[str]] = {
    "ml-engineers": [
        "registry.add_registeredmodel", "registry.change_registeredmodel", "registry.view_registeredmodel",
        "registry.add_modelversion", "registry.change_modelversion", "registry.view_modelversion",
        "registry.change_modelalias", "registry.delete_modelalias", "registry.view_modelalias",
        "registry.add_dataset", "registry.view_dataset", "registry.view_auditevent",
    ],
    # Endpoints decide where promotion writes and deletes files and which Docker engine it drives.
    "operators": ["releases.operate_endpoints", "releases.view_endpoint", "registry.view_auditevent"],
    # Approve, promote and roll back (console release pages): with four-eyes on in production, a
    # production release needs a second person in this group besides its requester.
    "release-managers": [
        "releases.approve_release", "releases.change_release", "releases.view_release",
        "releases.view_endpoint", "registry.view_auditevent",
    ],
}


class Command(BaseCommand):
    help = "Create the admin user (from env vars, else with a generated password) and standard groups."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        self._groups()
        User = get_user_model()
        username = env_str("MODELYARD_ADMIN_USERNAME", "admin") or "admin"
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"Admin user {username!r} already exists.")
            return
        password = env_str("MODELYARD_ADMIN_PASSWORD")
        generated = not password
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=env_str("MODELYARD_ADMIN_EMAIL", "") or "",
                                      password=password)
        if generated:
            self.stdout.write(self.style.WARNING(
                f"Created admin user {username!r} with password: {password}\n(shown once; set "
                "MODELYARD_ADMIN_PASSWORD to choose it)"))
        else:
            self.stdout.write(f"Created admin user {username!r} (password from MODELYARD_ADMIN_PASSWORD).")

    def _groups(self) -> None:
        for name, perms in GROUPS.items():
            group, _ = Group.objects.get_or_create(name=name)
            for perm in perms:
                app, codename = perm.split(".")
                found = Permission.objects.filter(content_type__app_label=app, codename=codename).first()
                if found:
                    group.permissions.add(found)
