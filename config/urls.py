from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.parsers import FormParser, MultiPartParser

from config import prometheus
from registry import pages
from registry.parsers import JSONParser
from registry.schema import SchemaView

# Under /api/ these answer in the API's error shape; elsewhere with templates/<status>.html.
handler400 = "registry.errorpages.bad_request"
handler403 = "registry.errorpages.permission_denied"
handler404 = "registry.errorpages.page_not_found"
handler500 = "registry.errorpages.server_error"
# DRF's token view names its own parsers; give it the depth-checking JSON parser too.
obtain_auth_token = ObtainAuthToken.as_view(parser_classes=[FormParser, MultiPartParser, JSONParser])

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/auth/token/", obtain_auth_token, name="api-token"),
    path("api/v1/", include("registry.urls")),
    path("api/v1/", include("optimization.urls")),
    path("api/v1/", include("releases.urls")),
    path("api/v1/", include("integrations.urls")),
    path("api/schema/", SchemaView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("healthz", pages.healthz, name="healthz"),
    path("metrics", prometheus.metrics_view, name="metrics"),
    path("", include("console.urls")),
]
