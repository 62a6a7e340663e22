"""Webhooks: subscribe, emit from audit events, sign, deliver with backoff, redeliver.

Events are emitted from ONE place: every state change already writes an ``AuditEvent`` in its
own transaction (registry/audit.py), so a receiver on that row's creation maps the audit action
to a webhook event (``AUDIT_EVENTS``) and writes the delivery rows in the same transaction: a
change that rolls back sends nothing. Deliveries are enqueued on commit and run on the task worker.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.utils import timezone

from integrations.errors import IntegrationError
from integrations.models import WebhookDelivery, WebhookSubscription
from registry import audit, sql
from registry.errors import NotFound
from registry.models import AuditEvent, RegisteredModel

log = logging.getLogger(__name__)
D = WebhookDelivery.Status

# audit action -> webhook event. Each action is written in the transaction of its change.
AUDIT_EVENTS: dict[str, str] = {
    "version.create": "model_version.created",
    "optimization_job.succeed": "optimization_job.succeeded",
    "optimization_job.fail": "optimization_job.failed",
    "release.submit": "release.pending_approval",
    "release.approve": "release.approved",
    "release.reject": "release.rejected",
    "release.live": "release.live",
    "release.complete": "release.live",
    "release.canary": "release.canary",
    "release.fail": "release.failed",
    "release.rollback_requested": "release.rolling_back",  # a re-stage is running on the deploy worker
    "release.rollback": "release.rolled_back",
    "endpoint.unhealthy": "endpoint.unhealthy",
}
EVENTS = sorted(set(AUDIT_EVENTS.values()))
SIGNATURE_HEADER = "X-Modelyard-Signature"


class InvalidTarget(IntegrationError):
    code = "invalid_webhook_url"


# --- target URLs -------------------------------------------------------------------------------

def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.WEBHOOK_ALLOWED_NETWORKS]


def check_url(url: str) -> None:
    """http(s) only; every address the host resolves to must be public, or inside an operator
    allow-list (MODELYARD_WEBHOOK_ALLOWED_NETWORKS) — so a subscriber cannot make the server
    call its own loopback, the cloud metadata address or the private network."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidTarget(f"{url!r} is not an http(s) URL with a host.")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidTarget(f"The host {parts.hostname!r} does not resolve ({exc}).") from None
    allowed = _allowed_networks()
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global and not any(address in net for net in allowed):
            raise InvalidTarget(f"{parts.hostname} resolves to {address}, a private, loopback or reserved address. "
                                "An operator can allow such networks with MODELYARD_WEBHOOK_ALLOWED_NETWORKS.")


# --- subscriptions ------------------------------------------------------------------------------

def _check_events(events: list[str]) -> list[str]:
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise IntegrationError(f"Unknown or missing events {unknown}; choose from {', '.join(EVENTS)}.",
                               code="validation_error")
    return sorted(set(events))


@transaction.atomic
def subscription_create(*, owner: AbstractBaseUser, url: str, events: list[str], model: str | None = None,
                        description: str = "") -> WebhookSubscription:
    """The returned object carries ``secret``; the API shows it in this answer only."""
    check_url(url)
    target_model = None
    if model:
        target_model = RegisteredModel.objects.filter(name=model).first()
        if target_model is None:
            raise NotFound(f"No model {model!r}.", code="model_not_found")
    sub = WebhookSubscription.objects.create(owner=owner, url=url, events=_check_events(events), model=target_model,
                                             secret="whsec_" + secrets.token_urlsafe(32), description=description)
    audit.record(actor=owner, action="webhook.create", obj=sub, model=target_model,
                 after={"url": url, "events": sub.events})
    return sub


@transaction.atomic
def subscription_update(*, subscription: WebhookSubscription, actor: AbstractBaseUser, **changes: Any) -> WebhookSubscription:
    if "events" in changes:
        changes["events"] = _check_events(changes["events"])
    if "url" in changes:
        check_url(changes["url"])
    before = {k: getattr(subscription, k) for k in changes}
    for field, value in changes.items():
        setattr(subscription, field, value)
    subscription.save()
    audit.record(actor=actor, action="webhook.update", obj=subscription, model=subscription.model,
                 before=before, after=changes)
    return subscription


@transaction.atomic
def subscription_delete(*, subscription: WebhookSubscription, actor: AbstractBaseUser) -> None:
    audit.record(actor=actor, action="webhook.delete", obj=subscription, model=subscription.model,
                 before={"url": subscription.url})
    subscription.delete()


def subscriptions_visible_to(user: AbstractBaseUser) -> models.QuerySet[WebhookSubscription]:
    subs = WebhookSubscription.objects.select_related("model", "owner")
    return subs if user.is_superuser else subs.filter(owner=user)


def deliveries_of(subscription: WebhookSubscription, status: str = "") -> models.QuerySet[WebhookDelivery]:
    """The delivery log of one subscription, newest first; ``status`` filters (empty: all)."""
    deliveries = subscription.deliveries.order_by("-pk")
    return deliveries.filter(status=status) if status else deliveries


def get_subscription(user: AbstractBaseUser, pk: int) -> WebhookSubscription:
    sub = subscriptions_visible_to(user).filter(pk=pk).first()
    if sub is None:
        raise NotFound(f"No webhook {pk}.", code="webhook_not_found")
    return sub


# --- payloads and emission ---------------------------------------------------------------------

def _object_summary(event: AuditEvent) -> dict[str, Any]:
    """What a subscriber needs about the object, read inside the transaction of the change."""
    if event.object_type == "releases.release":
        from releases.models import Release

        r = Release.objects.select_related("version__model", "environment", "requester").get(pk=event.object_id)
        return {"id": r.pk, "state": r.state, "model": r.version.model.name, "version": r.version.number,
                "environment": r.environment.name, "requester": r.requester.get_username(),
                "gates_passed": r.gates_passed, "gates": r.gates, "failure_step": r.failure_step,
                "failure_reason": r.failure_reason, "url": f"/api/v1/releases/{r.pk}/"}
    if event.object_type == "optimization.optimizationjob":
        from optimization.models import OptimizationJob

        j = OptimizationJob.objects.select_related("source__model", "variant").get(pk=event.object_id)
        return {"id": j.pk, "status": j.status, "model": j.source.model.name, "version": j.source.number,
                "recipe": j.recipe, "variant": j.variant.number if j.variant else None, "error": j.error,
                "url": f"/api/v1/optimization-jobs/{j.pk}/"}
    if event.object_type == "registry.modelversion" and event.version is not None:
        v = event.version
        return {"model": v.model.name, "version": v.number, "format": v.format, "sha256": v.artifact_sha256,
                "size": v.artifact_size, "parent": v.parent.number if v.parent else None, "source": v.source,
                "url": f"/api/v1/models/{v.model.name}/versions/{v.number}/"}
    if event.object_type == "releases.endpoint":
        from releases.models import Endpoint

        e = Endpoint.objects.select_related("environment").get(pk=event.object_id)
        return {"id": e.pk, "name": e.name, "environment": e.environment.name, "reachable": e.reachable,
                "error": (event.after or {}).get("error", ""), "url": f"/api/v1/endpoints/{e.name}/"}
    return {"id": event.object_id, "name": event.object_repr}


def payload_for(event: AuditEvent, name: str) -> dict[str, Any]:
    return {
        "event": name,
        "occurred_at": event.created_at.isoformat() if getattr(event, "created_at", None) else timezone.now().isoformat(),
        "audit_event_id": event.pk,
        "actor": event.actor.get_username() if event.actor else None,
        "comment": event.comment,
        "object": {"type": event.object_type, **_object_summary(event)},
    }


@receiver(post_save, sender=AuditEvent, dispatch_uid="integrations.webhooks.emit")
def _on_audit_event(sender: type, instance: AuditEvent, created: bool, **kwargs: Any) -> None:
    if created and instance.action in AUDIT_EVENTS:
        emit(instance)


def emit(event: AuditEvent) -> list[WebhookDelivery]:
    """Queue one delivery per matching subscription, in the audit row's transaction."""
    name = AUDIT_EVENTS[event.action]
    # Runs with every audited write: the active subscriptions in one SQL statement (registry.sql).
    subs = [s for s in sql.instances_where(WebhookSubscription, "active", True)
            if name in s.events and (s.model_id is None or s.model_id == event.model_id)]
    if not subs:
        return []
    payload = payload_for(event, name)
    subject = f"{event.object_type}:{event.object_id}"
    deliveries = [WebhookDelivery.objects.create(subscription=s, event=name, subject=subject,
                                                 payload={**payload, "subscription_id": s.pk}) for s in subs]
    for d in deliveries:
        d.payload["id"] = str(d.event_id)
        WebhookDelivery.objects.filter(pk=d.pk).update(payload=d.payload)
    transaction.on_commit(lambda: [_enqueue(d.pk) for d in deliveries])
    return deliveries


# --- signing and delivery ------------------------------------------------------------------------

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>." + body)>`` (see integrations/README.md)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _can_defer() -> bool:
    from integrations.tasks import deliver_webhook

    return deliver_webhook.get_backend().supports_defer


def _enqueue(delivery_id: int, delay: float = 0) -> None:
    from integrations.tasks import deliver_webhook

    task = deliver_webhook
    if delay > 0:
        task = task.using(run_after=timezone.now() + timedelta(seconds=delay))
    task.enqueue(delivery_id)


def _blocked_by_earlier(d: WebhookDelivery) -> bool:
    """Events about one object reach a subscriber in order: wait for earlier undelivered ones."""
    return WebhookDelivery.objects.filter(subscription_id=d.subscription_id, subject=d.subject, pk__lt=d.pk,
                                          status__in=[D.PENDING, D.RETRYING]).exists()


def _post(d: WebhookDelivery) -> tuple[int | None, str]:
    body = json.dumps(d.payload, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "Modelyard-Webhooks/1",
               "X-Modelyard-Event": d.event, "X-Modelyard-Delivery": str(d.event_id),
               SIGNATURE_HEADER: sign(d.subscription.secret, int(time.time()), body)}
    try:
        check_url(d.subscription.url)  # again at send time: DNS may have changed since subscribing
        response = requests.post(d.subscription.url, data=body, headers=headers, allow_redirects=False,
                                 timeout=settings.WEBHOOK_TIMEOUT)
    except (requests.RequestException, InvalidTarget) as exc:
        return None, getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return response.status_code, ""
    note = " (redirects are not followed)" if 300 <= response.status_code < 400 else ""
    return response.status_code, f"HTTP {response.status_code}{note}: {response.text[:300]}"


def deliver(delivery_id: int) -> str:
    """One attempt. Safe to run twice: the attempt is claimed with a conditional update."""
    d = WebhookDelivery.objects.select_related("subscription").filter(pk=delivery_id).first()
    if d is None or d.status not in (D.PENDING, D.RETRYING) or _blocked_by_earlier(d):
        return "skipped"
    if not WebhookDelivery.objects.filter(pk=d.pk, attempts=d.attempts, status=d.status).update(
            attempts=d.attempts + 1):
        return "skipped"  # another worker took this attempt
    d.attempts += 1
    code, error = _post(d)
    now = timezone.now()
    if not error:
        WebhookDelivery.objects.filter(pk=d.pk).update(status=D.SUCCEEDED, response_code=code, last_error="",
                                                        delivered_at=now, next_attempt_at=None)
    elif d.attempts >= settings.WEBHOOK_MAX_ATTEMPTS or not _can_defer():
        # Failed for good (or no retry can be scheduled on this backend): later events for the
        # object go on; this one can be redelivered.
        WebhookDelivery.objects.filter(pk=d.pk).update(status=D.FAILED, response_code=code, last_error=error,
                                                        next_attempt_at=None)
    else:
        delay = settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (d.attempts - 1)
        WebhookDelivery.objects.filter(pk=d.pk).update(status=D.RETRYING, response_code=code, last_error=error,
                                                        next_attempt_at=now + timedelta(seconds=delay))
        _enqueue(d.pk, delay)
        return "retrying"
    _release_next(d)
    return "succeeded" if not error else "failed"


def _release_next(d: WebhookDelivery) -> None:
    """The next undelivered event about the same object for this subscriber may go now."""
    following = (WebhookDelivery.objects.filter(subscription_id=d.subscription_id, subject=d.subject, pk__gt=d.pk,
                                                status__in=[D.PENDING, D.RETRYING]).order_by("pk").first())
    if following is not None:
        _enqueue(following.pk)


@transaction.atomic
def delivery_redeliver(*, delivery: WebhookDelivery, actor: AbstractBaseUser) -> WebhookDelivery:
    """Send a delivery again (same event id, so receivers can deduplicate), whatever its status."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=D.PENDING, next_attempt_at=timezone.now())
    audit.record(actor=actor, action="webhook.redeliver", obj=delivery, after={"event": delivery.event})
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    delivery.refresh_from_db()
    return delivery


def get_delivery(user: AbstractBaseUser, pk: int) -> WebhookDelivery:
    d = (WebhookDelivery.objects.select_related("subscription")
         .filter(pk=pk, subscription__in=subscriptions_visible_to(user)).first())
    if d is None:
        raise NotFound(f"No webhook delivery {pk}.", code="delivery_not_found")
    return d
