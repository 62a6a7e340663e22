"""The optimization app's errors: what a job request is refused for. The API maps them by their
status and code (``registry.errors.ModelyardError``)."""
from __future__ import annotations

from registry.errors import ModelyardError


class OptimizationError(ModelyardError):
    """Optimization jobs: a recipe, budget or dataset the job cannot run with."""
