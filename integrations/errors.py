"""The integrations app's errors: tokens and webhooks a request asks for that cannot be made. The
API maps them by their status and code (``registry.errors.ModelyardError``)."""
from __future__ import annotations

from registry.errors import ModelyardError


class IntegrationError(ModelyardError):
    """API tokens and webhook subscriptions: scopes, expiry, events or target URLs refused."""
