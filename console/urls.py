from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from console import machine_access, views

app_name = "console"

urlpatterns = [
    path("", views.models, name="models"),
    path("login/", auth_views.LoginView.as_view(template_name="console/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("new-model/", views.model_create, name="model-create"),
    path("models/<str:name>/", views.model, name="model"),
    path("models/<str:name>/datasets/new/", views.dataset_upload, name="dataset-upload"),
    path("models/<str:name>/upload/", views.upload, name="upload"),
    path("models/<str:name>/optimize/", views.optimize, name="optimize"),
    path("models/<str:name>/compare/", views.compare, name="compare"),
    path("models/<str:name>/alias/", views.alias_move, name="alias"),
    path("models/<str:name>/release/", views.release_request, name="release-request"),
    path("jobs/<int:job_id>/", views.job, name="job"),
    path("jobs/<int:job_id>/progress/", views.job_progress, name="job-progress"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("releases/", views.inbox, name="releases"),
    path("releases/awaiting-count/", views.inbox_count, name="inbox-count"),
    path("releases/<int:release_id>/", views.release, name="release"),
    path("releases/<int:release_id>/live/", views.release_live, name="release-live"),
    path("releases/<int:release_id>/<str:action>/", views.release_action, name="release-action"),
    path("endpoints/", views.endpoints, name="endpoints"),
    path("audit/", views.audit, name="audit"),
    path("settings/", RedirectView.as_view(pattern_name="console:tokens"), name="settings"),
    path("settings/tokens/", machine_access.token_list, name="tokens"),
    path("settings/tokens/new/", machine_access.token_create, name="token-create"),
    path("settings/tokens/<int:token_id>/revoke/", machine_access.token_revoke, name="token-revoke"),
    path("settings/webhooks/", machine_access.webhook_list, name="webhooks"),
    path("settings/webhooks/new/", machine_access.webhook_create, name="webhook-create"),
    path("settings/webhooks/<int:webhook_id>/", machine_access.webhook, name="webhook"),
    path("settings/webhooks/<int:webhook_id>/edit/", machine_access.webhook_edit, name="webhook-edit"),
    path("settings/webhooks/<int:webhook_id>/delete/", machine_access.webhook_delete, name="webhook-delete"),
    path("settings/webhook-deliveries/<int:delivery_id>/redeliver/", machine_access.delivery_redeliver,
         name="delivery-redeliver"),
]
