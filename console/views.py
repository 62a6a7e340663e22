"""Console pages. Thin: read through ``console.selectors``, write only by calling the services the
API calls, with the API's permission checks, input validators and error messages.

A failed write re-renders its page with the API's status code and message (``ActionFailed``).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRefresh
from rest_framework import exceptions

from console import charts, formatting, selectors
from optimization import budget, services as optimization
from optimization.errors import OptimizationError
from optimization.serializers import JobCreateInput
from registry import services as registry
from registry.api_common import exception_handler
from registry.errors import ModelyardError
from registry.models import Dataset, ModelVersion, RegisteredModel
from registry.serializers import AliasInput, DatasetCreateInput, ModelCreateInput, VersionCreateInput
from registry.uploads import StagedFile
from releases import promotion, services as releases
from releases.errors import ReleaseError
from releases.models import Release
from releases.serializers import CommentInput, DecisionInput, PromoteInput, ReleaseCreateInput

# --- shared: permissions and errors exactly as the API has them --------------------------------


def require(request: HttpRequest, perm: str) -> None:
    """The API's rule: a write needs the matching Django model permission (same 403 message)."""
    if not request.user.has_perm(perm):
        raise exceptions.PermissionDenied()


def api_error(exc: Exception) -> tuple[int, str] | None:
    """(status, message) the API would answer for ``exc``; None if it is not an API error."""
    response = exception_handler(exc, {})
    if response is None:
        return None
    return response.status_code, response.data["error"]["message"]


def attempt(action: Callable[[], Any]) -> tuple[Any, tuple[int, str] | None]:
    try:
        return action(), None
    except (ModelyardError, exceptions.APIException) as exc:
        return None, api_error(exc)


def valid(serializer_class: type, request: HttpRequest, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate a form with the API's input serializer (blank fields count as not given)."""
    data = {k: v for k, v in request.POST.items() if k != "csrfmiddlewaretoken" and v != ""}
    data.update({k: f for k, f in request.FILES.items()})
    data.update(extra or {})
    return validated(serializer_class, data)


def validated(serializer_class: type, data: dict[str, Any]) -> dict[str, Any]:
    """Run the API's input serializer on ``data``; a refusal is the API's 400 and message."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def page(request: HttpRequest, template: str, context: dict[str, Any], error: tuple[int, str] | None = None,
         status: int = 200) -> HttpResponse:
    if error:
        status, context["error"] = error
    return render(request, template, context, status=status)


# --- models ----------------------------------------------------------------------------------

@login_required
@require_GET
def models(request: HttpRequest) -> HttpResponse:
    params = {k: request.GET.get(k, "").strip() for k in ("q", "task", "tag")}
    page_obj, rows = selectors.models_page(**params, page=request.GET.get("page"))
    return render(request, "console/models.html", {"page": page_obj, "rows": rows, "params": params,
                                                    **selectors.filter_choices()})


@login_required
def model_create(request: HttpRequest) -> HttpResponse:
    ctx: dict[str, Any] = {"tasks": RegisteredModel.Task.values}
    if request.method != "POST":
        return render(request, "console/model_create.html", ctx)

    def act() -> RegisteredModel:
        require(request, "registry.add_registeredmodel")
        return registry.model_create(owner=request.user, **valid(ModelCreateInput, request))

    created, error = attempt(act)
    if error:
        return page(request, "console/model_create.html", ctx, error)
    return redirect("console:model", name=created.name)


@login_required
def dataset_upload(request: HttpRequest, name: str) -> HttpResponse:
    found, error = attempt(lambda: registry.get_model(name))
    if error:
        return page(request, "console/error.html", {}, error)
    ctx = {"model": found, "numbers": selectors.ready_numbers(found), "roles": Dataset.Role.values}
    if request.method != "POST":
        return render(request, "console/dataset_upload.html", ctx)

    def act() -> Dataset:
        require(request, "registry.add_dataset")
        data = valid(DatasetCreateInput, request)
        version = registry.get_version(found, data["version"]) if data.get("version") else None
        return registry.dataset_create(model=found, staged=StagedFile.from_upload(data["file"]), role=data["role"],
                                       actor=request.user, check_version=version, name=data["name"])

    _, error = attempt(act)
    if error:
        return page(request, "console/dataset_upload.html", ctx, error)
    return redirect(reverse("console:model", args=[name]) + "#datasets")


def _model_context(model: RegisteredModel, request: HttpRequest) -> dict[str, Any]:
    ctx = selectors.model_page(model, page=request.GET.get("page"))
    number = {v.pk: v.number for v in ctx["lineage"]}  # lineage_versions includes every parent
    compare = reverse("console:compare", args=[model.name])
    nodes = []
    for v in ctx["lineage"]:
        parent = number.get(v.parent_id) if v.parent_id else None
        href = f"{compare}?v={v.number}" + (f"&v={parent}" if parent else "")
        nodes.append(charts.Node(v.number, parent, selectors.technique_of(v),
                                 _node_detail(selectors.primary_metrics(v), v), href))
    ctx["lineage_svg"] = charts.lineage(nodes)
    return ctx


def _node_detail(metrics: dict[str, Any], version: ModelVersion) -> str:
    acc = metrics.get("accuracy")
    size = metrics.get("gzipped_bytes") or version.artifact_size
    return f"{formatting.percent(acc, 1) if acc is not None else 'not measured'} · {formatting.size(size)}"


@login_required
@require_GET
def model(request: HttpRequest, name: str) -> HttpResponse:
    found, error = attempt(lambda: registry.get_model(name))
    if error:
        return page(request, "console/error.html", {}, error)
    return render(request, "console/model.html", _model_context(found, request))


@login_required
@require_POST
def alias_move(request: HttpRequest, name: str) -> HttpResponse:
    found, error = attempt(lambda: registry.get_model(name))
    if error:
        return page(request, "console/error.html", {}, error)

    def act() -> Any:
        require(request, "registry.change_modelalias")  # the API's PUT /aliases/{alias}
        alias = request.POST.get("alias", "").strip()
        data = valid(AliasInput, request)
        return registry.alias_set(model=found, name=alias, version=registry.get_version(found, data["version"]),
                                  actor=request.user)

    _, error = attempt(act)
    if error:
        return page(request, "console/model.html", _model_context(found, request), error)
    return redirect("console:model", name=name)


@login_required
def upload(request: HttpRequest, name: str) -> HttpResponse:
    found, error = attempt(lambda: registry.get_model(name))
    if error:
        return page(request, "console/error.html", {}, error)
    ctx = {"model": found, "numbers": selectors.ready_numbers(found)}
    if request.method != "POST":
        return render(request, "console/upload.html", ctx)

    def act() -> ModelVersion:
        require(request, "registry.add_modelversion")
        data = valid(VersionCreateInput, request)
        parent = registry.get_version(found, data["parent"]) if data.get("parent") else None
        return registry.version_create(model=found, staged=StagedFile.from_upload(data["artifact"]),
                                       actor=request.user, description=data["description"],
                                       metadata=data["metadata"], tags=data["tags"], parent=parent)

    version, error = attempt(act)
    if error:
        return page(request, "console/upload.html", ctx, error)
    return redirect(reverse("console:model", args=[name]) + f"#v{version.number}")


# --- optimize and jobs -----------------------------------------------------------------------

def recipe_from_form(post: Any) -> dict[str, Any]:
    """The recipe the form describes; validation is the API's (``job_create`` → ``plan_recipe``)."""
    kind = post.get("kind", "technique")
    raw = post.get("params", "").strip()
    try:
        params = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise OptimizationError(f"params: Not valid JSON: {exc}.", code="validation_error") from None
    if kind == "pipeline":
        return {"pipeline": post.get("pipeline", "")}
    if kind == "auto":
        params = {**params, "objective": post.get("objective", "gzipped_size"),
                  "relative": post.get("relative") == "on"}
        if post.get("max_accuracy_drop", "").strip():
            params["max_accuracy_drop"] = post["max_accuracy_drop"].strip()
        return {"technique": "auto", "params": params}
    recipe: dict[str, Any] = {"technique": post.get("technique", "")}
    if params:
        recipe["params"] = params
    return recipe


@login_required
def optimize(request: HttpRequest, name: str) -> HttpResponse:
    found, error = attempt(lambda: registry.get_model(name))
    if error:
        return page(request, "console/error.html", {}, error)
    from optimization import passes

    ctx = {"model": found, "numbers": selectors.ready_numbers(found),
           "datasets": list(Dataset.objects.filter(model=found).order_by("role", "-created_at")),
           "techniques": [optimization.MEASURE, *sorted(passes.PASSES)],
           "pipelines": sorted(passes.NAMED_PIPELINES), "objectives": budget.OBJECTIVES,
           "form": request.POST or {"version": request.GET.get("version", "")}}
    if request.method != "POST":
        return render(request, "console/optimize.html", ctx)

    def act() -> Any:
        require(request, "optimization.add_optimizationjob")
        datasets = {role: request.POST.get(f"dataset_{role}") or None for role in ("train", "eval", "calibration")}
        data = valid(JobCreateInput, request, {"model": name, "recipe": recipe_from_form(request.POST),
                                               "datasets": {k: v for k, v in datasets.items() if v}})
        source = registry.get_version(found, data["version"])
        chosen = {role: optimization.get_dataset(found, role, pk)
                  for role, pk in (data.get("datasets") or {}).items() if pk}
        return optimization.job_create(source=source, recipe=data["recipe"], actor=request.user, datasets=chosen)

    job, error = attempt(act)
    if error:
        return page(request, "console/optimize.html", ctx, error)
    return redirect("console:job", job_id=job.pk)


def _job(job_id: int) -> Any:
    # A read never writes: a dead worker's job is reaped on the worker's schedule (optimization.tasks).
    return optimization.get_job(job_id)


@login_required
@require_GET
def job(request: HttpRequest, job_id: int) -> HttpResponse:
    found, error = attempt(lambda: _job(job_id))
    if error:
        return page(request, "console/error.html", {}, error)
    return render(request, "console/job.html", {"job": found})


@login_required
@require_GET
def job_progress(request: HttpRequest, job_id: int) -> HttpResponse:
    """The live part of the job page (htmx polls it while the job runs)."""
    found, error = attempt(lambda: _job(job_id))
    if error:
        return page(request, "console/error.html", {}, error)
    return render(request, "console/partials/job_progress.html", {"job": found})


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    def act() -> Any:
        require(request, "optimization.change_optimizationjob")
        return optimization.job_cancel(job=optimization.get_job(job_id), actor=request.user)

    _, error = attempt(act)
    if error:
        found, _ = attempt(lambda: _job(job_id))
        return page(request, "console/job.html" if found else "console/error.html", {"job": found}, error)
    return redirect("console:job", job_id=job_id)


# --- compare ---------------------------------------------------------------------------------

@login_required
@require_GET
def compare(request: HttpRequest, name: str) -> HttpResponse:
    found, error = attempt(lambda: registry.get_model(name))
    if error:
        return page(request, "console/error.html", {}, error)
    numbers = [int(n) for n in request.GET.getlist("v") if n.isdigit()] or selectors.default_compare_numbers(found)
    from console.compare import compare_context

    return render(request, "console/compare.html", compare_context(found, numbers))


# --- releases --------------------------------------------------------------------------------

@login_required
@require_POST
def release_request(request: HttpRequest, name: str) -> HttpResponse:
    found, error = attempt(lambda: registry.get_model(name))
    if error:
        return page(request, "console/error.html", {}, error)

    def act() -> Release:
        require(request, "releases.add_release")
        data = valid(ReleaseCreateInput, request, {"model": name})
        version = registry.get_version(found, data["version"])
        release = releases.release_create(version=version, environment=releases.get_environment(data["environment"]),
                                          requester=request.user, notes=data["notes"])
        if request.POST.get("submit") == "on" and request.user.has_perm("releases.change_release"):
            release = releases.release_submit(release=release, actor=request.user)
        return release

    release, error = attempt(act)
    if error:
        return page(request, "console/model.html", _model_context(found, request), error)
    return redirect("console:release", release_id=release.pk)


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    recent = selectors.releases_qs().order_by("-created_at")
    if state:
        recent = recent.filter(state=state)
    return render(request, "console/releases.html", {
        "awaiting": list(selectors.awaiting_decision(request.user)[:100]),
        "page": selectors.paginate(recent, request.GET.get("page")), "state": state,
        "states": Release.State.choices})


@login_required
@require_GET
def inbox_count(request: HttpRequest) -> HttpResponse:
    """The navigation's "awaiting my decision" count, polled by htmx."""
    return render(request, "console/partials/inbox_count.html")


def _release_context(request: HttpRequest, release_id: int) -> dict[str, Any]:
    release = selectors.releases_qs().get(pk=releases.get_release(release_id).pk)
    ctx = selectors.release_page(release)
    refusal = releases.approver_refusal(release, request.user)
    from console.compare import release_diff, stepper

    ctx.update(refusal=refusal.message if refusal else "", steps=stepper(release),
               diff=release_diff(ctx["mine"], ctx["theirs"]),
               can_change=request.user.has_perm("releases.change_release"),
               four_eyes=release.environment.four_eyes or release.environment.is_production)
    return ctx


@login_required
@require_GET
def release(request: HttpRequest, release_id: int) -> HttpResponse:
    ctx, error = attempt(lambda: _release_context(request, release_id))
    if error:
        return page(request, "console/error.html", {}, error)
    return render(request, "console/release.html", ctx)


@login_required
@require_GET
def release_live(request: HttpRequest, release_id: int) -> HttpResponse:
    """The live part of the release page; when the state moved on, the whole page reloads so its
    buttons match the new state."""
    ctx, error = attempt(lambda: _release_context(request, release_id))
    if error:
        return page(request, "console/error.html", {}, error)
    if request.GET.get("state") and request.GET["state"] != ctx["release"].state:
        return HttpResponseClientRefresh()
    return render(request, "console/partials/release_live.html", ctx)


def _rollback(*, release: Release, actor: Any, comment: str) -> Release:
    if not comment.strip():  # the page asks for a reason before a rollback; the audit row keeps it
        raise ReleaseError("A rollback from the console needs a reason.", code="validation_error")
    return promotion.release_rollback(release=release, actor=actor, comment=comment)


# action -> (service, permission the API checks (None: the service checks), input validator)
RELEASE_ACTIONS: dict[str, tuple[Callable[..., Release], str | None, type | None]] = {
    "submit": (releases.release_submit, "releases.change_release", None),
    "approve": (releases.release_approve, None, DecisionInput),
    "reject": (releases.release_reject, None, DecisionInput),
    "cancel": (releases.release_cancel, "releases.change_release", CommentInput),
    "build": (releases.release_build_request, "releases.change_release", None),
    "promote": (promotion.release_promote, "releases.change_release", PromoteInput),
    "complete": (promotion.release_complete, "releases.change_release", None),
    "rollback": (_rollback, "releases.change_release", CommentInput),
}


@login_required
@require_POST
def release_action(request: HttpRequest, release_id: int, action: str) -> HttpResponse:
    if action not in RELEASE_ACTIONS:
        raise Http404(f"No release action {action!r}.")
    service, perm, input_class = RELEASE_ACTIONS[action]

    def act() -> Release:
        if perm:
            require(request, perm)
        data = valid(input_class, request) if input_class else {}
        if action == "reject":
            data.pop("override_reason", None)
        return service(release=releases.get_release(release_id), actor=request.user, **data)

    _, error = attempt(act)
    if error:
        ctx, missing = attempt(lambda: _release_context(request, release_id))
        return page(request, "console/release.html" if ctx else "console/error.html", ctx or {}, error)
    return redirect("console:release", release_id=release_id)


# --- endpoints, audit ------------------------------------------------------------------------

@login_required
def endpoints(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":  # "check now": the API's GET ?refresh=1
        attempt(lambda: promotion.check_endpoint_health(promotion.get_endpoint(request.POST.get("endpoint", ""))))
        return redirect("console:endpoints")
    return render(request, "console/endpoints.html", selectors.endpoints_page())


@login_required
@require_GET
def audit(request: HttpRequest) -> HttpResponse:
    params = {k: request.GET.get(k, "").strip() for k in ("model", "action", "actor", "object_type")}
    page_obj, rows = selectors.audit_page(**params, page=request.GET.get("page"))
    return render(request, "console/audit.html", {"page": page_obj, "rows": rows, "params": params})
