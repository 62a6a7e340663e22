from django.urls import path, re_path

from optimization import api

urlpatterns = [
    path("optimization-jobs/", api.JobList.as_view(), name="job-list"),
    re_path(r"^optimization-jobs/(?P<job_id>[0-9]+)/?$", api.JobDetail.as_view(), name="job-detail"),
    re_path(r"^optimization-jobs/(?P<job_id>[0-9]+)/cancel/?$", api.JobCancel.as_view(), name="job-cancel"),
    re_path(r"^models/(?P<name>[^/]+)/versions/(?P<version>[0-9]+)/variants/?$", api.VariantList.as_view(),
            name="version-variants"),
]
