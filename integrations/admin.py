"""Admin: tokens (read-only, revoke action), service accounts, webhooks and their delivery log."""
from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from integrations import tokens, webhooks
from integrations.models import ApiToken, ServiceAccount, WebhookDelivery, WebhookSubscription


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnly):
    """Tokens are created through the API or the console (the secret is shown once there); revoke here."""

    list_display = ["name", "user", "prefix", "scope_list", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    exclude = ["token_hash"]
    actions = ["revoke"]

    @admin.display(description="scopes")
    def scope_list(self, token: ApiToken) -> str:
        return ", ".join(token.scopes)

    @admin.action(description="Revoke selected tokens", permissions=["delete"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            tokens.token_revoke(token=token, actor=request.user)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_delete_permission(request)  # rows stay; the action revokes

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


@admin.register(ServiceAccount)
class ServiceAccountAdmin(admin.ModelAdmin):
    list_display = ["user", "description", "created_at"]
    autocomplete_fields = ["user"]
    readonly_fields = ["created_by", "created_at"]

    def save_model(self, request: HttpRequest, obj: ServiceAccount, form: Any, change: bool) -> None:
        obj.created_by = obj.created_by or request.user
        super().save_model(request, obj, form, change)


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(ReadOnly):
    """Subscriptions are made through the API (the secret is shown once there)."""

    list_display = ["pk", "url", "owner", "model", "active", "created_at"]
    list_filter = ["active"]
    exclude = ["secret"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnly):
    list_display = ["pk", "event", "subscription", "status", "attempts", "response_code", "next_attempt_at",
                    "delivered_at"]
    list_filter = ["status", "event"]
    actions = ["redeliver"]

    @admin.action(description="Redeliver selected deliveries")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        for delivery in queryset:
            webhooks.delivery_redeliver(delivery=delivery, actor=request.user)
        self.message_user(request, f"Queued {queryset.count()} delivery(ies) again.", messages.SUCCESS)
