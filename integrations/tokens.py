"""Scoped API tokens: create (secret shown once), revoke, authenticate.

A token is ``myd_`` + 32 random bytes (url-safe base64); only its sha256 is stored, so a leaked
database does not leak usable tokens, and lookup is one indexed equality on the hash.
"""
from __future__ import annotations

import hashlib
import secrets
import types
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from rest_framework import authentication, exceptions

from integrations import scopes as scope_rules
from integrations.errors import IntegrationError
from integrations.models import ApiToken, ServiceAccount
from registry import audit, sql
from registry.errors import Conflict, Forbidden, NotFound

PREFIX = "myd_"
# last_used_at is written at most this often per token: a busy pipeline must not turn every
# request into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _target_user(actor: AbstractBaseUser, username: str | None) -> AbstractBaseUser:
    """Whose token: the actor's own, or a service account's if the actor may manage those."""
    if not username or username == actor.get_username():
        return actor
    user = get_user_model().objects.filter(username=username).first()
    if user is None or not ServiceAccount.objects.filter(user=user).exists():
        raise NotFound(f"No service account {username!r}.", code="service_account_not_found")
    if not actor.has_perm("integrations.change_serviceaccount"):
        raise Forbidden("Creating tokens for a service account needs integrations.change_serviceaccount.")
    return user


@transaction.atomic
def token_create(*, actor: AbstractBaseUser, name: str, scopes: list[str], expires_in_days: int | None = None,
                 username: str | None = None) -> tuple[ApiToken, str]:
    """Make a token; returns it and its secret (the only time the secret exists in clear)."""
    try:
        clean_scopes = scope_rules.validate(scopes)
    except ValueError as exc:
        raise IntegrationError(str(exc), code="validation_error") from None
    if not clean_scopes:
        raise IntegrationError("A token needs at least one scope.", code="validation_error")
    days = expires_in_days or settings.API_TOKEN_DEFAULT_DAYS
    if not 1 <= days <= settings.API_TOKEN_MAX_DAYS:
        raise IntegrationError(f"expires_in_days must be between 1 and {settings.API_TOKEN_MAX_DAYS} "
                               "(MODELYARD_API_TOKEN_MAX_DAYS).", code="validation_error")
    user = _target_user(actor, username)
    secret = PREFIX + secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            token = ApiToken.objects.create(user=user, name=name, prefix=secret[:12], token_hash=hash_secret(secret),
                                            scopes=clean_scopes, expires_at=timezone.now() + timedelta(days=days),
                                            created_by=actor)
    except IntegrityError:
        raise Conflict(f"{user} already has an active token named {name!r}; revoke it or pick another name.",
                       code="token_exists") from None
    audit.record(actor=actor, action="token.create", obj=token,
                 after={"user": user.get_username(), "scopes": clean_scopes, "expires_at": token.expires_at.isoformat()})
    return token, secret


def tokens_visible_to(actor: AbstractBaseUser) -> models.QuerySet[ApiToken]:
    """Own tokens; with integrations.change_serviceaccount also every service account's."""
    tokens = ApiToken.objects.select_related("user")
    mine = models.Q(user=actor)
    if actor.has_perm("integrations.change_serviceaccount"):
        mine |= models.Q(user__service_account__isnull=False)
    return tokens.filter(mine)


def get_token(actor: AbstractBaseUser, token_id: int) -> ApiToken:
    token = tokens_visible_to(actor).filter(pk=token_id).first()
    if token is None:
        raise NotFound(f"No token {token_id}.", code="token_not_found")
    return token


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: AbstractBaseUser) -> ApiToken:
    """Revoke at once (the next request with it gets 401). Revoking twice changes nothing."""
    if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
        token.refresh_from_db()
        audit.record(actor=actor, action="token.revoke", obj=token, after={"user": token.user.get_username()})
    else:
        token.refresh_from_db()
    return token


def _touch(token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)


def narrow_permissions(user: Any, token_scopes: set[str]) -> Any:
    """Make ``user.has_perm`` answer yes only where the user has the permission AND a scope of
    the token covers it. Services check permissions on the actor they are given (approving
    checks ``releases.approve_release``), so narrowing the user object narrows them too.
    Bound on this request's instance only: the user's other sessions are unaffected."""
    full_has_perm = user.has_perm

    def has_perm(self: Any, perm: str, obj: Any = None) -> bool:
        return scope_rules.perm_allowed(perm, token_scopes) and full_has_perm(perm, obj)

    user.has_perm = types.MethodType(has_perm, user)
    user.token_scopes = token_scopes
    return user


def token_with_user(token_hash: str) -> ApiToken | None:
    """The token with this hash and its user, in one statement written in SQL (``registry.sql``):
    every API call authenticates, and the ORM took longer building this join than running it."""
    user_model = get_user_model()
    found = sql.fetch(f"SELECT {sql.columns(ApiToken)}, {sql.columns(user_model)} FROM {sql.table(ApiToken)} "
                      f"INNER JOIN {sql.table(user_model)} ON {sql.column(ApiToken, 'user')} = "
                      f"{sql.column(user_model, 'id')} WHERE {sql.column(ApiToken, 'token_hash')} = %s", [token_hash])
    if not found:
        return None
    split = len(ApiToken._meta.concrete_fields)
    token = sql.instance(ApiToken, found[0][:split])
    token.user = sql.instance(user_model, found[0][split:])
    return token


class ScopedTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer myd_…`` (or ``Token myd_…``). Other tokens fall through to DRF's
    legacy TokenAuthentication, which keeps every right of its user."""

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode(errors="replace").split()
        if len(header) != 2 or header[0].lower() not in ("bearer", "token") or not header[1].startswith(PREFIX):
            return None
        token = token_with_user(hash_secret(header[1]))
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed(f"Token {token.name!r} was revoked.")
        if token.is_expired:
            raise exceptions.AuthenticationFailed(f"Token {token.name!r} expired at {token.expires_at:%Y-%m-%d %H:%M} UTC.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.")
        match = getattr(request, "resolver_match", None)  # the HttpRequest's, through DRF's Request
        needed = scope_rules.route_scope(match.url_name if match else None, request.method)
        if needed is None or needed not in token.scopes:
            what = f"the {needed!r} scope" if needed else "a password login or a legacy token (no token scope covers it)"
            raise exceptions.PermissionDenied(f"Token {token.name!r} cannot do this: it needs {what}; "
                                              f"it has {', '.join(token.scopes)}.")
        _touch(token)
        return narrow_permissions(token.user, set(token.scopes)), token

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="modelyard"'
