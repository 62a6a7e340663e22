"""Input validators and output serializers for tokens and webhooks."""
from __future__ import annotations

from rest_framework import serializers

from integrations import scopes, webhooks
from integrations.models import ApiToken, WebhookDelivery, WebhookSubscription


class TokenCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=list(scopes.SCOPES)), allow_empty=False)
    expires_in_days = serializers.IntegerField(required=False, min_value=1)
    username = serializers.CharField(required=False, help_text="A service account's username (default: yourself).")


class TokenOutput(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")
    service_account = serializers.SerializerMethodField()
    expired = serializers.BooleanField(source="is_expired")

    class Meta:
        model = ApiToken
        fields = ["id", "name", "user", "service_account", "prefix", "scopes", "created_at", "expires_at", "expired",
                  "last_used_at", "revoked_at"]

    def get_service_account(self, token: ApiToken) -> bool:
        return hasattr(token.user, "service_account")


class TokenCreatedOutput(TokenOutput):
    token = serializers.SerializerMethodField(help_text="The secret. Shown in this answer only.")

    class Meta(TokenOutput.Meta):
        fields = [*TokenOutput.Meta.fields, "token"]

    def get_token(self, token: ApiToken) -> str:
        return self.context["secret"]


class WebhookInput(serializers.Serializer):
    url = serializers.URLField(max_length=1000)
    events = serializers.ListField(child=serializers.ChoiceField(choices=webhooks.EVENTS), allow_empty=False)
    model = serializers.CharField(required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")


class WebhookUpdateInput(serializers.Serializer):
    url = serializers.URLField(max_length=1000, required=False)
    events = serializers.ListField(child=serializers.ChoiceField(choices=webhooks.EVENTS), required=False,
                                   allow_empty=False)
    active = serializers.BooleanField(required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=200)


class WebhookOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", default=None)
    owner = serializers.CharField(source="owner.username")

    class Meta:
        model = WebhookSubscription
        fields = ["id", "url", "events", "model", "description", "active", "owner", "created_at"]


class WebhookCreatedOutput(WebhookOutput):
    secret = serializers.CharField(help_text="Signs every delivery. Shown in this answer only.")

    class Meta(WebhookOutput.Meta):
        fields = [*WebhookOutput.Meta.fields, "secret"]


class DeliveryOutput(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = ["id", "subscription", "event_id", "event", "subject", "status", "attempts", "response_code",
                  "last_error", "next_attempt_at", "delivered_at", "created_at", "payload"]
