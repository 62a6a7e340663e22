"""Domain errors. Each carries an HTTP status and a stable machine-readable code; the API's
exception handler turns any of them into ``{"error": {"code": ..., "message": ...}}``."""
from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details


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


class NotFound(RegistryError):
    status_code = 404
    code = "not_found"


class Conflict(RegistryError):
    status_code = 409
    code = "conflict"


class IntegrityFailure(RegistryError):
    """Stored bytes no longer match their digest: the store is damaged, refuse to serve them."""

    status_code = 500
    code = "artifact_integrity_error"
