"""Admin for the registry. Every write goes through registry.services, as the API's do."""
from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from registry import jsonlimits, services
from registry.errors import ModelyardError
from registry.models import AuditEvent, Dataset, ModelAlias, ModelVersion, RegisteredModel, Tag
from registry.uploads import StagedFile


def _tag_names(raw: str) -> list[str]:
    return [t.strip() for t in raw.split(",") if t.strip()]


def _pretty_json(value: Any) -> str:
    return format_html("<pre style='margin:0'>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


# --- JSON a user wrote: limited on the way in, never decoded deep on the way out ---------------
# Metadata nested hundreds of levels deep was accepted before registry.jsonlimits existed; decoding
# or rendering it inside a template (already deep in the stack) raised RecursionError, so every
# page that loaded such a version -- its change page, and the add pages listing versions -- was a
# 500. Pages here defer user JSON in their querysets and read it through ``jsonlimits.stored_json``.
USER_JSON = ("metadata",)
LIMITS_HELP = (f"A JSON object nested at most {jsonlimits.MAX_DEPTH} levels and at most "
               f"{jsonlimits.MAX_VALUE_BYTES // 1024} KiB.")
LEGACY_HELP = (f"The stored metadata nests deeper than {jsonlimits.MAX_DEPTH} levels (it was written before "
               "that limit) and is not shown. Leave this empty to keep it, or enter new metadata to replace it.")


def metadata_field(**kwargs: Any) -> forms.JSONField:
    """The metadata input: too deep or too long text is refused before it is parsed."""
    return forms.JSONField(required=False, label="Metadata", decoder=jsonlimits.LimitedDecoder, help_text=LIMITS_HELP,
                           error_messages={"invalid": f"Enter valid JSON. {LIMITS_HELP}"}, **kwargs)


def _safe_json_display(obj: Model, field: str) -> str:
    value, ok = jsonlimits.stored_json(obj, field)
    if not ok:
        return f"(nested deeper than {jsonlimits.MAX_DEPTH} levels: not shown)"
    return _pretty_json(value)


def versions_for_choices() -> QuerySet[ModelVersion]:
    """Versions for a select box: their names only, never their user JSON."""
    return ModelVersion.objects.select_related("model").defer(*USER_JSON)


class ServiceForm(forms.ModelForm):
    """A ModelForm whose save is done by a service call in ``clean()``, so a domain error
    (bad archive, Lambda layer, wrong shapes) shows on the form instead of a 500."""

    request: HttpRequest
    result: Any = None

    def run_service(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not self.errors:
            try:
                self.result = self.run_service()
            except ModelyardError as exc:
                raise forms.ValidationError(exc.message, code=exc.code) from exc
        return data


class ServiceAdminMixin:
    """Plumbing: give forms the request, and let the service's object stand in for form.save()."""

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, **kwargs)  # type: ignore[misc]
        form.request = request
        return form

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        if isinstance(form, ServiceForm) and form.result is not None:
            return form.result
        return super().save_form(request, form, change)  # type: ignore[misc]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Writes already happened in the service; nothing to save here."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Tags are set by the service; inlines here are read-only, so nothing is committed
        (save(commit=False) only records what the admin's change message asks for)."""
        for formset in formsets:
            formset.save(commit=False)


# --- Registered models -----------------------------------------------------------------------

class ModelForm(ServiceForm):
    tag_names = forms.CharField(required=False, label="Tags", help_text="Comma-separated.")

    class Meta:
        model = RegisteredModel
        fields = ["name", "description", "task"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["tag_names"].initial = ", ".join(t.name for t in self.instance.tags.all())
            self.fields["name"].disabled = True

    def _post_clean(self) -> None:
        pass  # the service validates (full_clean) and reports through clean()

    def run_service(self) -> RegisteredModel:
        data = self.cleaned_data
        tags = _tag_names(data.get("tag_names", ""))
        if self.instance.pk:
            return services.model_update(model=RegisteredModel.objects.get(pk=self.instance.pk),
                                         actor=self.request.user, description=data["description"],
                                         task=data["task"], tags=tags)
        return services.model_create(name=data["name"], owner=self.request.user, description=data["description"],
                                     task=data["task"], tags=tags)


class AliasInline(admin.TabularInline):
    model = ModelAlias
    fields = ["name", "version", "updated_by", "updated_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(ServiceAdminMixin, admin.ModelAdmin):
    form = ModelForm
    list_display = ["name", "task", "owner", "version_count", "updated_at"]
    list_filter = ["task", "tags"]
    search_fields = ["name", "description"]
    fieldsets = [(None, {"fields": ["name", "task", "description", "tag_names"]})]
    inlines = [AliasInline]

    @admin.display(description="Versions")
    def version_count(self, obj: RegisteredModel) -> int:
        return obj.versions.count()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # versions are permanent records; models holding them are too


# --- Versions --------------------------------------------------------------------------------

class VersionAddForm(ServiceForm):
    artifact = forms.FileField(help_text="SavedModel .zip/.tar.gz, Keras .keras/.h5, or .tflite")
    metadata_json = metadata_field(initial=dict)
    tag_names = forms.CharField(required=False, label="Tags", help_text="Comma-separated.")

    class Meta:
        model = ModelVersion
        fields = ["model", "description", "parent"]

    def _post_clean(self) -> None:
        pass

    def run_service(self) -> ModelVersion:
        data = self.cleaned_data
        return services.version_create(
            model=data["model"], staged=StagedFile.from_upload(data["artifact"]), actor=self.request.user,
            description=data.get("description", ""), metadata=data.get("metadata_json") or {},
            tags=_tag_names(data.get("tag_names", "")), parent=data.get("parent"),
        )


class VersionChangeForm(ServiceForm):
    metadata_json = metadata_field()
    tag_names = forms.CharField(required=False, label="Tags", help_text="Comma-separated.")

    class Meta:
        model = ModelVersion
        fields = ["description"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        metadata, self.metadata_shown = jsonlimits.stored_json(self.instance, "metadata")
        self.fields["metadata_json"].initial = metadata
        if not self.metadata_shown:
            self.fields["metadata_json"].help_text = LEGACY_HELP
        self.fields["tag_names"].initial = ", ".join(t.name for t in self.instance.tags.all())

    def _post_clean(self) -> None:
        pass

    def run_service(self) -> ModelVersion:
        data = self.cleaned_data
        metadata = data.get("metadata_json")
        if metadata is None:  # empty: clear it, unless it is a stored value too deep to show (keep that)
            metadata = {} if self.metadata_shown else None
        return services.version_update(
            version=ModelVersion.objects.defer(*USER_JSON).get(pk=self.instance.pk), actor=self.request.user,
            description=data.get("description", ""), metadata=metadata,
            tags=_tag_names(data.get("tag_names", "")),
        )


IMMUTABLE_VERSION_FIELDS = ["model", "number", "format", "artifact_sha256", "artifact_size", "artifact_filename",
                            "signature_display", "framework_display", "lineage", "source", "status",
                            "created_by", "created_at"]


@admin.register(ModelVersion)
class ModelVersionAdmin(ServiceAdminMixin, admin.ModelAdmin):
    list_display = ["__str__", "format", "status", "source", "parent_link", "size_display", "created_at"]
    list_filter = ["format", "status", "source", "model", "tags"]
    search_fields = ["model__name", "artifact_sha256", "description"]
    list_select_related = ["model", "parent__model"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelVersion]:
        return (super().get_queryset(request).select_related("model", "parent__model", "created_by")
                .defer(*USER_JSON, *(f"parent__{f}" for f in USER_JSON)))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "parent":
            kwargs["queryset"] = versions_for_choices()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        kwargs["form"] = VersionChangeForm if obj else VersionAddForm
        kwargs["fields"] = None
        return super().get_form(request, obj, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return [(None, {"fields": ["model", "artifact", "parent", "description", "metadata_json", "tag_names"]})]
        return [
            ("Artifact (immutable)", {"fields": ["model", "number", "format", "artifact_sha256", "artifact_size",
                                                 "artifact_filename", "download"]}),
            ("Serving signature", {"fields": ["signature_display", "framework_display"]}),
            ("Lineage", {"fields": ["lineage", "source", "status", "created_by", "created_at"]}),
            ("Editable", {"fields": ["description", "metadata_json", "tag_names"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*IMMUTABLE_VERSION_FIELDS, "download"] if obj else []

    @admin.display(description="Parent")
    def parent_link(self, obj: ModelVersion) -> str:
        if not obj.parent_id:
            return "—"
        return format_html('<a href="{}">v{}</a>', reverse("admin:registry_modelversion_change",
                                                          args=[obj.parent_id]), obj.parent.number)

    @admin.display(description="Lineage")
    def lineage(self, obj: ModelVersion) -> str:
        chain = [obj.parent] if obj.parent_id else []
        variants = list(obj.variants.only("pk", "number"))
        parent = format_html_join(" ", '<a href="{}">parent v{}</a>',
                                  ((reverse("admin:registry_modelversion_change", args=[p.pk]), p.number)
                                   for p in chain))
        children = format_html_join(" ", '<a href="{}">variant v{}</a>',
                                    ((reverse("admin:registry_modelversion_change", args=[v.pk]), v.number)
                                     for v in variants))
        return format_html("{} {}", parent, children) if (chain or variants) else "—"

    @admin.display(description="Size")
    def size_display(self, obj: ModelVersion) -> str:
        return f"{obj.artifact_size / 1024:.1f} KiB"

    @admin.display(description="Signature")
    def signature_display(self, obj: ModelVersion) -> str:
        sig = obj.signature or {}
        rows = [(io, t["name"], t["dtype"], "×".join("?" if d is None else str(d) for d in (t.get("shape") or [])))
                for io in ("inputs", "outputs") for t in sig.get(io, [])]
        table = format_html_join("", "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>", rows)
        return format_html("<p>{} — method <code>{}</code></p><table><tr><th>io</th><th>name</th><th>dtype</th>"
                           "<th>shape</th></tr>{}</table>", sig.get("name", ""), sig.get("method", ""), table)

    @admin.display(description="Framework")
    def framework_display(self, obj: ModelVersion) -> str:
        return _pretty_json(obj.framework)

    @admin.display(description="Download")
    def download(self, obj: ModelVersion) -> str:
        url = reverse("version-artifact", kwargs={"name": obj.model.name, "version": obj.number})
        return format_html('<a href="{}">{}</a>', url, obj.artifact_filename)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Datasets --------------------------------------------------------------------------------

class DatasetAddForm(ServiceForm):
    file = forms.FileField(help_text=".npz with array x and optional y (no pickled objects)")

    class Meta:
        model = Dataset
        fields = ["model", "name", "role", "checked_against"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["name"].required = False
        self.fields["checked_against"].label = "Check against version (default: latest)"

    def _post_clean(self) -> None:
        pass

    def run_service(self) -> Dataset:
        data = self.cleaned_data
        return services.dataset_create(model=data["model"], staged=StagedFile.from_upload(data["file"]),
                                       role=data["role"], actor=self.request.user,
                                       check_version=data.get("checked_against"), name=data.get("name") or "")


@admin.register(Dataset)
class DatasetAdmin(ServiceAdminMixin, admin.ModelAdmin):
    list_display = ["name", "model", "role", "num_examples", "size_bytes", "created_at"]
    list_filter = ["role", "model"]
    search_fields = ["name", "model__name", "sha256"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Dataset]:
        return (super().get_queryset(request).select_related("model", "checked_against__model", "created_by")
                .defer(*(f"checked_against__{f}" for f in USER_JSON)))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "checked_against":
            kwargs["queryset"] = versions_for_choices()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = DatasetAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["model", "file", "name", "role", "checked_against"]
        return ["model", "name", "role", "sha256", "size_bytes", "arrays_display", "checked_against", "created_by",
                "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_fields(request, obj) if obj else []

    @admin.display(description="Arrays")
    def arrays_display(self, obj: Dataset) -> str:
        return _pretty_json(obj.arrays)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Audit (read-only) -----------------------------------------------------------------------

class NoSaveButtonsMixin:
    """For records whose every field is read-only but whose admin keeps actions (which need the
    change permission): the change form shows no Save buttons that could not save anything."""

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> Any:
        extra_context = {**(extra_context or {}), "show_save": False, "show_save_and_continue": False,
                         "show_save_and_add_another": False, "show_delete": False}
        return super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written only by services (audit events, measurements): viewable, never editable."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "action", "object_repr", "model", "version"]
    list_filter = ["action", "object_type", "model"]
    search_fields = ["object_repr", "comment", "object_id"]
    list_select_related = ["actor", "model", "version__model"]
    fields = ["created_at", "actor", "action", "object_type", "object_id", "object_repr", "model", "version",
              "before_display", "after_display", "comment"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        # before/after may hold a version's metadata (see USER_JSON): read via jsonlimits.stored_json.
        return (super().get_queryset(request).select_related(*self.list_select_related)
                .defer("before", "after", *(f"version__{f}" for f in USER_JSON)))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.fields

    @admin.display(description="Before")
    def before_display(self, obj: AuditEvent) -> str:
        return _safe_json_display(obj, "before")

    @admin.display(description="After")
    def after_display(self, obj: AuditEvent) -> str:
        return _safe_json_display(obj, "after")


admin.site.register(Tag)
admin.site.site_header = "Modelyard"
