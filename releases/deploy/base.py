"""The ``EndpointDriver`` interface, the values it takes and returns, and the registry of drivers by kind."""
from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

OnStep = Callable[[str, str], None]


class NeedsRestage(Exception):
    """``rollback``: the version to go back to is no longer on the endpoint; the workflow stages it
    again from the registry (``promote`` with the same number and identical bytes)."""


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint as a driver sees it: plain values, paths and hosts already checked against the
    operator's policy. ``route_file``/``lock_dir``: where a driver that needs them keeps its state."""

    name: str
    kind: str
    grpc_target: str = ""
    rest_url: str = ""
    repository_path: Path | None = None
    config_path: Path | None = None
    docker_host: str = ""
    grpc_port_base: int | None = None
    profile: dict[str, Any] = field(default_factory=dict)
    active_container_id: str = ""
    previous_container_id: str = ""
    route_file: Path | None = None
    lock_dir: Path | None = None
    deadline_s: float = 60.0
    rpc_timeout_s: float = 10.0
    docker_timeout_s: float = 60.0


@dataclass(frozen=True)
class Outcome:
    """What a driver changed. ``endpoint_changes``: fields of the endpoint row to update (the
    traffic switch of a docker endpoint: its active container and target)."""

    previous_version: int | None = None
    endpoint_changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    reachable: bool
    models: dict[str, Any] = field(default_factory=dict)  # {model: {labels, versions, ...}}
    error: str = ""


class EndpointDriver(ABC):
    """Puts versions on one endpoint of kind ``kind``. Every method holds the endpoint's lock
    for as long as it changes anything, and leaves traffic served on failure."""

    kind: ClassVar[str]
    needs_image: ClassVar[bool] = False  # runs the release's serving image rather than its SavedModel

    def __init__(self, spec: EndpointSpec) -> None:
        self.spec = spec

    @abstractmethod
    def promote(self, model: str, version: int, saved_model_dir: Path | None, samples: dict[str, Any],
                canary: bool, on_step: OnStep | None, *, tolerance: tuple[float, float],
                image_ref: str = "", release_id: int | None = None, weight: int = 100,
                accept_signature_change: bool = False) -> Outcome:
        """Serve ``version`` of ``model``, validated on ``samples`` (signature, then answers within
        ``tolerance``). ``canary``: to ``weight`` % of traffic (or the kind's own canary label),
        the rest stays on the current version. ``accept_signature_change``: a signature that breaks the
        current version's clients was approved (an override); it is reported instead of refused.
        Raises ``PromotionFailed`` (``step``, ``reason``)."""

    @abstractmethod
    def complete_canary(self, model: str) -> Outcome:
        """All traffic to the canary version."""

    @abstractmethod
    def rollback(self, model: str, to_version: int) -> Outcome:
        """All traffic back to ``to_version``; ``NeedsRestage`` when it is no longer there."""

    @abstractmethod
    def health(self) -> Health:
        """Whether the endpoint answers, and what it serves."""

    @abstractmethod
    def recover(self, model: str, version: int, release_id: int, previous_version: int | None) -> Outcome:
        """A promotion of ``version`` (release ``release_id``) stopped part-way with its worker
        (killed between steps, so ``promote`` never restored anything): serve what was served before
        (``previous_version``, the version live before it, if the switch already happened) and remove
        what that promotion left. Safe to call when nothing was changed."""


DRIVERS: dict[str, type[EndpointDriver]] = {}


def register(driver: type[EndpointDriver]) -> type[EndpointDriver]:
    DRIVERS[driver.kind] = driver
    return driver


def _discover() -> None:
    """Import every ``releases/deploy/*_driver.py``: each registers its kind."""
    package = Path(__file__).parent
    for module in pkgutil.iter_modules([str(package)]):
        if module.name.endswith("_driver"):
            importlib.import_module(f"releases.deploy.{module.name}")


def driver_class(kind: str) -> type[EndpointDriver]:
    if kind not in DRIVERS:
        _discover()
    try:
        return DRIVERS[kind]
    except KeyError:
        raise ValueError(f"No driver for endpoint kind {kind!r} (known: {sorted(DRIVERS)})") from None


def driver_for(spec: EndpointSpec) -> EndpointDriver:
    return driver_class(spec.kind)(spec)
