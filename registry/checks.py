"""System checks for configuration mistakes that would otherwise surface at the first upload."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def storage_configuration(app_configs: Any, **kwargs: Any) -> list[Any]:
    problems: list[Any] = []
    root = Path(settings.STORAGE_ROOT)
    if Path(settings.FILE_UPLOAD_TEMP_DIR).resolve().parent != root:
        problems.append(Error(
            "FILE_UPLOAD_TEMP_DIR must be inside MODELYARD_STORAGE_ROOT so uploads move into place by rename.",
            id="registry.E001"))
    if settings.MAX_UNPACKED_BYTES < settings.MAX_ARTIFACT_BYTES:
        problems.append(Warning(
            "MODELYARD_MAX_UNPACKED_BYTES is smaller than MODELYARD_MAX_ARTIFACT_BYTES: large archives will be "
            "refused after upload.", id="registry.W001"))
    return problems
