"""Every write for releases: one function per state transition.

Each transition moves the state with a conditional UPDATE (so two racing callers cannot both
win), and writes its AuditEvent in the same transaction. An invalid transition raises
``InvalidTransition`` (HTTP 409) naming the current state.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from registry import audit
from registry.errors import Conflict, Forbidden, NotFound
from registry.models import ModelVersion
from releases import gates
from releases.errors import ReleaseError
from releases.models import Approval, Environment, Release

log = logging.getLogger(__name__)
ReleaseState = Release.State


class InvalidTransition(Conflict):
    code = "invalid_transition"


def transition(release: Release, *, to: str, allowed_from: Iterable[str], actor: Any, action: str,
          verb: str, comment: str = "", fields: dict[str, Any] | None = None,
          after: dict[str, Any] | None = None) -> Release:
    """The one way a release changes state. Must run inside a transaction."""
    allowed = list(allowed_from)
    updated = Release.objects.filter(pk=release.pk, state__in=allowed).update(
        state=to, updated_at=timezone.now(), **(fields or {}))
    if not updated:
        current = Release.objects.filter(pk=release.pk).values_list("state", flat=True).first()
        raise InvalidTransition(
            f"Release {release.pk} is {current}; it cannot be {verb} (only from {', '.join(allowed)}).",
            details={"state": current, "allowed_from": allowed})
    before_state = release.state
    release.refresh_from_db()
    audit.record(actor=actor, action=action, obj=release, model=release.version.model, version=release.version,
                 before={"state": before_state}, after={"state": to, **(after or {})}, comment=comment)
    return release


def get_release(release_id: int | str) -> Release:
    try:
        return Release.objects.select_related("version__model", "environment", "requester").get(pk=int(release_id))
    except (Release.DoesNotExist, ValueError):
        raise NotFound(f"No release {release_id}.", code="release_not_found") from None


def get_environment(name: str) -> Environment:
    try:
        return Environment.objects.get(name=name)
    except Environment.DoesNotExist:
        names = ", ".join(Environment.objects.values_list("name", flat=True))
        raise NotFound(f"No environment {name!r} (known: {names or 'none'}).", code="environment_not_found") from None


def check_servable(version: ModelVersion, environment: Environment) -> None:
    if version.status != ModelVersion.Status.READY:
        raise Conflict(f"Version {version.number} is {version.status}; only ready versions can be released.")
    if version.format == ModelVersion.Format.SAVED_MODEL:
        return
    if version.format == ModelVersion.Format.TFLITE and environment.prefer_tflite:
        return
    if version.format == ModelVersion.Format.TFLITE:
        raise ReleaseError(
            f"Version {version.number} is a TFLite model; environment {environment.name!r} does not serve TFLite "
            "(its profile has prefer_tflite off). Release a SavedModel, or enable prefer_tflite.",
            code="not_servable")
    raise ReleaseError(
        f"Version {version.number} is a Keras file, which TF Serving cannot serve. Register a SavedModel export "
        "(model.save(dir, save_format='tf'), zipped) and release that.", code="not_servable")


# --- request, submit, decide -----------------------------------------------------------------

@transaction.atomic
def release_create(*, version: ModelVersion, environment: Environment, requester: AbstractBaseUser,
                   notes: str = "") -> Release:
    check_servable(version, environment)
    release = Release.objects.create(version=version, environment=environment, requester=requester, notes=notes)
    audit.record(actor=requester, action="release.create", obj=release, model=version.model, version=version,
                 after={"state": ReleaseState.DRAFT, "environment": environment.name}, comment=notes)
    return release


@transaction.atomic
def release_submit(*, release: Release, actor: AbstractBaseUser) -> Release:
    """Evaluate the gates and ask for approval (or approve at once where the environment allows)."""
    results, passed, baseline = gates.evaluate(release.version, release.environment)
    release = transition(release, to=ReleaseState.PENDING_APPROVAL, allowed_from=[ReleaseState.DRAFT], actor=actor, action="release.submit",
                    verb="submitted", fields={"gates": results, "gates_passed": passed, "baseline": baseline,
                                              "submitted_at": timezone.now()},
                    after={"gates_passed": passed, "gates": results})
    if passed and release.environment.auto_approve:
        release = _approve(release, actor=None, comment="Auto-approved: every gate passed "
                                                        f"({release.environment.name} auto-approves).")
    return release


def approver_refusal(release: Release, actor: AbstractBaseUser) -> Forbidden | None:
    """Why ``actor`` may not approve or reject ``release`` (None: they may). Pages show it before
    the click; ``release_approve``/``release_reject`` raise it."""
    if not actor.has_perm("releases.approve_release"):
        return Forbidden("Approving or rejecting a release needs the releases.approve_release permission.")
    four_eyes = release.environment.four_eyes or release.environment.is_production
    if four_eyes and actor.pk == release.requester_id:
        return Forbidden(f"Four-eyes rule: {actor} requested release {release.pk} and cannot also decide it "
                         f"({release.environment.name}). Another approver must.", code="four_eyes")
    return None


def _check_approver(release: Release, actor: AbstractBaseUser) -> None:
    refusal = approver_refusal(release, actor)
    if refusal is not None:
        raise refusal


def _approve(release: Release, *, actor: AbstractBaseUser | None, comment: str, override_reason: str = "") -> Release:
    release = transition(release, to=ReleaseState.APPROVED, allowed_from=[ReleaseState.PENDING_APPROVAL], actor=actor,
                    action="release.approve", verb="approved", comment=comment,
                    fields={"decided_at": timezone.now(), "override_reason": override_reason},
                    after={"override_reason": override_reason} if override_reason else None)
    if actor is not None:
        Approval.objects.create(release=release, actor=actor, decision=Approval.Decision.APPROVE, comment=comment,
                                override_reason=override_reason)
    if release.environment.build_image:
        from releases.tasks import build_release_image

        transaction.on_commit(lambda: build_release_image.enqueue(release.pk))
    elif release.environment.auto_promote:
        from releases.promotion import release_promote_request

        release_promote_request(release=release, actor=None)
    return release


@transaction.atomic
def release_approve(*, release: Release, actor: AbstractBaseUser, comment: str, override_reason: str = "") -> Release:
    _check_approver(release, actor)
    if not comment.strip():
        raise ReleaseError("An approval needs a comment.", code="validation_error")
    release.refresh_from_db()
    if release.gates_passed is False and not override_reason.strip():
        failing = "; ".join(g["message"] for g in release.gates if not g["passed"])
        raise Conflict(f"Gates failed ({failing}). Approving anyway needs an override_reason, which is recorded.",
                       code="gates_failed", details={"gates": release.gates})
    return _approve(release, actor=actor, comment=comment, override_reason=override_reason.strip())


@transaction.atomic
def release_reject(*, release: Release, actor: AbstractBaseUser, comment: str) -> Release:
    _check_approver(release, actor)
    if not comment.strip():
        raise ReleaseError("A rejection needs a comment saying why.", code="validation_error")
    release = transition(release, to=ReleaseState.REJECTED, allowed_from=[ReleaseState.PENDING_APPROVAL], actor=actor,
                    action="release.reject", verb="rejected", comment=comment,
                    fields={"decided_at": timezone.now()})
    Approval.objects.create(release=release, actor=actor, decision=Approval.Decision.REJECT, comment=comment)
    return release


@transaction.atomic
def release_cancel(*, release: Release, actor: AbstractBaseUser, comment: str = "") -> Release:
    release.refresh_from_db()
    if release.state == ReleaseState.FAILED and release.failure_step.startswith("rollback"):
        # Its version may still serve on an endpoint: only finishing the rollback ends it.
        raise InvalidTransition(f"Release {release.pk} failed while rolling back and may still be served; roll it "
                                "back again rather than cancel it.", details={"state": release.state})
    return transition(release, to=ReleaseState.CANCELLED,
                 allowed_from=[ReleaseState.DRAFT, ReleaseState.PENDING_APPROVAL, ReleaseState.APPROVED, ReleaseState.IMAGE_READY, ReleaseState.FAILED], actor=actor,
                 action="release.cancel", verb="cancelled", comment=comment)


# --- image build -----------------------------------------------------------------------------

@transaction.atomic
def release_build_request(*, release: Release, actor: AbstractBaseUser) -> Release:
    """(Re)queue the image build: after approval, or to retry a failed build."""
    release.refresh_from_db()
    if release.state == ReleaseState.FAILED and release.failure_step != "build":
        raise InvalidTransition(f"Release {release.pk} failed at {release.failure_step or 'an earlier step'}, "
                                "not at the build; it cannot be rebuilt.", details={"state": release.state})
    release = transition(release, to=ReleaseState.APPROVED, allowed_from=[ReleaseState.APPROVED, ReleaseState.FAILED], actor=actor,
                    action="release.build_requested", verb="built",
                    fields={"failure_step": "", "failure_reason": "", "retryable": False})
    from releases.tasks import build_release_image

    transaction.on_commit(lambda: build_release_image.enqueue(release.pk))
    return release


def release_fail(release: Release, *, step: str, reason: str, retryable: bool,
                 allowed_from: Iterable[str]) -> Release:
    with transaction.atomic():
        return transition(release, to=ReleaseState.FAILED, allowed_from=allowed_from, actor=None, action="release.fail",
                     verb="failed", comment=reason[:2000],
                     fields={"failure_step": step, "failure_reason": reason, "retryable": retryable},
                     after={"step": step, "retryable": retryable})
