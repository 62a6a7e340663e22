from django.urls import path, re_path

from registry import api

# Paths CI scripts rely on (README "API overview"). Single resources accept an optional slash.
urlpatterns = [
    path("models/", api.ModelList.as_view(), name="model-list"),
    re_path(r"^models/(?P<name>[^/]+)/?$", api.ModelDetail.as_view(), name="model-detail"),
    path("models/<str:name>/versions/", api.VersionList.as_view(), name="version-list"),
    re_path(r"^models/(?P<name>[^/]+)/versions/(?P<version>[0-9]+)/?$", api.VersionDetail.as_view(),
            name="version-detail"),
    re_path(r"^models/(?P<name>[^/]+)/versions/(?P<version>[0-9]+)/artifact/?$", api.VersionArtifact.as_view(),
            name="version-artifact"),
    path("models/<str:name>/aliases/", api.AliasList.as_view(), name="alias-list"),
    re_path(r"^models/(?P<name>[^/]+)/aliases/(?P<alias>[^/]+)/?$", api.AliasDetail.as_view(), name="alias-detail"),
    path("models/<str:name>/datasets/", api.DatasetList.as_view(), name="dataset-list"),
    re_path(r"^models/(?P<name>[^/]+)/datasets/(?P<dataset_id>[0-9]+)/?$", api.DatasetDetail.as_view(),
            name="dataset-detail"),
    path("audit-events/", api.AuditEventList.as_view(), name="audit-list"),
]
