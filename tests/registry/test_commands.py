"""The registry command `make run` calls: ensure_admin (seed_demo: tests/metrics/test_seed_demo.py)."""
from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command


@pytest.mark.django_db
def test_ensure_admin_generates_a_password_once(monkeypatch):
    monkeypatch.delenv("MODELYARD_ADMIN_PASSWORD", raising=False)
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    password = out.getvalue().split("password: ")[1].split()[0]
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    again = io.StringIO()
    call_command("ensure_admin", stdout=again)
    assert "already exists" in again.getvalue() and "password" not in again.getvalue()


@pytest.mark.django_db
def test_ensure_admin_takes_credentials_from_env(monkeypatch):
    monkeypatch.setenv("MODELYARD_ADMIN_USERNAME", "root-user")
    monkeypatch.setenv("MODELYARD_ADMIN_PASSWORD", "s3cret-pass-word")
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    assert "s3cret" not in out.getvalue()
    assert get_user_model().objects.get(username="root-user").check_password("s3cret-pass-word")
