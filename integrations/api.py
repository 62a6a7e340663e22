"""REST API: /api/v1/tokens/ and /api/v1/webhooks/ (+ deliveries). Views validate, call a service, serialize."""
from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations import tokens, webhooks
from integrations.models import ApiToken, WebhookDelivery, WebhookSubscription
from integrations.serializers import (
    DeliveryOutput, TokenCreatedOutput, TokenCreateInput, TokenOutput, WebhookCreatedOutput, WebhookInput,
    WebhookOutput, WebhookUpdateInput,
)


def _valid(serializer_class: type, data: object) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class TokenList(generics.ListAPIView):
    """Your API tokens (and service accounts' if you manage them). POST creates one; the secret
    is in that answer only. Scoped tokens cannot use this route: tokens come from a login."""

    serializer_class = TokenOutput
    permission_classes = [permissions.IsAuthenticated]
    queryset = ApiToken.objects.none()

    def get_queryset(self) -> QuerySet[ApiToken]:
        return tokens.tokens_visible_to(self.request.user)

    @extend_schema(request=TokenCreateInput, responses={201: TokenCreatedOutput})
    def post(self, request: Request) -> Response:
        data = _valid(TokenCreateInput, request.data)
        token, secret = tokens.token_create(actor=request.user, **data)
        return Response(TokenCreatedOutput(token, context={"secret": secret}).data, status=status.HTTP_201_CREATED)


class TokenDetail(APIView):
    """GET one token; DELETE revokes it (the row stays, for the record)."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses=TokenOutput)
    def get(self, request: Request, token_id: int) -> Response:
        return Response(TokenOutput(tokens.get_token(request.user, token_id)).data)

    @extend_schema(responses={200: TokenOutput})
    def delete(self, request: Request, token_id: int) -> Response:
        return _revoke(request, token_id)


class TokenRevoke(APIView):
    """POST revokes a token (the same as DELETE on the token, for clients that cannot send DELETE)."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(request=None, responses={200: TokenOutput})
    def post(self, request: Request, token_id: int) -> Response:
        return _revoke(request, token_id)


def _revoke(request: Request, token_id: int) -> Response:
    token = tokens.token_revoke(token=tokens.get_token(request.user, token_id), actor=request.user)
    return Response(TokenOutput(token).data)


class WebhookList(generics.ListAPIView):
    """Your webhook subscriptions. POST subscribes (needs integrations.add_webhooksubscription)."""

    serializer_class = WebhookOutput
    queryset = WebhookSubscription.objects.none()

    def get_queryset(self) -> QuerySet[WebhookSubscription]:
        return webhooks.subscriptions_visible_to(self.request.user)

    @extend_schema(request=WebhookInput, responses={201: WebhookCreatedOutput})
    def post(self, request: Request) -> Response:
        sub = webhooks.subscription_create(owner=request.user, **_valid(WebhookInput, request.data))
        return Response(WebhookCreatedOutput(sub).data, status=status.HTTP_201_CREATED)


class WebhookDetail(APIView):
    queryset = WebhookSubscription.objects.none()

    @extend_schema(responses=WebhookOutput)
    def get(self, request: Request, webhook_id: int) -> Response:
        return Response(WebhookOutput(webhooks.get_subscription(request.user, webhook_id)).data)

    @extend_schema(request=WebhookUpdateInput, responses=WebhookOutput)
    def patch(self, request: Request, webhook_id: int) -> Response:
        sub = webhooks.subscription_update(subscription=webhooks.get_subscription(request.user, webhook_id),
                                           actor=request.user, **_valid(WebhookUpdateInput, request.data))
        return Response(WebhookOutput(sub).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, webhook_id: int) -> Response:
        webhooks.subscription_delete(subscription=webhooks.get_subscription(request.user, webhook_id),
                                     actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeliveryList(generics.ListAPIView):
    """The delivery log of one subscription, newest first (filter ``?status=``)."""

    serializer_class = DeliveryOutput
    queryset = WebhookDelivery.objects.none()

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        sub = webhooks.get_subscription(self.request.user, self.kwargs["webhook_id"])
        return webhooks.deliveries_of(sub, self.request.query_params.get("status", ""))


class DeliveryRedeliver(APIView):
    queryset = WebhookSubscription.objects.none()
    permission_action = "change"

    @extend_schema(request=None, responses=DeliveryOutput)
    def post(self, request: Request, delivery_id: int) -> Response:
        delivery = webhooks.delivery_redeliver(delivery=webhooks.get_delivery(request.user, delivery_id),
                                               actor=request.user)
        return Response(DeliveryOutput(delivery).data, status=status.HTTP_202_ACCEPTED)
