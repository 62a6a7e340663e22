from django.urls import path, re_path

from releases import api

ID = r"^releases/(?P<release_id>[0-9]+)"
urlpatterns = [
    path("releases/", api.ReleaseList.as_view(), name="release-list"),
    re_path(ID + r"/?$", api.ReleaseDetail.as_view(), name="release-detail"),
    re_path(ID + r"/submit/?$", api.ReleaseSubmit.as_view(), name="release-submit"),
    re_path(ID + r"/approve/?$", api.ReleaseApprove.as_view(), name="release-approve"),
    re_path(ID + r"/reject/?$", api.ReleaseReject.as_view(), name="release-reject"),
    re_path(ID + r"/cancel/?$", api.ReleaseCancel.as_view(), name="release-cancel"),
    re_path(ID + r"/build/?$", api.ReleaseBuild.as_view(), name="release-build"),
    re_path(ID + r"/promote/?$", api.ReleasePromote.as_view(), name="release-promote"),
    re_path(ID + r"/complete/?$", api.ReleaseComplete.as_view(), name="release-complete"),
    re_path(ID + r"/rollback/?$", api.ReleaseRollback.as_view(), name="release-rollback"),
    path("environments/", api.EnvironmentList.as_view(), name="environment-list"),
    path("endpoints/", api.EndpointList.as_view(), name="endpoint-list"),
    re_path(r"^endpoints/(?P<name>[^/]+)/?$", api.EndpointDetail.as_view(), name="endpoint-detail"),
]
