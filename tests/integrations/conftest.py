"""Integrations personas: the release personas (alice requests, bob approves), plus helpers to
make scoped tokens and API clients that send them."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

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
