"""Which rows point at a blob of the content-addressed store.

A blob may be deleted only when no committed row refers to it (a rolled-back write discards the
blob it created). The registry does not know every app that stores blobs, so each app declares its
digest columns here (in ``AppConfig.ready``) instead of the registry importing later apps.
"""
from __future__ import annotations

from django.db import models

_REFERENCES: list[tuple[type[models.Model], str]] = []


def register(model: type[models.Model], field: str) -> None:
    """Declare that ``model.field`` holds sha256 digests of blobs in the artifact store."""
    model._meta.get_field(field)  # fail at start-up on a typo, not when a blob is discarded
    if (model, field) not in _REFERENCES:
        _REFERENCES.append((model, field))


def referenced(sha256: str) -> bool:
    """True when any registered column holds ``sha256``."""
    return any(model._default_manager.filter(**{field: sha256}).exists() for model, field in _REFERENCES)


def registered() -> list[tuple[type[models.Model], str]]:
    return list(_REFERENCES)
