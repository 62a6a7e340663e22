"""Admin: releases with their gates and audit trail; approve/reject actions call the same
services as the API (same permission and four-eyes rules)."""
from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.html import format_html, format_html_join

from registry.admin import NoSaveButtonsMixin
from registry.errors import ModelyardError
from registry.models import AuditEvent
from releases import promotion, services
from releases.models import Approval, Endpoint, Environment, Promotion, Release, ReleasePolicy


class DecisionForm(forms.Form):
    comment = forms.CharField(widget=forms.Textarea, required=True)
    override_reason = forms.CharField(widget=forms.Textarea, required=False,
                                      help_text="Required to approve despite failing gates.")


class ApprovalInline(admin.TabularInline):
    model = Approval
    fields = ["actor", "decision", "comment", "override_reason", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Release)
class ReleaseAdmin(NoSaveButtonsMixin, admin.ModelAdmin):
    list_display = ["id", "version", "environment", "state", "gates_badge", "requester", "image_digest", "created_at"]
    list_filter = ["state", "environment", "version__model"]
    list_select_related = ["version__model", "environment", "requester"]
    search_fields = ["version__model__name", "notes", "image_digest"]
    inlines = [ApprovalInline]
    actions = ["approve", "reject", "submit", "build", "promote", "promote_canary", "complete", "rollback"]
    fieldsets = [
        (None, {"fields": ["version", "environment", "state", "requester", "notes"]}),
        ("Gates", {"fields": ["gates_table", "gates_passed", "baseline", "override_reason"]}),
        ("Image", {"fields": ["image_repository", "image_tag", "image_id", "image_digest", "image_size",
                              "context_sha256", "build_log"]}),
        ("Failure", {"fields": ["failure_step", "failure_reason", "retryable"]}),
        ("Audit trail", {"fields": ["audit_trail"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # releases are requested through the API, which runs release_create

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Gates")
    def gates_badge(self, release: Release) -> str:
        if release.gates_passed is None:
            return "—"
        return "pass" if release.gates_passed else "FAIL"

    @admin.display(description="Gate results")
    def gates_table(self, release: Release) -> str:
        rows = ((g["gate"], "pass" if g["passed"] else "FAIL", g["threshold"], g["value"], g["message"])
                for g in release.gates)
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html("<table><tr><th>gate</th><th>result</th><th>threshold</th><th>value</th><th>why</th>"
                           "</tr>{}</table>", body)

    @admin.display(description="Audit trail")
    def audit_trail(self, release: Release) -> str:
        events = AuditEvent.objects.filter(object_type="releases.release", object_id=str(release.pk)).order_by("id")
        return format_html("<ol>{}</ol>", format_html_join(
            "", "<li>{} — {} by {} {}</li>",
            ((e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.action, e.actor or "system", e.comment)
             for e in events)))

    def _decide(self, request: HttpRequest, queryset: QuerySet[Release], decision: str) -> HttpResponse | None:
        if "apply" in request.POST:
            form = DecisionForm(request.POST)
            if form.is_valid():
                for release in queryset:
                    try:
                        if decision == "approve":
                            services.release_approve(release=release, actor=request.user,
                                                     comment=form.cleaned_data["comment"],
                                                     override_reason=form.cleaned_data["override_reason"])
                        else:
                            services.release_reject(release=release, actor=request.user,
                                                    comment=form.cleaned_data["comment"])
                        self.message_user(request, f"Release {release.pk}: {decision}d.")
                    except ModelyardError as exc:
                        self.message_user(request, f"Release {release.pk}: {exc.message}", messages.ERROR)
                return None
        else:
            form = DecisionForm()
        return render(request, "releases/decide.html", {
            "form": form, "releases": queryset, "decision": decision, "action": f"{decision}",
            "opts": self.model._meta, "title": f"{decision.title()} releases"})

    @admin.action(description="Approve selected releases (with a comment)")
    def approve(self, request: HttpRequest, queryset: QuerySet[Release]) -> HttpResponse | None:
        return self._decide(request, queryset, "approve")

    @admin.action(description="Reject selected releases (with a comment)")
    def reject(self, request: HttpRequest, queryset: QuerySet[Release]) -> HttpResponse | None:
        return self._decide(request, queryset, "reject")


    def _each(self, request: HttpRequest, queryset: QuerySet[Release], verb: str, call: Any) -> None:
        """Run one service per selected release; report each outcome (rules are the services').
        ``verb`` may name the state the service left the release in: ``{state}``."""
        for release in queryset:
            try:
                done = call(release)
                self.message_user(request, f"Release {release.pk}: {verb.format(state=done.get_state_display().lower())}.")
            except ModelyardError as exc:
                self.message_user(request, f"Release {release.pk}: {exc.message}", messages.ERROR)

    @admin.action(description="Submit selected releases (evaluate gates)", permissions=["change"])
    def submit(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        self._each(request, queryset, "submitted", lambda r: services.release_submit(release=r, actor=request.user))

    @admin.action(description="Build the image of selected releases (retry)", permissions=["change"])
    def build(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        self._each(request, queryset, "build queued",
                   lambda r: services.release_build_request(release=r, actor=request.user))

    @admin.action(description="Promote selected releases to their environment's endpoints", permissions=["change"])
    def promote(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        self._each(request, queryset, "promotion queued",
                   lambda r: promotion.release_promote_request(release=r, actor=request.user))

    @admin.action(description="Promote selected releases as canary only", permissions=["change"])
    def promote_canary(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        self._each(request, queryset, "canary promotion queued",
                   lambda r: promotion.release_promote_request(release=r, actor=request.user, canary=True))

    @admin.action(description="Complete selected canaries (move stable)", permissions=["change"])
    def complete(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        self._each(request, queryset, "completed", lambda r: promotion.release_complete(release=r, actor=request.user))

    @admin.action(description="Roll back selected releases", permissions=["change"])
    def rollback(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        # rolled_back, or rolling_back while the deploy worker stages the previous version again
        self._each(request, queryset, "{state}", lambda r: promotion.release_rollback(release=r, actor=request.user))


class PromotionInline(admin.TabularInline):
    model = Promotion
    fields = ["release", "canary", "state", "previous_version", "error", "created_at", "finished_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EndpointForm(forms.ModelForm):
    """Runs the service's checks (operator policy: roots, Docker hosts, profile schema) so a
    refusal shows on its field instead of failing in save_model."""

    class Meta:
        model = Endpoint
        fields = ["name", "environment", *[f for f in promotion.ENDPOINT_FIELDS if f != "environment"]]

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        candidate = copy.copy(self.instance)  # the form's values; the checks store resolved paths on it
        try:
            promotion.validate_endpoint(candidate)
        except ModelyardError as exc:
            field = (exc.details or {}).get("field", "").split(".")[0].split("[")[0]
            self.add_error(field if field in self.fields else None, exc.message)


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    """Adding or changing an endpoint needs releases.operate_endpoints and goes through the same
    services as the API (endpoint_create / endpoint_update)."""

    form = EndpointForm
    list_display = ["name", "environment", "kind", "grpc_target", "reachable", "labels", "health_checked_at"]
    list_filter = ["environment", "kind", "reachable"]
    readonly_fields = ["reachable", "health_display", "health_error", "health_checked_at", "active_container_id",
                       "previous_container_id"]
    exclude = ["health"]  # written only by health checks; shown read-only as health_display
    inlines = [PromotionInline]
    actions = ["check_health"]

    def _operator(self, request: HttpRequest) -> bool:
        return request.user.has_perm("releases.operate_endpoints")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._operator(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._operator(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._operator(request) and super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*self.readonly_fields, "name"] if obj is not None else list(self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: Endpoint, form: Any, change: bool) -> None:
        fields = {f: form.cleaned_data[f] for f in promotion.ENDPOINT_FIELDS if f in form.cleaned_data}
        fields["environment"] = fields["environment"].name
        if change:
            saved = promotion.endpoint_update(actor=request.user, endpoint=obj, **fields)
        else:
            saved = promotion.endpoint_create(actor=request.user, name=form.cleaned_data["name"], **fields)
        obj.pk = saved.pk
        obj.refresh_from_db()

    @admin.display(description="Labels")
    def labels(self, endpoint: Endpoint) -> str:
        return "; ".join(f"{m}: " + ", ".join(f"{k}→v{v}" for k, v in sorted(h.get("labels", {}).items()))
                         for m, h in sorted(endpoint.health.items())) or "—"

    @admin.display(description="What each label serves")
    def health_display(self, endpoint: Endpoint) -> str:
        rows = ((m, ", ".join(f"{k}→v{v}" for k, v in sorted(h.get("labels", {}).items())),
                 ", ".join(f"v{v}: {st}" for v, st in sorted(h.get("versions", {}).items())))
                for m, h in sorted(endpoint.health.items()))
        return format_html("<table><tr><th>model</th><th>labels</th><th>versions</th></tr>{}</table>",
                           format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows))

    @admin.action(description="Check health now")
    def check_health(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        for endpoint in queryset:
            endpoint = promotion.check_endpoint_health(endpoint)
            self.message_user(request, f"{endpoint.name}: {'reachable' if endpoint.reachable else 'DOWN'} "
                                       f"{endpoint.health_error}")


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    list_display = ["name", "four_eyes", "auto_approve", "auto_promote", "max_accuracy_drop", "prefer_tflite"]


@admin.register(ReleasePolicy)
class ReleasePolicyAdmin(admin.ModelAdmin):
    list_display = ["model", "environment", "max_accuracy_drop", "max_p95_latency_ms", "min_size_reduction"]
