from django.urls import path, re_path

from integrations import api

urlpatterns = [
    path("tokens/", api.TokenList.as_view(), name="token-list"),
    re_path(r"^tokens/(?P<token_id>[0-9]+)/?$", api.TokenDetail.as_view(), name="token-detail"),
    re_path(r"^tokens/(?P<token_id>[0-9]+)/revoke/?$", api.TokenRevoke.as_view(), name="token-revoke"),
    path("webhooks/", api.WebhookList.as_view(), name="webhook-list"),
    re_path(r"^webhooks/(?P<webhook_id>[0-9]+)/?$", api.WebhookDetail.as_view(), name="webhook-detail"),
    re_path(r"^webhooks/(?P<webhook_id>[0-9]+)/deliveries/?$", api.DeliveryList.as_view(),
            name="webhook-delivery-list"),
    re_path(r"^webhook-deliveries/(?P<delivery_id>[0-9]+)/redeliver/?$", api.DeliveryRedeliver.as_view(),
            name="webhook-delivery-redeliver"),
]
