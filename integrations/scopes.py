"""What a scoped API token may do: every API route and every Django permission maps to a scope.

Two checks, both needed: ``route_scope`` gates each request by its URL name and method (a
release `promote` and `submit` need the same Django permission, ``change_release``, but not the
same scope), and ``perm_scope`` intersects ``user.has_perm`` with the token's scopes, so that a
service's own permission check (e.g. approving needs ``releases.approve_release``) obeys the
token too. A route or permission missing from these tables is refused to a scoped token (fail closed).
"""
from __future__ import annotations

SCOPES: dict[str, str] = {
    "registry:read": "Read models, versions, artifacts, aliases, datasets, audit events, optimization jobs.",
    "registry:write": "Create and change models, upload versions and datasets, move aliases.",
    "optimize": "Start and cancel optimization jobs.",
    "releases:read": "Read releases, environments and endpoints.",
    "releases:request": "Request, submit and cancel releases.",
    "releases:approve": "Approve or reject releases (with the user's approve permission; four-eyes still holds).",
    "releases:promote": "Build images, promote, complete canaries, roll back; register endpoints.",
    "webhooks": "Manage webhook subscriptions and redeliver.",
}

SAFE = ("GET", "HEAD", "OPTIONS")
READ_RELEASES = {"release-list", "release-detail", "environment-list", "endpoint-list", "endpoint-detail"}

# (url name, method) -> scope for writes. Reads: releases:read for READ_RELEASES, else registry:read.
WRITE_SCOPES: dict[tuple[str, str], str] = {
    ("model-list", "POST"): "registry:write",
    ("model-detail", "PATCH"): "registry:write",
    ("version-list", "POST"): "registry:write",
    ("version-detail", "PATCH"): "registry:write",
    ("alias-detail", "PUT"): "registry:write",
    ("alias-detail", "DELETE"): "registry:write",
    ("dataset-list", "POST"): "registry:write",
    ("job-list", "POST"): "optimize",
    ("job-cancel", "POST"): "optimize",
    ("release-list", "POST"): "releases:request",
    ("release-submit", "POST"): "releases:request",
    ("release-cancel", "POST"): "releases:request",
    ("release-approve", "POST"): "releases:approve",
    ("release-reject", "POST"): "releases:approve",
    ("release-build", "POST"): "releases:promote",
    ("release-promote", "POST"): "releases:promote",
    ("release-complete", "POST"): "releases:promote",
    ("release-rollback", "POST"): "releases:promote",
    ("endpoint-list", "POST"): "releases:promote",
    ("webhook-list", "POST"): "webhooks",
    ("webhook-detail", "DELETE"): "webhooks",
    ("webhook-detail", "PATCH"): "webhooks",
    ("webhook-delivery-redeliver", "POST"): "webhooks",
}
# Routes a scoped token may never use: a token cannot mint or revoke tokens (no escalation).
TOKEN_ROUTES = {"token-list", "token-detail", "token-revoke"}

# Django permission (app_label, action prefix) -> scope, for user.has_perm under a token.
PERM_SCOPES: dict[str, str] = {
    "releases.approve_release": "releases:approve",
    "releases.add_release": "releases:request",
    "releases.add_endpoint": "releases:promote",
}
APP_WRITE_SCOPES: dict[str, tuple[str, ...]] = {
    "registry": ("registry:write",),
    "metrics": ("optimize",),  # runs are written by optimization jobs
    "optimization": ("optimize",),
    # change_release covers submit/cancel (request) and build/promote/rollback (promote); the
    # route table above decides which of the two a request needs.
    "releases": ("releases:request", "releases:promote"),
    "integrations": ("webhooks",),
}
APP_READ_SCOPES = {"registry": "registry:read", "metrics": "registry:read", "optimization": "registry:read",
                   "releases": "releases:read", "integrations": "webhooks"}


def route_scope(url_name: str | None, method: str) -> str | None:
    """The scope a request needs, or None when no scoped token may make it."""
    if url_name in TOKEN_ROUTES or url_name is None:
        return None
    if method in SAFE:
        if url_name.startswith("webhook"):
            return "webhooks"
        return "releases:read" if url_name in READ_RELEASES else "registry:read"
    return WRITE_SCOPES.get((url_name, method))


def perm_allowed(perm: str, scopes: set[str]) -> bool:
    """Whether a Django permission ``app.codename`` falls inside the token's scopes."""
    if perm in PERM_SCOPES:
        return PERM_SCOPES[perm] in scopes
    app, _, codename = perm.partition(".")
    if codename.startswith("view_"):
        return APP_READ_SCOPES.get(app) in scopes
    return any(scope in scopes for scope in APP_WRITE_SCOPES.get(app, ()))


def validate(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"Unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}.")
    return sorted(set(scopes))
