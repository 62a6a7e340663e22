"""Fields of the registry's API output that apps built on it fill in.

The version output has a ``metrics`` field (harness runs, one per eval dataset), but the runs are
recorded by the ``metrics`` app, which builds on the registry: the registry must not import it.
So the registry declares the field and its schema (``VersionOutput.get_metrics``), and the app
that owns the data provides the renderer, and the related rows it reads, in its
``AppConfig.ready`` (``metrics/apps.py``) — the way apps declare their blob columns in
``registry.blobrefs``. Without a provider the field is an empty list and nothing is prefetched.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # registry.models imports this module (for the prefetches)
    from registry.models import ModelVersion

VersionRenderer = Callable[["ModelVersion"], Any]

_VERSION_FIELDS: dict[str, VersionRenderer] = {}
_VERSION_PREFETCH: list[str] = []


def provide_version_field(name: str, render: VersionRenderer, *, prefetch: tuple[str, ...] = ()) -> None:
    """Let ``render(version)`` compute the version output's field ``name``; ``prefetch`` are the
    lookups ``ModelVersion.objects.with_related()`` adds so a list renders it in batches."""
    _VERSION_FIELDS[name] = render
    _VERSION_PREFETCH.extend(p for p in prefetch if p not in _VERSION_PREFETCH)


def version_field(name: str, version: ModelVersion, default: Any) -> Any:
    """The field ``name`` of ``version`` as its provider renders it, or ``default`` without one."""
    render = _VERSION_FIELDS.get(name)
    return default if render is None else render(version)


def version_prefetch() -> tuple[str, ...]:
    return tuple(_VERSION_PREFETCH)
