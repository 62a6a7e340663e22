"""Reads for the console pages. Each returns what one page shows, in a fixed number of queries
whatever the list sizes (tests/console/test_query_counts.py holds them to it)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Page, Paginator
from django.db.models import Count, Max, OuterRef, Prefetch, Q, QuerySet, Subquery

from integrations import tokens, webhooks
from integrations.models import WebhookDelivery, WebhookSubscription
from metrics.models import VersionMetrics
from optimization.models import OptimizationJob
from registry.models import AuditEvent, Dataset, ModelAlias, ModelVersion, RegisteredModel, Tag
from releases.models import Endpoint, Environment, Promotion, Release

PAGE_SIZE = 25
LIVE_STATES = (Release.State.LIVE, Release.State.CANARY)
LINEAGE_LIMIT = 40  # the graph draws the newest versions (and their parents); the table pages the rest


def paginate(items: Any, page: Any, per_page: int = PAGE_SIZE) -> Page:
    return Paginator(items, per_page).get_page(page)


# --- metrics ---------------------------------------------------------------------------------

def metrics_prefetch() -> Prefetch:
    return Prefetch("metrics", queryset=VersionMetrics.objects.order_by("-created_at").only(
        "id", "version_id", "eval_dataset_id", "reference_id", "metrics", "created_at"))


def primary_metrics(version: ModelVersion) -> dict[str, Any]:
    """The version's newest measurement from prefetched ``metrics`` ({} if never measured).
    A variant's run (which has a reference, hence ratios) is preferred over a plain one."""
    runs = list(version.metrics.all())
    with_ref = [r for r in runs if r.reference_id]
    chosen = (with_ref or runs or [None])[0]
    return dict(chosen.metrics) if chosen else {}


def technique_of(version: ModelVersion) -> str:
    recipe = (version.metadata or {}).get("recipe") if isinstance(version.metadata, dict) else None
    if isinstance(recipe, dict):
        if "pipeline" in recipe and isinstance(recipe["pipeline"], list):
            return "+".join(str(s.get("technique", "?")) for s in recipe["pipeline"] if isinstance(s, dict))
        return str(recipe.get("technique") or recipe.get("pipeline") or version.source)
    return version.source


# --- models ----------------------------------------------------------------------------------

@dataclass
class ModelRow:
    model: RegisteredModel
    latest: int | None
    num_versions: int
    live: dict[str, list[int]] = field(default_factory=dict)  # environment -> version numbers


def models_page(*, q: str = "", task: str = "", tag: str = "", page: Any = 1) -> tuple[Page, list[ModelRow]]:
    models = (RegisteredModel.objects
              .prefetch_related("tags", Prefetch("aliases", queryset=ModelAlias.objects.select_related("version")
                                                 .order_by("name")))
              .order_by("name"))
    if q:
        models = models.filter(Q(name__icontains=q) | Q(description__icontains=q))
    if task:
        models = models.filter(task=task)
    if tag:
        models = models.filter(tags__name=tag)
    page_obj = paginate(models, page)
    # latest_version is kept by registering; numbers are dense and versions never deleted, so it
    # is also the count: no aggregate over every version of every model.
    rows = [ModelRow(m, m.latest_version, m.latest_version or 0) for m in page_obj.object_list]
    live = _live_by_model([r.model.pk for r in rows])
    for row in rows:
        row.live = live.get(row.model.pk, {})
    return page_obj, rows


def _live_by_model(model_ids: list[int]) -> dict[int, dict[str, list[int]]]:
    out: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for model_id, env, number in (Release.objects.filter(version__model_id__in=model_ids, state__in=LIVE_STATES)
                                  .values_list("version__model_id", "environment__name", "version__number")):
        out[model_id][env].append(number)
    return {k: dict(v) for k, v in out.items()}


def filter_choices() -> dict[str, Any]:
    return {"tasks": RegisteredModel.Task.values, "tags": list(Tag.objects.filter(models__isnull=False)
                                                               .values_list("name", flat=True).distinct())}


# --- one model -------------------------------------------------------------------------------

@dataclass
class VersionRow:
    version: ModelVersion
    metrics: dict[str, Any]
    technique: str
    aliases: list[str]
    releases: list[Release]


def versions_qs(model: RegisteredModel) -> QuerySet[ModelVersion]:
    return (ModelVersion.objects.filter(model=model).select_related("parent")
            .prefetch_related("aliases", metrics_prefetch(),
                              Prefetch("releases", queryset=Release.objects.select_related("environment")
                                       .order_by("-created_at")))
            .order_by("-number"))


def version_rows(versions: list[ModelVersion]) -> list[VersionRow]:
    return [VersionRow(v, primary_metrics(v), technique_of(v), [a.name for a in v.aliases.all()],
                       list(v.releases.all())) for v in versions]


def model_page(model: RegisteredModel, *, page: Any = 1) -> dict[str, Any]:
    page_obj = paginate(versions_qs(model), page)
    rows = version_rows(list(page_obj.object_list))
    return {
        "model": model, "page": page_obj, "rows": rows,
        "lineage": lineage_versions(model),
        "datasets": list(Dataset.objects.filter(model=model).select_related("checked_against").order_by("-created_at")[:50]),
        "aliases": list(ModelAlias.objects.filter(model=model).select_related("version", "updated_by")),
        "live": _live_by_model([model.pk]).get(model.pk, {}),
        "environments": list(Environment.objects.order_by("name")),
        "ready_numbers": ready_numbers(model, limit=20),
        "jobs": list(OptimizationJob.objects.filter(source__model=model).select_related("source", "variant")
                     .order_by("-created_at")[:10]),
    }


def ready_numbers(model: RegisteredModel, *, limit: int = 200) -> list[int]:
    """Numbers of the newest ready versions, for version pickers (older ones can be typed)."""
    return list(ModelVersion.objects.filter(model=model, status=ModelVersion.Status.READY)
                .order_by("-number").values_list("number", flat=True)[:limit])


def lineage_versions(model: RegisteredModel) -> list[ModelVersion]:
    """The newest LINEAGE_LIMIT versions plus the parents they point at (2 queries + metrics)."""
    fields = ("id", "model_id", "number", "parent_id", "source", "metadata", "artifact_size")
    newest = list(ModelVersion.objects.filter(model=model).order_by("-number").only(*fields)
                  .prefetch_related(metrics_prefetch())[:LINEAGE_LIMIT])
    have = {v.pk for v in newest}
    missing = {v.parent_id for v in newest if v.parent_id and v.parent_id not in have}
    parents = (list(ModelVersion.objects.filter(pk__in=missing).only(*fields).prefetch_related(metrics_prefetch()))
               if missing else [])
    return sorted(newest + parents, key=lambda v: v.number)


# --- compare ---------------------------------------------------------------------------------

def default_compare_numbers(model: RegisteredModel) -> list[int]:
    """A parent and its variants: the newest version that has variants (else the newest two)."""
    parent = (ModelVersion.objects.filter(model=model, variants__isnull=False).order_by("-number")
              .values_list("pk", "number").first())
    if parent:
        kids = list(ModelVersion.objects.filter(parent_id=parent[0]).order_by("number")
                    .values_list("number", flat=True)[:20])
        return [parent[1], *kids]
    return sorted(ModelVersion.objects.filter(model=model).order_by("-number").values_list("number", flat=True)[:2])


def compare_versions(model: RegisteredModel, numbers: list[int]) -> list[ModelVersion]:
    return list(ModelVersion.objects.filter(model=model, number__in=numbers[:20]).select_related("parent")
                .prefetch_related("tags", metrics_prefetch()).order_by("number"))


def auto_jobs(versions: list[ModelVersion]) -> list[OptimizationJob]:
    """Auto-compression jobs run on these versions, whose candidates the compare page lists."""
    return list(OptimizationJob.objects.filter(source__in=versions, recipe__technique="auto")
                .exclude(candidates=[]).select_related("source", "variant").order_by("-created_at")[:5])


# --- releases --------------------------------------------------------------------------------

def releases_qs() -> QuerySet[Release]:
    return Release.objects.select_related("version__model", "environment", "requester")


def awaiting_decision(user: AbstractBaseUser) -> QuerySet[Release]:
    """Pending releases this user may decide: needs the approve permission, and under the
    four-eyes rule (always in production) not their own requests."""
    if not user.is_authenticated or not user.has_perm("releases.approve_release"):
        return Release.objects.none()
    own_blocked = Q(requester=user) & (Q(environment__four_eyes=True) | Q(environment__name="production"))
    return releases_qs().filter(state=Release.State.PENDING_APPROVAL).exclude(own_blocked)


def release_page(release: Release) -> dict[str, Any]:
    approvals = list(release.approvals.select_related("actor"))
    promotions = list(release.promotions.select_related("endpoint").order_by("created_at"))
    events = group_steps(list(AuditEvent.objects.filter(object_type=Release._meta.label_lower,
                                                        object_id=str(release.pk))
                              .select_related("actor").order_by("-created_at", "-id")[:200]))
    live = (releases_qs().filter(environment=release.environment, version__model=release.version.model_id,
                                 state=Release.State.LIVE).exclude(pk=release.pk).order_by("-updated_at").first())
    # Compared with: what is live now, else (this release itself being live, or gone) the
    # baseline its gates were evaluated against.
    other = live.version_id if live else release.baseline_id
    versions = {v.pk: v for v in ModelVersion.objects.filter(pk__in=[release.version_id, other])
                .prefetch_related(metrics_prefetch())}
    return {
        "release": release, "approvals": approvals, "promotions": promotions, "events": events,
        "live_release": live, "mine": versions[release.version_id], "theirs": versions.get(other),
        "endpoints": list(Endpoint.objects.filter(environment=release.environment)),
    }


# --- endpoints and audit ---------------------------------------------------------------------

def endpoints_page() -> dict[str, Any]:
    return {
        "endpoints": list(Endpoint.objects.select_related("environment")),
        "promotions": list(Promotion.objects.select_related("release__version__model", "endpoint")
                           .order_by("-created_at")[:20]),
    }


@dataclass
class AuditRow:
    event: AuditEvent
    steps: list[AuditEvent] = field(default_factory=list)  # promotion steps grouped under it


def audit_page(*, model: str = "", action: str = "", actor: str = "", object_type: str = "",
               page: Any = 1) -> tuple[Page, list[AuditRow]]:
    events = AuditEvent.objects.select_related("actor", "model", "version").order_by("-created_at", "-id")
    if model:
        events = events.filter(model__name=model)
    if action:
        events = events.filter(action__startswith=action)
    if actor:
        events = events.filter(actor__username=actor)
    if object_type:
        events = events.filter(object_type__endswith=object_type)  # "release" or "releases.release"
    page_obj = paginate(events, page, 50)
    return page_obj, group_steps(list(page_obj.object_list))


def group_steps(events: list[AuditEvent]) -> list[AuditRow]:
    """Newest first; a run of promotion steps of one release folds under the event that follows
    it in time (the promotion request or the live/fail event above it in the list)."""
    rows: list[AuditRow] = []
    for event in events:
        prev = rows[-1] if rows else None
        if (event.action == "release.promotion_step" and prev is not None
                and prev.event.object_type == event.object_type and prev.event.object_id == event.object_id):
            prev.steps.insert(0, event)
        else:
            rows.append(AuditRow(event))
    return rows


# --- API tokens and webhooks (machine access) ------------------------------------------------

def tokens_page(user: AbstractBaseUser, *, page: Any = 1) -> Page:
    """The tokens the API lists for this user (``integrations.tokens.tokens_visible_to``: own,
    plus every service account's for whoever manages them), newest first, revoked ones included."""
    return paginate(tokens.tokens_visible_to(user).select_related("user__service_account"), page)


def service_accounts(user: AbstractBaseUser) -> list[AbstractBaseUser]:
    """The users this user may create tokens for besides themself (empty without the permission)."""
    if not user.has_perm("integrations.change_serviceaccount"):
        return []
    return list(get_user_model().objects.filter(service_account__isnull=False).order_by("username"))


def webhooks_page(user: AbstractBaseUser, *, page: Any = 1) -> Page:
    """The subscriptions the API lists for this user, each annotated with its newest delivery
    (``last_event``, ``last_status``, ``last_code``, ``last_at``; None when nothing was sent)."""
    newest = WebhookDelivery.objects.filter(subscription=OuterRef("pk")).order_by("-pk")
    subs = webhooks.subscriptions_visible_to(user).annotate(
        **{f"last_{name}": Subquery(newest.values(column)[:1])
           for name, column in (("event", "event"), ("status", "status"), ("code", "response_code"),
                                ("at", "created_at"))})
    return paginate(subs, page)


def deliveries_page(subscription: WebhookSubscription, *, status: str = "", page: Any = 1) -> Page:
    """The delivery log of one subscription, newest first, as the API's ``/deliveries/``."""
    return paginate(webhooks.deliveries_of(subscription, status), page)
