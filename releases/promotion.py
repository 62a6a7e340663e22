"""Promotion of releases to serving endpoints, rollback, canary completion, endpoint health.

The workflow: which endpoints, which samples, state changes and audit events. What happens on an
endpoint is its driver's (``releases.deploy``, one per kind, Django-free): this module builds the
endpoint's ``EndpointSpec`` (after the operator's policy checks, ``endpoints.checked_fields``),
calls the driver and stores what it reports. Every step a driver reports is stored on the
Promotion and in the audit log.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from metrics.models import VersionMetrics
from registry import audit, services as registry
from registry.errors import Conflict, Forbidden, ModelyardError, NotFound
from registry.heartbeat import Heartbeat, close_orphan_task_results, worker_name
from registry.models import ModelVersion
from releases import deploy, endpoints, gates
from releases.deploy.repository_engine import PromotionFailed
from releases.errors import DockerEngineError, EndpointError, ReleaseError
from releases.models import Endpoint, Promotion, Release
from releases.services import InvalidTransition, transition, release_fail
from releases.tfserving import TFServingClient

log = logging.getLogger(__name__)
DEFAULT_CANARY_WEIGHT = 10
ReleaseState = Release.State
PromotionState = Promotion.State


# --- which endpoints, which samples ----------------------------------------------------------

def get_endpoint(name: str) -> Endpoint:
    try:
        return Endpoint.objects.select_related("environment").get(name=name)
    except Endpoint.DoesNotExist:
        raise NotFound(f"No endpoint named {name!r}.", code="endpoint_not_found") from None


def target_endpoints(release: Release, endpoint: Endpoint | None) -> list[Endpoint]:
    if endpoint is not None:
        if endpoint.environment_id != release.environment_id:
            raise ReleaseError(f"Endpoint {endpoint.name!r} belongs to {endpoint.environment.name}, not "
                               f"{release.environment.name}.", code="wrong_environment")
        return [endpoint]
    endpoints = list(Endpoint.objects.filter(environment=release.environment))
    if not endpoints:
        raise Conflict(f"Environment {release.environment.name!r} has no endpoints; add one at /api/v1/endpoints/.",
                       code="no_endpoints")
    return endpoints


def tolerance_for(version: ModelVersion) -> tuple[float, float]:
    """How close the endpoint's answers must be to the registry's: tight for float models,
    looser for quantized TFLite (the serving runtime may round differently)."""
    if version.format == ModelVersion.Format.TFLITE:
        return (0.05, 0.02)
    return (1e-3, 1e-4)


def samples_for(version: ModelVersion, model_path: Path) -> dict[str, Any]:
    """The recorded sample inputs/outputs of this version, or, for a version never measured,
    fresh ones from the latest eval dataset (computed with the same predictor the harness uses)."""
    recorded = (VersionMetrics.objects.filter(version=version).exclude(samples={}).order_by("-created_at").first())
    if recorded and recorded.samples.get("inputs"):
        return recorded.samples
    from registry.models import Dataset

    dataset = Dataset.objects.filter(model=version.model, role="eval").order_by("-created_at").first()
    if dataset is None:
        raise Conflict(f"v{version.number} has no recorded samples and model {version.model.name!r} has no eval "
                       "dataset: infra-validation has nothing to compare. Upload an eval dataset.",
                       code="no_samples")
    from metrics import harness
    from metrics.predictors import load_predictor

    return harness.sample_io(load_predictor(model_path, version.format), registry.dataset_arrays(dataset)["x"])


def route_path(endpoint_name: str) -> Path:
    """Where a routed endpoint's route file is (``releases.router`` follows it)."""
    return Path(settings.ROUTES_DIR) / f"{endpoint_name}.json"


def endpoint_spec(endpoint: Endpoint) -> deploy.EndpointSpec:
    """The driver's view of an endpoint, its kind's fields checked against the operator's policy
    now (the settings may have changed since it was registered, or the row predates them)."""
    checked = endpoints.checked_fields(endpoint)
    fields: dict[str, Any] = {
        "name": endpoint.name, "kind": endpoint.kind, "grpc_target": endpoint.grpc_target,
        "rest_url": endpoint.rest_url, "docker_host": endpoint.docker_host, "grpc_port_base": endpoint.grpc_port_base,
        "profile": {**endpoint.serving_profile(), **endpoints.validate_profile(endpoint.profile)},
        "active_container_id": endpoint.active_container_id, "previous_container_id": endpoint.previous_container_id,
        "route_file": route_path(endpoint.name), "lock_dir": Path(settings.VAR_DIR) / "locks",
        "deadline_s": settings.PROMOTION_DEADLINE, "rpc_timeout_s": settings.PROMOTION_RPC_TIMEOUT,
        "docker_timeout_s": settings.DOCKER_TIMEOUT}
    fields.update(checked)
    if not fields["docker_host"]:
        fields["docker_host"] = settings.DOCKER_HOST or ""
    return deploy.EndpointSpec(**fields)


def driver(endpoint: Endpoint) -> deploy.EndpointDriver:
    return deploy.driver_for(endpoint_spec(endpoint))


# --- register and change endpoints (operators) --------------------------------------------------

ENDPOINT_FIELDS = ("environment", "kind", "grpc_target", "rest_url", "repository_path", "config_path",
                   "docker_host", "grpc_port_base", "profile")


def require_operator(actor: AbstractBaseUser | None) -> None:
    """Endpoints decide where Modelyard writes and deletes files: only operators may set them.
    ``actor=None`` is a management command, run by whoever owns the installation."""
    if actor is not None and not actor.has_perm("releases.operate_endpoints"):
        raise Forbidden("Registering or changing an endpoint is an operator action: it needs the "
                        "releases.operate_endpoints permission.")


def validate_endpoint(endpoint: Endpoint) -> None:
    """Check every field of an unsaved endpoint against the model and the operator's policy;
    store the resolved paths (what promotion will use)."""
    from django.core.exceptions import ValidationError

    for field, value in endpoints.checked_fields(endpoint).items():
        setattr(endpoint, field, str(value) if isinstance(value, Path) else value)
    endpoint.profile = endpoints.validate_profile(endpoint.profile)
    try:
        endpoint.full_clean(exclude=["reachable"])  # unknown until the first health check
    except ValidationError as exc:
        raise ReleaseError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items()),
                           code="validation_error") from exc


@transaction.atomic
def endpoint_create(*, actor: AbstractBaseUser | None, name: str, environment: str, kind: str,
                    grpc_target: str = "", rest_url: str = "", repository_path: str = "", config_path: str = "",
                    docker_host: str = "", grpc_port_base: int | None = None,
                    profile: dict[str, Any] | None = None) -> Endpoint:
    """Register an endpoint (operators only; every path, host and profile key checked)."""
    from releases.services import get_environment

    require_operator(actor)
    if Endpoint.objects.filter(name=name).exists():
        raise Conflict(f"An endpoint named {name!r} already exists.", code="endpoint_exists")
    endpoint = Endpoint(name=name, environment=get_environment(environment), kind=kind, grpc_target=grpc_target,
                        rest_url=rest_url, repository_path=repository_path, config_path=config_path,
                        docker_host=docker_host, grpc_port_base=grpc_port_base, profile=profile or {})
    validate_endpoint(endpoint)
    endpoint.save()
    audit.record(actor=actor, action="endpoint.create", obj=endpoint, after=_audit_view(endpoint))
    return endpoint


@transaction.atomic
def endpoint_update(*, actor: AbstractBaseUser | None, endpoint: Endpoint, **changes: Any) -> Endpoint:
    """Change an endpoint's fields (``ENDPOINT_FIELDS``; ``environment`` by name), same checks as create."""
    from releases.services import get_environment

    require_operator(actor)
    unknown = sorted(set(changes) - set(ENDPOINT_FIELDS))
    if unknown:
        raise ReleaseError(f"Endpoint fields {unknown} cannot be changed.", code="validation_error")
    endpoint = Endpoint.objects.select_for_update().select_related("environment").get(pk=endpoint.pk)
    before = _audit_view(endpoint)
    for field, value in changes.items():
        if field == "environment" and isinstance(value, str):
            value = get_environment(value)
        elif value is None and field not in ("grpc_port_base", "profile"):
            value = ""
        setattr(endpoint, field, value)
    validate_endpoint(endpoint)
    endpoint.save()
    after = _audit_view(endpoint)
    changed = sorted(k for k in after if after[k] != before[k])
    audit.record(actor=actor, action="endpoint.update", obj=endpoint, before={k: before[k] for k in changed},
                 after={k: after[k] for k in changed})
    return endpoint


def _audit_view(endpoint: Endpoint) -> dict[str, Any]:
    return {"environment": endpoint.environment.name, "kind": endpoint.kind, "grpc_target": endpoint.grpc_target,
            "rest_url": endpoint.rest_url, "repository_path": endpoint.repository_path,
            "config_path": endpoint.config_path, "docker_host": endpoint.docker_host,
            "grpc_port_base": endpoint.grpc_port_base, "profile": endpoint.profile}


# --- promote ---------------------------------------------------------------------------------

@transaction.atomic
def release_promote_request(*, release: Release, actor: AbstractBaseUser | None, endpoint: Endpoint | None = None,
                            canary: bool = False, weight: int = DEFAULT_CANARY_WEIGHT) -> Release:
    """Queue the promotion of an image-ready release (or retry a failed promotion). ``weight``: the
    share of traffic (%) a canary gets on endpoints that split by weight."""
    release.refresh_from_db()
    if release.state == ReleaseState.FAILED and not release.failure_step.startswith("promote"):
        raise InvalidTransition(f"Release {release.pk} failed at {release.failure_step or 'an earlier step'}; "
                                "only a failed promotion can be retried.", details={"state": release.state})
    if not 1 <= weight <= 100:
        raise ReleaseError(f"weight must be between 1 and 100 (%), got {weight}.", code="validation_error")
    endpoints = target_endpoints(release, endpoint)
    allowed = [ReleaseState.IMAGE_READY, ReleaseState.FAILED]
    if not release.environment.build_image:  # no image: only endpoints that take the SavedModel
        allowed.append(ReleaseState.APPROVED)
        need_image = [e.name for e in endpoints if deploy.driver_class(e.kind).needs_image]
        if need_image:
            raise Conflict(f"Endpoints {need_image} run containers, but {release.environment.name} builds no "
                           "images.", code="no_image")
    release = transition(release, to=ReleaseState.PROMOTING, allowed_from=allowed, actor=actor,
                         action="release.promote_requested", verb="promoted",
                         fields={"failure_step": "", "failure_reason": "", "retryable": False},
                         after={"endpoints": [e.name for e in endpoints], "canary": canary,
                                **({"weight": weight} if canary else {})})
    for target in endpoints:
        Promotion.objects.create(release=release, endpoint=target, canary=canary, canary_weight=weight)
    from releases.tasks import promote_release

    transaction.on_commit(lambda: promote_release.enqueue(release.pk))
    return release


def release_promote(*, release: Release, actor: AbstractBaseUser | None, endpoint: str = "", canary: bool = False,
                    weight: int = DEFAULT_CANARY_WEIGHT) -> Release:
    """``release_promote_request`` with the endpoint by name ("" = every endpoint of the
    environment): what the API and the console call with the promote form's fields."""
    target = get_endpoint(endpoint) if endpoint else None
    return release_promote_request(release=release, actor=actor, endpoint=target, canary=canary, weight=weight)


def release_promote_run(*, release_id: int) -> None:
    """Run the queued promotions of a release, one endpoint after another (each under its lock)."""
    release = Release.objects.select_related("version__model", "environment").get(pk=release_id)
    if release.state != ReleaseState.PROMOTING:
        return
    canary = False
    queued = Promotion.objects.filter(release=release, state=PromotionState.QUEUED).select_related("endpoint")
    for promotion in queued:
        canary = canary or promotion.canary
        if not _claim(promotion, state=PromotionState.QUEUED, to=PromotionState.RUNNING):
            continue  # another worker took it
        try:
            with _heartbeat(promotion, PromotionState.RUNNING):
                _promote_one(release, promotion)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the release must not stay `promoting`
            step, reason = _failure(exc, f"promotion of release {release.pk} to {promotion.endpoint.name}")
            _finish(promotion, PromotionState.FAILED, error=f"{step}: {reason}")
            release_fail(release, step=f"promote:{promotion.endpoint.name}:{step}", reason=reason,
                         retryable=_retryable(exc), allowed_from=[ReleaseState.PROMOTING])
            check_endpoint_health(promotion.endpoint)
            return
        check_endpoint_health(promotion.endpoint)
    with transaction.atomic():
        if not canary:
            _supersede_previous(release)
        transition(release, to=ReleaseState.CANARY if canary else ReleaseState.LIVE,
                   allowed_from=[ReleaseState.PROMOTING], actor=None,
                   action="release.canary" if canary else "release.live", verb="made live",
                   after={"endpoints": list(release.promotions.values_list("endpoint__name", flat=True))})


def _claim(promotion: Promotion, *, state: str, to: str) -> bool:
    """This worker takes ``promotion`` if it is still ``state`` and nobody's: a conditional update,
    so of two workers one wins."""
    return bool(Promotion.objects.filter(pk=promotion.pk, state=state, worker="").update(
        state=to, worker=worker_name(), heartbeat_at=timezone.now()))


def _heartbeat(promotion: Promotion, state: str) -> Heartbeat:
    """Beats while ``promotion`` is still ``state``: one the reaper has taken stays stale."""
    return Heartbeat(lambda: Promotion.objects.filter(pk=promotion.pk, state=state), name=f"promotion-{promotion.pk}")


def _failure(exc: BaseException, what: str) -> tuple[str, str]:
    """The step a driver failed at and why, for the release; anything unexpected is logged with
    its traceback."""
    if not isinstance(exc, (ModelyardError, OSError)):
        log.exception("%s failed", what)
    return getattr(exc, "step", "prepare"), getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"


def _retryable(exc: BaseException) -> bool:
    """A server or engine that may answer later, not a refusal that needs a change."""
    if isinstance(exc, PromotionFailed) and isinstance(exc.__cause__, ValueError):
        return False
    return isinstance(exc, (EndpointError, DockerEngineError, OSError))


def _supersede_previous(release: Release) -> None:
    Release.objects.filter(environment=release.environment, version__model=release.version.model,
                           state__in=[ReleaseState.LIVE, ReleaseState.CANARY]).exclude(pk=release.pk).update(
        state=ReleaseState.SUPERSEDED)


def _record_step(promotion: Promotion, step: str, message: str) -> None:
    entry = {"step": step, "message": message, "at": timezone.now().isoformat()}
    promotion.steps = [*promotion.steps, entry]
    with transaction.atomic():
        Promotion.objects.filter(pk=promotion.pk).update(steps=promotion.steps)
        audit.record(actor=None, action="release.promotion_step", obj=promotion.release,
                     model=promotion.release.version.model, version=promotion.release.version,
                     after={"endpoint": promotion.endpoint.name, "step": step}, comment=message[:1000])


def _finish(promotion: Promotion, state: str, *, error: str = "", previous: int | None = None) -> None:
    Promotion.objects.filter(pk=promotion.pk, state=PromotionState.RUNNING).update(
        state=state, error=error, finished_at=timezone.now(), previous_version=previous)


def _apply(endpoint: Endpoint, outcome: deploy.Outcome) -> None:
    """Mirror on the endpoint row what the driver changed (e.g. a docker endpoint's active container),
    and on ``endpoint`` itself: the health check that follows must look at the new target."""
    if outcome.endpoint_changes:
        Endpoint.objects.filter(pk=endpoint.pk).update(**outcome.endpoint_changes)
        for field, value in outcome.endpoint_changes.items():
            setattr(endpoint, field, value)


def _promote_one(release: Release, promotion: Promotion) -> None:
    outcome = _serve(driver(promotion.endpoint), promotion, release.version,  # paths and hosts checked again
                     canary=promotion.canary, weight=promotion.canary_weight if promotion.canary else 100,
                     image_ref=release.image_ref if release.image_digest else "", release_id=release.pk,
                     accept_signature_change=bool(gates.approved_signature_change(release)))
    _finish(promotion, PromotionState.SUCCEEDED, previous=outcome.previous_version)


def _serve(target: deploy.EndpointDriver, promotion: Promotion, version: ModelVersion, *, canary: bool = False,
           weight: int = 100, image_ref: str = "", release_id: int | None = None,
           accept_signature_change: bool = False) -> deploy.Outcome:
    """Unpack ``version`` from the registry (its digest checked) and have the driver promote it,
    validated on its samples, every step recorded on ``promotion``: a promotion, or a rollback's
    re-stage of the version that served before. Loads TensorFlow: workers only."""
    workdir = Path(tempfile.mkdtemp(prefix=f"promote-{promotion.release_id}-", dir=settings.FILE_UPLOAD_TEMP_DIR))
    try:
        _record_step(promotion, "verify", f"verifying sha256 {version.artifact_sha256[:12]}… of v{version.number}")
        model_path = registry.version_unpack(version, workdir / "model")  # refuses a tampered artifact
        outcome = target.promote(
            version.model.name, version.number, model_path, samples_for(version, model_path), canary,
            lambda s, m: _record_step(promotion, s, m), tolerance=tolerance_for(version), image_ref=image_ref,
            release_id=release_id, weight=weight, accept_signature_change=accept_signature_change)
        _apply(promotion.endpoint, outcome)
        return outcome
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- complete a canary, roll back -------------------------------------------------------------

def release_complete(*, release: Release, actor: AbstractBaseUser) -> Release:
    """All traffic to a canary release on every endpoint it is canary on."""
    release.refresh_from_db()
    if release.state != ReleaseState.CANARY:
        raise InvalidTransition(f"Release {release.pk} is {release.state}; only a canary can be completed.",
                                details={"state": release.state})
    for promotion in release.promotions.filter(state=PromotionState.SUCCEEDED, canary=True).select_related("endpoint"):
        _apply(promotion.endpoint, driver(promotion.endpoint).complete_canary(release.version.model.name))
        check_endpoint_health(promotion.endpoint)
    with transaction.atomic():
        _supersede_previous(release)
        return transition(release, to=ReleaseState.LIVE, allowed_from=[ReleaseState.CANARY], actor=actor,
                          action="release.complete", verb="completed")


ROLLBACK_FROM = [ReleaseState.LIVE, ReleaseState.CANARY, ReleaseState.FAILED]  # failed: at `rollback:…` only
NO_FAILURE = {"failure_step": "", "failure_reason": "", "retryable": False}


def release_rollback(*, release: Release, actor: AbstractBaseUser | None, comment: str = "") -> Release:
    """All traffic back to the version that served before this release. A label or route flip is
    done here and the release is ``rolled_back`` at once. Where that version is gone from an
    endpoint (retired since), staging it again loads TensorFlow and takes seconds: the release goes
    ``rolling_back`` and the deploy worker does it (``release_rollback_run``); the flips of the
    other endpoints are done here all the same. A release whose rollback failed (``failed`` at
    ``rollback:…``) may be rolled back again."""
    release.refresh_from_db()
    _check_rollback(release)
    promotions = list(release.promotions.filter(state=PromotionState.SUCCEEDED).select_related("endpoint"))
    for promotion in promotions:
        if promotion.previous_version is None:
            raise Conflict(f"Nothing served before release {release.pk} on {promotion.endpoint.name}: there is "
                           "no version to roll back to.", code="nothing_to_roll_back")
    restage = []
    for promotion in promotions:
        try:
            _apply(promotion.endpoint, driver(promotion.endpoint).rollback(release.version.model.name,
                                                                           promotion.previous_version))
        except deploy.NeedsRestage:
            restage.append(promotion)
            continue
        check_endpoint_health(promotion.endpoint)
    if restage:
        return _queue_restage(release, restage, actor=actor, comment=comment)
    return _rolled_back(release, actor=actor, comment=comment, allowed_from=ROLLBACK_FROM)


def _check_rollback(release: Release) -> None:
    if release.state == ReleaseState.ROLLING_BACK:
        raise InvalidTransition(f"Release {release.pk} is already rolling back: the deploy worker is staging the "
                                "previous version again. Wait for it to end (rolled_back, or failed with the reason).",
                                details={"state": release.state})
    failed_rollback = release.state == ReleaseState.FAILED and release.failure_step.startswith("rollback")
    if release.state not in (ReleaseState.LIVE, ReleaseState.CANARY) and not failed_rollback:
        raise InvalidTransition(f"Release {release.pk} is {release.state}; only a live or canary release (or one "
                                "whose rollback failed) can be rolled back.", details={"state": release.state})


@transaction.atomic
def _queue_restage(release: Release, restage: list[Promotion], *, actor: AbstractBaseUser | None,
                   comment: str) -> Release:
    """``rolling_back``, and the re-stage of each of ``restage`` queued on the deploy worker."""
    release = transition(release, to=ReleaseState.ROLLING_BACK, allowed_from=ROLLBACK_FROM, actor=actor,
                         action="release.rollback_requested", verb="rolled back", comment=comment, fields=NO_FAILURE,
                         after={"restage": {p.endpoint.name: p.previous_version for p in restage}})
    Promotion.objects.filter(pk__in=[p.pk for p in restage], state=PromotionState.SUCCEEDED).update(
        state=PromotionState.ROLLING_BACK, worker="", heartbeat_at=None, error="")
    from releases.tasks import rollback_release

    transaction.on_commit(lambda: rollback_release.enqueue(release.pk))
    return release


def _rolled_back(release: Release, *, actor: AbstractBaseUser | None, comment: str,
                 allowed_from: list[str]) -> Release:
    """The end of every rollback, in the request (flips only) or on the worker (after re-staging):
    the releases that served before are live again; this one and its promotions are rolled back."""
    with transaction.atomic():
        promotions = list(Promotion.objects.filter(release=release, state=PromotionState.SUCCEEDED)
                          .values_list("pk", "previous_version"))
        previous_numbers = {number for _, number in promotions}
        Release.objects.filter(environment=release.environment, version__model=release.version.model,
                               version__number__in=previous_numbers, state=ReleaseState.SUPERSEDED).update(
            state=ReleaseState.LIVE)
        Promotion.objects.filter(pk__in=[pk for pk, _ in promotions]).update(state=PromotionState.ROLLED_BACK)
        return transition(release, to=ReleaseState.ROLLED_BACK, allowed_from=allowed_from, actor=actor,
                          action="release.rollback", verb="rolled back", comment=comment, fields=NO_FAILURE,
                          after={"to_versions": sorted(previous_numbers)})


def release_rollback_run(*, release_id: int) -> None:
    """The deploy worker's part of a rollback: stage again, on each endpoint queued for it, the
    version that served before, then end the rollback as the request would have. Any failure
    ends the release ``failed`` at ``rollback:<endpoint>:<step>`` (retryable: roll back again).
    Safe to run twice (each endpoint is claimed with a conditional update)."""
    release = Release.objects.select_related("version__model", "environment").get(pk=release_id)
    if release.state != ReleaseState.ROLLING_BACK:
        return
    queued = Promotion.objects.filter(release=release, state=PromotionState.ROLLING_BACK, worker="")
    for promotion in queued.select_related("endpoint"):
        if not _claim(promotion, state=PromotionState.ROLLING_BACK, to=PromotionState.ROLLING_BACK):
            continue  # another worker took it
        try:
            with _heartbeat(promotion, PromotionState.ROLLING_BACK):
                _restage(release, promotion)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the release must not stay `rolling_back`
            step, reason = _failure(exc, f"re-stage for the rollback of release {release.pk} on "
                                         f"{promotion.endpoint.name}")
            _rollback_failed(release, promotion, step=step, reason=f"Staging v{promotion.previous_version} again on "
                             f"{promotion.endpoint.name} failed at {step}: {reason}", retryable=_retryable(exc))
            return
        Promotion.objects.filter(pk=promotion.pk, state=PromotionState.ROLLING_BACK).update(
            state=PromotionState.SUCCEEDED, worker="", heartbeat_at=None)
        check_endpoint_health(promotion.endpoint)
    if Promotion.objects.filter(release=release, state=PromotionState.ROLLING_BACK).exists():
        return  # another worker is still re-staging on another endpoint: the last one ends the rollback
    actor, comment = _rollback_request(release)
    try:
        _rolled_back(release, actor=actor, comment=comment, allowed_from=[ReleaseState.ROLLING_BACK])
    except InvalidTransition:
        log.info("release %s: its rollback was ended by another worker", release.pk)


def _restage(release: Release, promotion: Promotion) -> None:
    """The version that served before is gone from the endpoint: staged again from the registry
    (identical bytes, same number), validated and made stable as a promotion would be."""
    previous = ModelVersion.objects.select_related("model").get(model=release.version.model,
                                                                 number=promotion.previous_version)
    _record_step(promotion, "rollback", f"v{previous.number} is no longer on {promotion.endpoint.name}: staging it "
                                        "again from the registry")
    _serve(driver(promotion.endpoint), promotion, previous)


def _rollback_failed(release: Release, promotion: Promotion, *, step: str, reason: str, retryable: bool) -> None:
    """The release fails with the reason; its promotions are back to ``succeeded`` (what they
    were before the rollback: rolling back again retries every endpoint)."""
    with transaction.atomic():
        Promotion.objects.filter(release=release, state=PromotionState.ROLLING_BACK).update(
            state=PromotionState.SUCCEEDED, worker="", heartbeat_at=None)
        Promotion.objects.filter(pk=promotion.pk).update(error=f"rollback {step}: {reason}")
        try:
            release_fail(release, step=f"rollback:{promotion.endpoint.name}:{step}", reason=reason,
                         retryable=retryable, allowed_from=[ReleaseState.ROLLING_BACK])
        except InvalidTransition:
            log.warning("release %s left `rolling_back` before its failed re-stage was recorded", release.pk)
    check_endpoint_health(promotion.endpoint)


def _rollback_request(release: Release) -> tuple[Any, str]:
    """Who asked for the rollback that is running, and why: its ``release.rollback_requested``
    audit row (the final ``release.rollback`` row names them too)."""
    from registry.models import AuditEvent

    asked = (AuditEvent.objects.filter(action="release.rollback_requested", object_type="releases.release",
                                       object_id=str(release.pk)).select_related("actor").order_by("-pk").first())
    return (asked.actor, asked.comment) if asked else (None, "")


# --- promotions whose worker died ---------------------------------------------------------------

def promotions_reap_stale(*, older_than: timedelta | None = None) -> int:
    """Promotions whose worker stopped sending heartbeats (killed between steps, machine lost): the
    driver puts the endpoint back on what it served before and removes what the promotion left,
    and the release fails, retryable, with the reason. A rollback's re-stage whose worker died
    fails its release the same way (``rollback:…``), the endpoint left as it is: rolling back
    again finishes the job. Run on a schedule (``manage.py reap_jobs --loop``, which runs every
    app's reaper), never in a request. Returns how many were reaped; safe to run from several
    processes at once (one conditional update claims each)."""
    cutoff = timezone.now() - (older_than or timedelta(seconds=settings.OPTIMIZATION_HEARTBEAT_TIMEOUT))
    stale = Promotion.objects.select_related("release__version__model", "release__environment", "endpoint").filter(
        heartbeat_at__lt=cutoff)
    return (sum(_reap_promotion(p, cutoff) for p in stale.filter(state=PromotionState.RUNNING))
            + sum(_reap_restage(p, cutoff) for p in stale.filter(state=PromotionState.ROLLING_BACK)))


def _reap_restage(promotion: Promotion, cutoff: Any) -> bool:
    """Why not ``recover`` as for a promotion: it would put back the version being rolled away
    from. The endpoint serves either version (the one staged again only once validated); the
    release fails, retryable, and rolling back again flips or re-stages what is still needed."""
    release, endpoint = promotion.release, promotion.endpoint
    step = promotion.steps[-1]["step"] if promotion.steps else "prepare"
    lost = (f"The worker staging v{promotion.previous_version} again on {endpoint.name} for the rollback "
            f"({promotion.worker or 'unknown'}) stopped after step {step!r}: no heartbeat since "
            f"{promotion.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC. Roll back again to finish.")
    if not Promotion.objects.filter(pk=promotion.pk, state=PromotionState.ROLLING_BACK,
                                    heartbeat_at__lt=cutoff).update(state=PromotionState.SUCCEEDED, worker="",
                                                                    heartbeat_at=None):
        return False  # another reaper took it, or the worker beat again
    close_orphan_task_results("releases.tasks.rollback_release", [release.pk], worker=promotion.worker)
    _rollback_failed(release, promotion, step=step, reason=lost, retryable=True)
    return True


def _reap_promotion(promotion: Promotion, cutoff: Any) -> bool:
    release, endpoint = promotion.release, promotion.endpoint
    step = promotion.steps[-1]["step"] if promotion.steps else "prepare"
    lost = (f"The worker running the promotion to {endpoint.name} ({promotion.worker or 'unknown'}) stopped after "
            f"step {step!r}: no heartbeat since {promotion.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC.")
    if not Promotion.objects.filter(pk=promotion.pk, state=PromotionState.RUNNING, heartbeat_at__lt=cutoff).update(
            state=PromotionState.FAILED, finished_at=timezone.now(), error=f"{step}: {lost}"):
        return False  # another reaper took it, or the worker beat again
    try:
        _apply(endpoint, driver(endpoint).recover(release.version.model.name, release.version.number, release.pk,
                                                  _live_version(release)))
        restored = "The endpoint serves what it served before; promote again to retry."
    except Exception as exc:  # noqa: BLE001 - the release must not stay `promoting` either way
        log.exception("restoring %s after the lost promotion of release %s failed", endpoint.name, release.pk)
        restored = f"Restoring the endpoint failed ({type(exc).__name__}: {exc}): check it before retrying."
    _record_step(promotion, "restore", restored)
    close_orphan_task_results("releases.tasks.promote_release", [release.pk], worker=promotion.worker)
    try:
        release_fail(release, step=f"promote:{endpoint.name}:{step}", reason=f"{lost} {restored}", retryable=True,
                     allowed_from=[ReleaseState.PROMOTING])
    except InvalidTransition:
        log.warning("release %s left `promoting` before its lost promotion was reaped", release.pk)
    check_endpoint_health(endpoint)
    return True


def _live_version(release: Release) -> int | None:
    """The version of the model live in the release's environment before this release, if any."""
    return (Release.objects.filter(environment=release.environment, version__model=release.version.model,
                                   state=ReleaseState.LIVE).exclude(pk=release.pk)
            .order_by("-decided_at", "-pk").values_list("version__number", flat=True).first())


# --- health ----------------------------------------------------------------------------------

def check_endpoint_health(endpoint: Endpoint) -> Endpoint:
    """Record whether the endpoint answers and what it serves (the driver's ``health``).
    ``health_error`` never quotes a file."""
    try:
        health = driver(endpoint).health()
    except endpoints.EndpointRefused as exc:
        with TFServingClient(endpoint.grpc_target, timeout=settings.PROMOTION_RPC_TIMEOUT) as client:
            reachable = client.reachable()
        health = deploy.Health(reachable, error=f"not allowed by the operator's policy: {exc.message}" if reachable
                               else f"{endpoint.grpc_target} does not answer")
    was_healthy = endpoint.reachable is not False and not endpoint.health_error
    with transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(reachable=health.reachable, health=health.models,
                                                       health_error=health.error, health_checked_at=timezone.now())
        if was_healthy and health.error:  # a change, not every failed check: webhooks send `endpoint.unhealthy` once
            audit.record(actor=None, action="endpoint.unhealthy", obj=endpoint, before={"reachable": endpoint.reachable},
                         after={"reachable": health.reachable, "error": health.error[:500]})
    endpoint.refresh_from_db()
    return endpoint


def check_all_endpoints() -> int:
    count = 0
    for endpoint in Endpoint.objects.select_related("environment"):
        check_endpoint_health(endpoint)
        count += 1
    return count
