"""The environments every installation starts with (created by migration 0002)."""
from __future__ import annotations

from typing import Any

DEFAULT_ENVIRONMENTS: list[dict[str, Any]] = [
    {"name": "staging", "description": "Pre-production; the requester may approve their own release.",
     "four_eyes": False, "auto_approve": False, "max_accuracy_drop": 0.02, "required_datasets": ["eval"],
     "batching": {"max_batch_size": 32, "batch_timeout_micros": 2000, "max_enqueued_batches": 100,
                  "num_batch_threads": 4, "allowed_batch_sizes": [8, 16, 32]}},
    {"name": "production", "description": "Live traffic; four-eyes approval.", "four_eyes": True,
     "auto_approve": False, "max_accuracy_drop": 0.01, "required_datasets": ["eval"],
     "batching": {"max_batch_size": 64, "batch_timeout_micros": 1000, "max_enqueued_batches": 200,
                  "num_batch_threads": 8, "allowed_batch_sizes": [8, 16, 32, 64]},
     "gpu_memory_fraction": 0.9},
]


def ensure_default_environments(environment_model: Any = None) -> None:
    """Create the default environments that are missing (never changes existing ones)."""
    if environment_model is None:
        from releases.models import Environment as environment_model
    for values in DEFAULT_ENVIRONMENTS:
        environment_model.objects.get_or_create(name=values["name"], defaults=values)
