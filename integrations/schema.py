"""OpenAPI: describe the scoped-token authentication (a bearer token) to drf-spectacular."""
from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ScopedTokenScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.tokens.ScopedTokenAuthentication"
    name = "scopedToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "myd_…",
                "description": "A scoped, expiring API token (POST /api/v1/tokens/); also accepted as `Token myd_…`."}
