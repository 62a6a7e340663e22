"""Fields of the registry's API output that apps built on it fill in.

The version output has a ``metrics`` field (harness runs, one per eval dataset), but the runs are
recorded by the ``metrics`` app, which builds on the registry: the registry must not import it.
So the registry declares the field and its schema (``VersionOutput.get_metrics``), and the app
that owns the data provides a loader in its ``AppConfig.ready`` (``metrics/apps.py``) — the way
apps declare their blob columns in ``registry.blobrefs``. A loader takes a page's version ids and
answers for all of them in one query (``VersionOutput.load_page``), so a page costs the same
whatever its size. Without a provider the field is ``default`` for every version.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

# ids of a page's versions -> {version id: the field's value}; ids it leaves out get the default.
VersionFieldLoader = Callable[[list[int]], dict[int, Any]]

_VERSION_FIELDS: dict[str, VersionFieldLoader] = {}


def provide_version_field(name: str, load: VersionFieldLoader) -> None:
    """Let ``load(ids)`` compute the version output's field ``name`` for a page of versions."""
    _VERSION_FIELDS[name] = load


def version_field_values(name: str, ids: list[int]) -> dict[int, Any]:
    """The field ``name`` for these versions as its provider loads them ({} without a provider)."""
    load = _VERSION_FIELDS.get(name)
    return {} if load is None or not ids else load(ids)
