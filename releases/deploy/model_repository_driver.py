"""The ``model_repository`` kind: a TF Serving process reading a model repository and its
``models.config``. The protocol is ``repository_engine``; this driver adapts it to the interface."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from releases.deploy import repository_engine as engine
from releases.deploy.base import EndpointDriver, Health, NeedsRestage, OnStep, Outcome, register
from releases.errors import EndpointError
from releases.tfserving import TFServingClient


@register
class ModelRepositoryDriver(EndpointDriver):
    kind = "model_repository"

    def client(self) -> TFServingClient:
        return TFServingClient(self.spec.grpc_target, rest_url=self.spec.rest_url or None,
                               timeout=self.spec.rpc_timeout_s)

    def repository(self) -> engine.RepositoryEndpoint:
        assert self.spec.repository_path is not None and self.spec.config_path is not None
        return engine.RepositoryEndpoint(base_dir=self.spec.repository_path, config_path=self.spec.config_path,
                                         client=self.client())

    def promote(self, model: str, version: int, saved_model_dir: Path | None, samples: dict[str, Any],
                canary: bool, on_step: OnStep | None, *, tolerance: tuple[float, float],
                image_ref: str = "", release_id: int | None = None, weight: int = 100,
                accept_signature_change: bool = False) -> Outcome:
        # TF Serving splits by label, not by weight: a canary here is the `canary` label only.
        if saved_model_dir is None:
            raise engine.PromotionFailed("prepare", ValueError("a model repository needs the SavedModel"),
                                         model_name=model, version=version)
        result = engine.promote(self.repository(), model_name=model, version=version, saved_model_src=saved_model_dir,
                                samples=samples, tolerance=tolerance, canary_only=canary, on_step=on_step,
                                deadline_s=self.spec.deadline_s, accept_signature_change=accept_signature_change)
        return Outcome(previous_version=result.previous_version)

    def complete_canary(self, model: str) -> Outcome:
        engine.complete_canary(self.repository(), model)
        return Outcome()

    def rollback(self, model: str, to_version: int) -> Outcome:
        try:
            engine.rollback(self.repository(), model_name=model, to_version=to_version)
        except engine.VersionNotLoaded as exc:
            raise NeedsRestage(str(exc)) from exc
        return Outcome()

    def recover(self, model: str, version: int, release_id: int, previous_version: int | None) -> Outcome:
        """Labels back on ``previous_version`` if they had moved to ``version``, then ``version``
        unloaded and its staged directory deleted (only if Modelyard's manifest says it staged it)."""
        repository = self.repository()
        entry = engine.model_entry(engine.read_config(repository.config_path), model)
        if entry is None:
            return Outcome()  # killed before the model was ever configured here
        if version in dict(entry.version_labels).values():
            if previous_version is None:
                raise engine.RetireRefused(f"{model} version {version} is labelled on {self.spec.name} and nothing "
                                           "served before it: remove it by hand")
            engine.rollback(repository, model_name=model, to_version=previous_version)
            entry = engine.model_entry(engine.read_config(repository.config_path), model)
        served = engine.policy_versions(entry)
        if served is not None:
            engine.retire(repository, model, served - {version}, delete_dirs=True)
        return Outcome()

    def health(self) -> Health:
        """Per model: which version each label serves, the versions' states, and the entries of the
        model's directory Modelyard did not write. ``error`` never quotes a file."""
        client = self.client()
        if not client.reachable():
            return Health(False, error=f"{self.spec.grpc_target} does not answer")
        try:
            return Health(True, models=self._models(client))
        except engine.ConfigUnreadable:
            return Health(True, error="config unreadable")
        except engine.ConfigError:
            return Health(True, error="config invalid")
        except EndpointError as exc:
            return Health(True, error=str(exc))
        except OSError as exc:
            return Health(True, error=f"repository unreadable ({type(exc).__name__})")

    def _models(self, client: TFServingClient) -> dict[str, Any]:
        target = self.repository()
        health: dict[str, Any] = {}
        for entry in engine.read_config(target.config_path).model_config_list.config:
            states = client.model_status(entry.name)
            try:
                unmanaged = list(engine.unmanaged_entries(target.model_dir(entry.name), entry.name))
            except (ValueError, engine.StagingError):
                unmanaged = [entry.name]  # the model's directory itself is not one Modelyard may use
            health[entry.name] = {
                "labels": dict(entry.version_labels),
                "versions": {str(v): state for v, (state, _err) in sorted(states.items())},
                "unmanaged": unmanaged,
            }
        return health
