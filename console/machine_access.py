"""Console pages for machine access (Settings): API tokens and webhook subscriptions.

The same habits as ``console.views``: every write calls the service the integrations API calls
(``integrations.tokens``, ``integrations.webhooks``) after the API's permission check and input
validator, and a refusal shows the API's status code and message on the page it came from.

A secret (an API token, a webhook's signing secret) exists in clear only in the answer to the
POST that created it: the page is rendered from that POST (never a redirect that would have to
keep the secret somewhere) and sent with ``Cache-Control: no-store`` so the browser does not keep
it either. Every other page shows a token's prefix only.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from console import selectors
from console.views import attempt, page, require, valid, validated
from integrations import scopes, tokens, webhooks
from integrations.models import WebhookDelivery, WebhookSubscription
from integrations.serializers import TokenCreateInput, WebhookInput, WebhookUpdateInput

EXPIRY_DAYS = (7, 30, 90, 180, 365)  # offered; the service enforces 1..MODELYARD_API_TOKEN_MAX_DAYS


def secret_page(request: HttpRequest, template: str, context: dict[str, Any]) -> HttpResponse:
    """The one answer that shows a secret: 201 like the API's, and never cached."""
    response = render(request, template, context, status=201)
    response["Cache-Control"] = "no-store"
    return response


# --- API tokens ------------------------------------------------------------------------------

def expiry_choices() -> list[int]:
    days = {d for d in EXPIRY_DAYS if d <= settings.API_TOKEN_MAX_DAYS}
    return sorted(days | {settings.API_TOKEN_DEFAULT_DAYS, settings.API_TOKEN_MAX_DAYS})


def _tokens_context(request: HttpRequest, form: dict[str, Any] | None = None) -> dict[str, Any]:
    accounts = selectors.service_accounts(request.user)
    return {"page": selectors.tokens_page(request.user, page=request.GET.get("page")), "scopes": scopes.SCOPES,
            "expiry_days": expiry_choices(), "accounts": accounts, "show_user": bool(accounts),
            "form": form or {"expires_in_days": str(settings.API_TOKEN_DEFAULT_DAYS)}}


def _token_form(request: HttpRequest) -> dict[str, Any]:
    """What was typed, to fill the form again after a refusal (never a secret)."""
    return {"name": request.POST.get("name", ""), "scopes": request.POST.getlist("scopes"),
            "expires_in_days": request.POST.get("expires_in_days", ""), "username": request.POST.get("username", "")}


@login_required
@require_GET
def token_list(request: HttpRequest) -> HttpResponse:
    """Your tokens (and service accounts' if you manage them) and the form to create one."""
    return render(request, "console/tokens.html", _tokens_context(request))


@login_required
def token_create(request: HttpRequest) -> HttpResponse:
    """The API's ``POST /api/v1/tokens/``: any logged-in user, for themself; for a service account
    with ``integrations.change_serviceaccount`` (checked by the service). Its own URL, so that
    leaving the page that shows the secret is a real navigation, not a jump to an anchor in it."""
    if request.method != "POST":
        return redirect(reverse("console:tokens") + "#create")

    def act() -> tuple[Any, str]:
        data = valid(TokenCreateInput, request, {"scopes": request.POST.getlist("scopes")})
        return tokens.token_create(actor=request.user, **data)

    created, error = attempt(act)
    if error:
        return page(request, "console/tokens.html", _tokens_context(request, _token_form(request)), error)
    token, secret = created
    return secret_page(request, "console/token_created.html", {"token": token, "secret": secret})


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    """The API's ``DELETE /api/v1/tokens/{id}/``: only a token you may see (else 404)."""
    _, error = attempt(lambda: tokens.token_revoke(token=tokens.get_token(request.user, token_id),
                                                   actor=request.user))
    if error:
        return page(request, "console/tokens.html", _tokens_context(request), error)
    return redirect(reverse("console:tokens") + f"#token-{token_id}")


# --- webhooks --------------------------------------------------------------------------------

def _events(request: HttpRequest) -> list[str]:
    """The ticked events (the events fieldset also sends one empty value, see ``_changes``)."""
    return [e for e in request.POST.getlist("events") if e]


def _webhooks_context(request: HttpRequest, form: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"page": selectors.webhooks_page(request.user, page=request.GET.get("page")), "events": webhooks.EVENTS,
            "form": form or {}, "show_owner": request.user.is_superuser}


@login_required
@require_GET
def webhook_list(request: HttpRequest) -> HttpResponse:
    """Your subscriptions (every one for a superuser, as the API) and the form to subscribe."""
    return render(request, "console/webhooks.html", _webhooks_context(request))


@login_required
def webhook_create(request: HttpRequest) -> HttpResponse:
    """The API's ``POST /api/v1/webhooks/`` (``integrations.add_webhooksubscription``)."""
    if request.method != "POST":
        return redirect(reverse("console:webhooks") + "#create")

    def act() -> WebhookSubscription:
        require(request, "integrations.add_webhooksubscription")
        data = valid(WebhookInput, request, {"events": _events(request)})
        return webhooks.subscription_create(owner=request.user, **data)

    sub, error = attempt(act)
    if error:
        form = {k: request.POST.get(k, "") for k in ("url", "model", "description")}
        form["events"] = _events(request)
        return page(request, "console/webhooks.html", _webhooks_context(request, form), error)
    return secret_page(request, "console/webhook_created.html", {"sub": sub})


def _webhook_context(request: HttpRequest, sub: WebhookSubscription) -> dict[str, Any]:
    status = request.GET.get("status", "")
    return {"sub": sub, "events": webhooks.EVENTS, "status": status, "statuses": WebhookDelivery.Status.choices,
            "page": selectors.deliveries_page(sub, status=status, page=request.GET.get("page"))}


def _webhook_page(request: HttpRequest, webhook_id: int, error: tuple[int, str] | None = None) -> HttpResponse:
    sub, missing = attempt(lambda: webhooks.get_subscription(request.user, webhook_id))
    if missing:
        return page(request, "console/error.html", {}, error or missing)
    return page(request, "console/webhook.html", _webhook_context(request, sub), error)


@login_required
@require_GET
def webhook(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """One subscription and its delivery log (the API's ``GET …/deliveries/[?status=]``)."""
    return _webhook_page(request, webhook_id)


def _changes(request: HttpRequest, sub: WebhookSubscription) -> dict[str, Any]:
    """The fields this form sent that differ from the subscription, validated by the API's PATCH
    input. A form sends ``events`` with an empty first value, so ticking none is a change (the
    API's "may not be empty"), not a missing field; an unchanged URL is not re-resolved."""
    data: dict[str, Any] = {k: request.POST[k] for k in ("url", "description", "active") if k in request.POST}
    if "events" in request.POST:
        data["events"] = _events(request)
    clean = validated(WebhookUpdateInput, data)
    if "events" in clean:
        clean["events"] = sorted(set(clean["events"]))
    return {k: v for k, v in clean.items() if getattr(sub, k) != v}


@login_required
@require_POST
def webhook_edit(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """The API's ``PATCH /api/v1/webhooks/{id}/`` (``integrations.change_webhooksubscription``):
    URL, events, description, active (the Disable/Enable button sends ``active`` alone)."""
    def act() -> None:
        require(request, "integrations.change_webhooksubscription")
        sub = webhooks.get_subscription(request.user, webhook_id)
        if changes := _changes(request, sub):
            webhooks.subscription_update(subscription=sub, actor=request.user, **changes)

    _, error = attempt(act)
    if error:
        return _webhook_page(request, webhook_id, error)
    return redirect("console:webhook", webhook_id=webhook_id)


@login_required
@require_POST
def webhook_delete(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """The API's ``DELETE /api/v1/webhooks/{id}/`` (``integrations.delete_webhooksubscription``)."""
    def act() -> None:
        require(request, "integrations.delete_webhooksubscription")
        webhooks.subscription_delete(subscription=webhooks.get_subscription(request.user, webhook_id),
                                     actor=request.user)

    _, error = attempt(act)
    if error:
        return _webhook_page(request, webhook_id, error)
    return redirect("console:webhooks")


@login_required
@require_POST
def delivery_redeliver(request: HttpRequest, delivery_id: int) -> HttpResponse:
    """The API's ``POST /api/v1/webhook-deliveries/{id}/redeliver/``
    (``integrations.change_webhooksubscription``; only deliveries of subscriptions you may see)."""
    def act() -> WebhookDelivery:
        require(request, "integrations.change_webhooksubscription")
        return webhooks.delivery_redeliver(delivery=webhooks.get_delivery(request.user, delivery_id),
                                           actor=request.user)

    delivery, error = attempt(act)
    if error:
        sub_id = request.POST.get("webhook", "")
        if sub_id.isdigit():
            return _webhook_page(request, int(sub_id), error)
        return page(request, "console/error.html", {}, error)
    return redirect(reverse("console:webhook", args=[delivery.subscription_id]) + f"#delivery-{delivery_id}")
