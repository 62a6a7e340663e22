"""Integrations personas: the release personas (alice requests, bob approves), plus helpers to
make scoped tokens and API clients that send them."""
from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from rest_framework.test import APIClient

from tests.integrations.receiver import Receiver

from tests.releases.conftest import alice, bob, bob_api, versions  # noqa: F401 - shared fixtures


def token_client(secret: str, scheme: str = "Bearer") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {secret}")
    return client


@pytest.fixture
def make_token():  # type: ignore[no-untyped-def]
    """make_token(user, scopes, **kw) -> (ApiToken, APIClient authenticated by it)."""
    from integrations import tokens

    def make(user, scopes, name="ci", **kwargs):  # type: ignore[no-untyped-def]
        token, secret = tokens.token_create(actor=user, name=name, scopes=scopes, **kwargs)
        return token, token_client(secret)

    return make


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def loopback_allowed(settings, monkeypatch):  # type: ignore[no-untyped-def]
    """The receiver listens on loopback: the operator allow-list lets it through (here and in the
    worker process, which reads the environment); retries start after 1 s."""
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    monkeypatch.setenv("MODELYARD_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("MODELYARD_WEBHOOK_RETRY_BASE_SECONDS", "1")


@pytest.fixture
def hooks_api(alice):  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import Permission

    alice.user_permissions.add(*Permission.objects.filter(content_type__app_label="integrations",
                                                          codename__endswith="webhooksubscription"))
    client = APIClient()
    client.force_authenticate(type(alice).objects.get(pk=alice.pk))
    return client


def verify(secret: str, received, window: int = 300) -> dict:  # type: ignore[no-untyped-def]
    """What a receiver does: check the timestamp is recent and the HMAC matches."""
    parts = dict(p.split("=", 1) for p in received.headers["X-Modelyard-Signature"].split(","))
    assert abs(time.time() - int(parts["t"])) < window
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, parts["v1"])
    return received.json
