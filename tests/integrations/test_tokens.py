"""Scoped API tokens: hashed storage, scopes, the user's own permissions as a ceiling,
four-eyes, expiry, revocation, last use."""
from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from integrations.models import ApiToken
from integrations.tokens import token_with_user
from registry.models import AuditEvent, RegisteredModel
from releases.models import Release
from tests.integrations.conftest import token_client

ALL_SCOPES = ["registry:read", "registry:write", "optimize", "releases:read", "releases:request",
              "releases:approve", "releases:promote"]


@pytest.mark.django_db
def test_created_token_is_shown_once_and_stored_hashed(alice):
    session = APIClient()
    session.force_authenticate(alice)
    created = session.post("/api/v1/tokens/", {"name": "ci", "scopes": ["registry:read"], "expires_in_days": 7},
                           format="json")
    assert created.status_code == 201, created.content
    secret = created.json()["token"]
    assert secret.startswith("myd_") and len(secret) >= 40
    row = ApiToken.objects.get(pk=created.json()["id"])
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(ApiToken.objects.filter(pk=row.pk).values().first())
    assert timedelta(days=6) < row.expires_at - timezone.now() <= timedelta(days=7)
    listed = session.get("/api/v1/tokens/").json()["results"]
    assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0]
    assert AuditEvent.objects.filter(action="token.create", object_id=str(row.pk)).exists()


@pytest.mark.django_db
def test_scopes_limit_what_a_token_does(alice, make_token):
    _, reader = make_token(alice, ["registry:read"])
    assert reader.get("/api/v1/models/").status_code == 200
    refused = reader.post("/api/v1/models/", {"name": "m", "task": "classification"}, format="json")
    assert refused.status_code == 403
    assert "registry:write" in refused.json()["error"]["message"]
    assert reader.get("/api/v1/releases/").status_code == 403  # needs releases:read
    assert not RegisteredModel.objects.exists()
    _, writer = make_token(alice, ["registry:write"], name="writer")
    created = writer.post("/api/v1/models/", {"name": "m", "task": "classification"}, format="json")
    assert created.status_code == 201, created.content
    assert RegisteredModel.objects.get(name="m").owner == alice


@pytest.mark.django_db
def test_a_token_never_grants_more_than_its_user_has(django_user_model, make_token):
    from tests.conftest import make_user

    charlie = make_user(django_user_model, "charlie", [])
    _, client = make_token(charlie, ALL_SCOPES)
    response = client.post("/api/v1/models/", {"name": "m", "task": "classification"}, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
    assert not RegisteredModel.objects.exists()


@pytest.mark.django_db
def test_a_scoped_token_cannot_mint_tokens(alice, make_token):
    _, client = make_token(alice, ALL_SCOPES)
    response = client.post("/api/v1/tokens/", {"name": "more", "scopes": ALL_SCOPES}, format="json")
    assert response.status_code == 403
    assert ApiToken.objects.count() == 1


@pytest.mark.django_db
def test_approving_needs_the_scope_and_the_permission_and_four_eyes(alice, bob, versions, make_token, settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.dummy.DummyBackend", "QUEUES": settings.TASKS["default"]["QUEUES"]}}
    from django.contrib.auth.models import Permission

    alice.user_permissions.add(Permission.objects.get(codename="approve_release"))
    _, pipeline = make_token(alice, ["releases:request", "releases:read", "releases:approve"])
    created = pipeline.post("/api/v1/releases/", {"model": "digits", "version": 1, "environment": "production"},
                            format="json")
    assert created.status_code == 201, created.content
    release_id = created.json()["id"]
    assert pipeline.post(f"/api/v1/releases/{release_id}/submit/").status_code == 200
    own = pipeline.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "lgtm"}, format="json")
    assert own.status_code == 403 and own.json()["error"]["code"] == "four_eyes"
    _, bob_reader = make_token(bob, ["releases:read"], name="bob-read")
    no_scope = bob_reader.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "lgtm"}, format="json")
    assert no_scope.status_code == 403 and "releases:approve" in no_scope.json()["error"]["message"]
    assert Release.objects.get(pk=release_id).state == "pending_approval"
    _, bob_approver = make_token(bob, ["releases:approve"], name="bob-approve")
    ok = bob_approver.post(f"/api/v1/releases/{release_id}/approve/", {"comment": "metrics fine"}, format="json")
    assert ok.status_code == 200, ok.content
    assert Release.objects.get(pk=release_id).state == "approved"


@pytest.mark.django_db
def test_a_token_with_approve_scope_of_a_user_without_the_permission_cannot_approve(alice, versions, make_token,
                                                                                  django_user_model, settings):
    from releases import services
    from releases.models import Environment
    from tests.conftest import make_user

    release = services.release_create(version=versions[0], environment=Environment.objects.get(name="production"),
                                      requester=alice)
    services.release_submit(release=release, actor=alice)
    dave = make_user(django_user_model, "dave", [])
    _, client = make_token(dave, ["releases:approve"])
    response = client.post(f"/api/v1/releases/{release.pk}/approve/", {"comment": "x"}, format="json")
    assert response.status_code == 403
    assert "approve_release" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_expired_and_revoked_tokens_are_refused(alice, make_token):
    token, client = make_token(alice, ["registry:read"])
    assert client.get("/api/v1/models/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = client.get("/api/v1/models/")
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    token2, client2 = make_token(alice, ["registry:read"], name="second")
    session = APIClient()
    session.force_authenticate(alice)
    revoked = session.delete(f"/api/v1/tokens/{token2.pk}/")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    token2.refresh_from_db()
    assert token2.revoked_at is not None
    response = client2.get("/api/v1/models/")
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]
    assert token_client("myd_" + "x" * 43).get("/api/v1/models/").status_code == 401


@pytest.mark.django_db
def test_the_authenticating_lookup_reads_the_token_and_user_as_the_orm_does(alice, make_token):
    """``token_with_user`` is SQL (registry.sql): every column of both rows converted as the ORM
    converts it (aware datetimes, JSON scopes, booleans), on SQLite and PostgreSQL."""
    token, _client = make_token(alice, ["registry:read", "registry:write"], expires_in_days=30)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    found, expected = token_with_user(token.token_hash), ApiToken.objects.select_related("user").get(pk=token.pk)
    for field in ApiToken._meta.concrete_fields:
        assert getattr(found, field.attname) == getattr(expected, field.attname), field.name
    for field in get_user_model()._meta.concrete_fields:
        assert getattr(found.user, field.attname) == getattr(expected.user, field.attname), field.name
    assert found.scopes == ["registry:read", "registry:write"] and found.expires_at.tzinfo is not None
    assert found.user.is_active is True and found.user.get_username() == "alice" and not found._state.adding
    assert token_with_user("0" * 64) is None


@pytest.mark.django_db
def test_last_used_is_written_at_most_once_a_minute(alice, make_token, django_assert_num_queries):
    token, client = make_token(alice, ["registry:read"], name="t")
    client.get("/api/v1/models/")
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    client.get("/api/v1/models/")
    token.refresh_from_db()
    assert token.last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    client.get("/api/v1/models/")
    token.refresh_from_db()
    assert token.last_used_at > first - timedelta(minutes=2)


@pytest.mark.django_db
def test_token_header_form_and_legacy_tokens_still_work(alice, make_token):
    from integrations import tokens

    _, secret = tokens.token_create(actor=alice, name="tok", scopes=["registry:read"])
    assert token_client(secret, scheme="Token").get("/api/v1/models/").status_code == 200
    legacy = Token.objects.create(user=alice)
    response = token_client(legacy.key, scheme="Token").post("/api/v1/models/", {"name": "m", "task": "classification"},
                                                             format="json")
    assert response.status_code == 201, response.content


@pytest.mark.django_db
def test_service_account_tokens_need_the_manage_permission(alice, django_user_model):
    from django.contrib.auth.models import Permission

    from integrations.models import ServiceAccount
    from tests.conftest import make_user

    bot = make_user(django_user_model, "ci-bot", ["registry.add_registeredmodel"])
    ServiceAccount.objects.create(user=bot)
    session = APIClient()
    session.force_authenticate(alice)
    body = {"name": "github", "scopes": ["registry:write"], "username": "ci-bot"}
    assert session.post("/api/v1/tokens/", body, format="json").status_code == 403
    assert session.post("/api/v1/tokens/", {**body, "username": "charlie-nobody"},
                        format="json").status_code == 404
    alice.user_permissions.add(Permission.objects.get(codename="change_serviceaccount"))
    session.force_authenticate(type(alice).objects.get(pk=alice.pk))
    created = session.post("/api/v1/tokens/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["user"] == "ci-bot" and created.json()["service_account"] is True
    bot_client = token_client(created.json()["token"])
    made = bot_client.post("/api/v1/models/", {"name": "bots", "task": "classification"}, format="json")
    assert made.status_code == 201 and RegisteredModel.objects.get(name="bots").owner == bot
    assert [t["user"] for t in session.get("/api/v1/tokens/").json()["results"]] == ["ci-bot"]
