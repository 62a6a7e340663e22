"""Domain errors, the bottom layer of every app's errors.

``ModelyardError`` carries an HTTP status (``status_code``), a stable machine-readable ``code``, a
``message`` a person can act on and optional ``details``. The API's exception handler
(``registry.api_common.exception_handler``) is the one place that turns any of them into
``{"error": {"code": ..., "message": ...}}`` with that status, by these attributes alone; the console
pages and the admin show the same message.

Each app has its own base: ``RegistryError`` (below), ``optimization.errors.OptimizationError``,
``releases.errors.ReleaseError`` (with ``EndpointError`` and ``DockerEngineError`` for what
serving endpoints and the Docker engine do), ``integrations.errors.IntegrationError``. The kinds
every app answers with (``NotFound``, ``Conflict``, ``Forbidden``) are here. This module imports
nothing of the project and no Django, so every app, and the Django-free ``releases/deploy``, may
build on it.
"""
from __future__ import annotations

from typing import Any


class ModelyardError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details


class NotFound(ModelyardError):
    status_code = 404
    code = "not_found"


class Conflict(ModelyardError):
    status_code = 409
    code = "conflict"


class Forbidden(ModelyardError):
    """The actor may not do this (a rule beyond the view's model permission: four eyes, operators)."""

    status_code = 403
    code = "permission_denied"


class RegistryError(ModelyardError):
    """Models, versions, artifacts, datasets and aliases: what the registry refuses."""


class UnsafeArchive(RegistryError):
    """Path traversal, links, bombs: the archive is refused before anything is written."""

    code = "unsafe_archive"


class CorruptArtifact(RegistryError):
    code = "corrupt_artifact"


class InvalidModel(RegistryError):
    """The bytes are intact but are not a model we can register (no saved_model.pb, Lambda...)."""

    status_code = 422
    code = "invalid_model"


class InspectionFailed(RegistryError):
    """The inspector process crashed, or hit its memory or time limit, on this artifact."""

    status_code = 422
    code = "inspection_failed"


class InspectorUnavailable(RegistryError):
    """The inspector process could not start (a server problem, not the artifact's)."""

    status_code = 503
    code = "inspector_unavailable"


class DatasetMismatch(RegistryError):
    status_code = 422
    code = "dataset_mismatch"


class TooLarge(RegistryError):
    status_code = 413
    code = "too_large"


class IntegrityFailure(RegistryError):
    """Stored bytes no longer match their digest: the store is damaged, refuse to serve them."""

    status_code = 500
    code = "artifact_integrity_error"
