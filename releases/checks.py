"""System checks for the operator's serving policy (MODELYARD_SERVING_ROOTS, MODELYARD_DOCKER_HOSTS)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register()
def serving_roots_configuration(app_configs: Any, **kwargs: Any) -> list[Any]:
    """Every serving root is absolute and stays clear of Modelyard's own directories: promotion
    writes and deletes inside the roots, so a root over the storage root would expose the blobs."""
    from releases.endpoints import EndpointRefused, check_not_owned

    problems: list[Any] = []
    if not settings.SERVING_ROOTS:
        problems.append(Error("MODELYARD_SERVING_ROOTS is empty: no model_repository endpoint can be registered.",
                              id="releases.E001"))
    for root in settings.SERVING_ROOTS:
        if not Path(root).is_absolute():
            problems.append(Error(f"MODELYARD_SERVING_ROOTS entry {str(root)!r} is not an absolute path.",
                                  id="releases.E002"))
            continue
        try:
            check_not_owned("MODELYARD_SERVING_ROOTS", Path(root).resolve())
        except EndpointRefused as exc:
            problems.append(Error(exc.message, id="releases.E003",
                                  hint="Choose a directory apart from MODELYARD_STORAGE_ROOT and the var dir, "
                                       "e.g. $MODELYARD_VAR_DIR/serving."))
    if not settings.DOCKER_HOSTS:
        problems.append(Error("MODELYARD_DOCKER_HOSTS is empty.", id="releases.E004"))
    return problems
