"""API input validators and output serializers (kept apart: what comes in is not what goes out)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.validators import RegexValidator
from django.db.models import CharField, Manager, QuerySet, Value
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from registry import extensions, jsonlimits
from registry.models import (
    MAX_TAG_LENGTH, MAX_TAGS, AuditEvent, Dataset, ModelAlias, ModelVersion, RegisteredModel, slug_validator,
    username_of,
)

TAGS_HELP = (f"At most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters: lowercase letters, digits, "
             "'-' and '_' (stored lowercased). Multipart forms may also send one comma-separated string.")


TAG_CHARS = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", "Tags use lowercase letters, digits, '-' and '_' "
                           "(upper case is lowered), starting with a letter or digit.")


class TagListField(serializers.ListField):
    """Tags as a JSON list, or (from multipart forms and curl) a comma-separated string."""

    child = serializers.CharField(max_length=MAX_TAG_LENGTH, validators=[TAG_CHARS])

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", MAX_TAGS)
        kwargs.setdefault("help_text", TAGS_HELP)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            data = [t for t in (p.strip() for p in data.split(",")) if t]
        elif isinstance(data, list) and len(data) == 1 and isinstance(data[0], str) and "," in data[0]:
            data = [t for t in (p.strip() for p in data[0].split(",")) if t]
        return super().to_internal_value(data)


@extend_schema_field({"type": "object", "additionalProperties": {},
                      "description": f"A JSON object nested at most {jsonlimits.MAX_DEPTH} levels, at most "
                                     f"{jsonlimits.MAX_VALUE_BYTES // 1024} KiB (a JSON string in multipart forms)."})
class JSONObjectField(serializers.JSONField):
    """A JSON object, given as an object (JSON bodies) or as a JSON string (multipart forms),
    within ``registry.jsonlimits``' depth and size limits (checked before a string is parsed)."""

    default_error_messages = {"not_object": "Must be a JSON object.", "bad_json": "Not valid JSON: {error}."}

    def __init__(self, *, max_bytes: int = jsonlimits.MAX_VALUE_BYTES, **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        try:
            if isinstance(data, str):
                try:
                    data = jsonlimits.loads(data, what="The value", max_bytes=self.max_bytes)
                except json.JSONDecodeError as exc:
                    self.fail("bad_json", error=str(exc))
            if not isinstance(data, dict):
                self.fail("not_object")
            return jsonlimits.check(data, what="The value", max_bytes=self.max_bytes)
        except jsonlimits.JSONLimitError as exc:
            raise serializers.ValidationError(exc.message, code=exc.code) from None


# --- inputs ----------------------------------------------------------------------------------

class ModelCreateInput(serializers.Serializer):
    name = serializers.RegexField(slug_validator.regex, max_length=100, help_text=slug_validator.message,
                                  error_messages={"invalid": slug_validator.message})
    description = serializers.CharField(required=False, allow_blank=True, default="")
    task = serializers.ChoiceField(choices=RegisteredModel.Task.choices, default=RegisteredModel.Task.OTHER)
    tags = TagListField(required=False, default=list)


class ModelUpdateInput(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    task = serializers.ChoiceField(choices=RegisteredModel.Task.choices, required=False)
    tags = TagListField(required=False)


class VersionCreateInput(serializers.Serializer):
    artifact = serializers.FileField(allow_empty_file=False)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    metadata = JSONObjectField(required=False, default=dict)
    tags = TagListField(required=False, default=list)
    parent = serializers.IntegerField(required=False, min_value=1, help_text="Version number of the parent.")


class VersionUpdateInput(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    metadata = JSONObjectField(required=False)
    tags = TagListField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                f"Versions are immutable: only description, metadata and tags can change (not {', '.join(sorted(unknown))})."
            )
        return attrs


class AliasInput(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)


class DatasetCreateInput(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=False)
    role = serializers.ChoiceField(choices=Dataset.Role.choices)
    version = serializers.IntegerField(required=False, min_value=1,
                                       help_text="Version whose signature x is checked against (default: latest).")
    name = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")


# --- outputs ---------------------------------------------------------------------------------

@extend_schema_field({"type": "array", "items": {"type": "string"}})
class TagNamesField(serializers.Field):
    def to_representation(self, value: Any) -> list[str]:
        return [t.name for t in value.all()]


def drf_datetime(value: datetime) -> str:
    """What DRF's DateTimeField renders (ISO 8601 in the current time zone, "Z" for UTC), without
    building its field machinery for each of a page's values."""
    text = timezone.localtime(value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class _PageList(serializers.ListSerializer):
    """A page of a ``PageOutput``: what the rows show from other tables is fetched once for the
    page (``load_page``), then each row is built directly from its instance."""

    def to_representation(self, data: Any) -> list[dict[str, Any]]:
        rows = list(data.all() if isinstance(data, Manager) else data)
        self.child.load_page(rows)
        return [self.child.row(instance) for instance in rows]


# An output whose rows cost (nearly) nothing each: no per-field DRF machinery and no prefetch per
# row (Django builds querysets per instance and per prefetch). The declared fields are the schema
# (a comment, not a docstring: drf-spectacular would publish it); ``row`` returns exactly them
# (tests/registry/test_query_counts.py checks the keys).
class PageOutput(serializers.ModelSerializer):

    class Meta:
        list_serializer_class = _PageList

    def to_representation(self, instance: Any) -> dict[str, Any]:
        self.load_page([instance])
        return self.row(instance)

    def load_page(self, rows: list[Any]) -> None:
        """Attach what ``row`` reads beyond the instance's own columns, in a few queries for all rows."""

    def row(self, instance: Any) -> dict[str, Any]:
        raise NotImplementedError


def _names_by_id(pairs: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for pk, name in pairs:
        found.setdefault(pk, []).append(name)
    return {pk: sorted(names) for pk, names in found.items()}


class ModelOutput(PageOutput):
    owner = serializers.CharField(source="owner.get_username")
    tags = TagNamesField()
    latest_version = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta(PageOutput.Meta):
        model = RegisteredModel
        fields = ["name", "description", "task", "tags", "owner", "latest_version", "created_at", "updated_at"]

    def load_page(self, rows: list[RegisteredModel]) -> None:
        """Tags and owners' usernames of the whole page in two queries (owners only if not held)."""
        tags = _names_by_id(RegisteredModel.tags.through.objects.filter(registeredmodel_id__in=[m.pk for m in rows])
                            .values_list("registeredmodel_id", "tag__name"))
        owner = RegisteredModel._meta.get_field("owner")
        owners = dict(get_user_model().objects.filter(pk__in={m.owner_id for m in rows if not owner.is_cached(m)})
                      .values_list("pk", get_user_model().USERNAME_FIELD))
        for model in rows:
            model.tag_names = tags.get(model.pk, [])
            model.owner_name = owners[model.owner_id] if model.owner_id in owners else model.owner.get_username()

    def row(self, model: RegisteredModel) -> dict[str, Any]:
        return {"name": model.name, "description": model.description, "task": model.task, "tags": model.tag_names,
                "owner": model.owner_name, "latest_version": model.latest_version,
                "created_at": drf_datetime(model.created_at), "updated_at": drf_datetime(model.updated_at)}


class VersionOutput(PageOutput):
    model = serializers.CharField(source="model.name")
    version = serializers.IntegerField(source="number")
    sha256 = serializers.CharField(source="artifact_sha256")
    size_bytes = serializers.IntegerField(source="artifact_size")
    filename = serializers.CharField(source="artifact_filename")
    parent = serializers.IntegerField(source="parent.number", allow_null=True, default=None)
    tags = TagNamesField()
    aliases = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.get_username")
    metrics = serializers.SerializerMethodField(help_text="Harness measurements, one per eval dataset.")

    class Meta(PageOutput.Meta):
        model = ModelVersion
        fields = ["model", "version", "format", "sha256", "size_bytes", "filename", "signature", "framework",
                  "parent", "source", "status", "description", "metadata", "tags", "aliases", "created_by",
                  "created_at", "metrics"]

    def load_page(self, rows: list[ModelVersion]) -> None:
        """What the page shows from other tables in at most three queries, whatever its size: the
        model's name, the parent's number and the creator's username (joined on the page's ids
        only, so the page's COUNT stays a plain one; skipped for versions that hold those objects
        already), tags with aliases, and metrics. A version registered by this request comes with
        all of it (``services.version_create``): nothing is read back."""
        missing = [v.pk for v in rows if not _holds_related(v)]
        joined = {pk: rest for pk, *rest in (
            ModelVersion.objects.filter(pk__in=missing).order_by()
            .values_list("pk", "model__name", "parent__number", username_of("created_by")))} if missing else {}
        for v in rows:
            v.model_name, v.parent_number, v.created_by_name = joined.get(v.pk) or (
                v.model.name, v.parent.number if v.parent else None, v.created_by.get_username())
        pending = [v for v in rows if not hasattr(v, "metrics_rows")]
        if not pending:
            return
        ids = [v.pk for v in pending]
        names: dict[str, list[tuple[int, str]]] = {"tag": [], "alias": []}
        for pk, name, kind in _tag_and_alias_names(ids):
            names[kind].append((pk, name))
        tags, aliases = _names_by_id(names["tag"]), _names_by_id(names["alias"])
        metrics = extensions.version_field_values("metrics", ids)  # loaded by the metrics app
        for v in pending:
            v.tag_names, v.alias_names, v.metrics_rows = tags.get(v.pk, []), aliases.get(v.pk, []), metrics.get(v.pk, [])

    def row(self, v: ModelVersion) -> dict[str, Any]:
        return {"model": v.model_name, "version": v.number, "format": v.format, "sha256": v.artifact_sha256,
                "size_bytes": v.artifact_size, "filename": v.artifact_filename, "signature": v.signature,
                "framework": v.framework, "parent": v.parent_number, "source": v.source, "status": v.status,
                "description": v.description, "metadata": v.metadata, "tags": v.tag_names,
                "aliases": self.get_aliases(v), "created_by": v.created_by_name,
                "created_at": drf_datetime(v.created_at), "metrics": self.get_metrics(v)}

    def get_metrics(self, obj: ModelVersion) -> list[dict[str, Any]]:
        return obj.metrics_rows

    def get_aliases(self, obj: ModelVersion) -> list[str]:
        return obj.alias_names


def _tag_and_alias_names(ids: list[int]) -> QuerySet[Any]:
    """(version id, name, "tag" | "alias") for these versions: one round trip (UNION ALL) for two lists."""
    tags = ModelVersion.tags.through.objects.filter(modelversion_id__in=ids).values_list(
        "modelversion_id", "tag__name", Value("tag", output_field=CharField()))
    aliases = ModelAlias.objects.filter(version_id__in=ids).order_by().values_list(
        "version_id", "name", Value("alias", output_field=CharField()))
    return tags.union(aliases, all=True)


def _holds_related(version: ModelVersion) -> bool:
    return all(ModelVersion._meta.get_field(name).is_cached(version) for name in ("model", "parent", "created_by"))


# Reads model, version and updated_by from the alias's related objects: query with select_related
# (services.alias_set returns them in hand).
class AliasOutput(PageOutput):
    model = serializers.CharField(source="model.name")
    alias = serializers.CharField(source="name")
    version = serializers.IntegerField(source="version.number")
    updated_by = serializers.CharField(source="updated_by.get_username")

    class Meta(PageOutput.Meta):
        model = ModelAlias
        fields = ["model", "alias", "version", "updated_by", "updated_at"]

    def row(self, alias: ModelAlias) -> dict[str, Any]:
        return {"model": alias.model.name, "alias": alias.name, "version": alias.version.number,
                "updated_by": alias.updated_by.get_username(), "updated_at": drf_datetime(alias.updated_at)}


class DatasetOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    checked_against = serializers.IntegerField(source="checked_against.number", allow_null=True, default=None)
    created_by = serializers.CharField(source="created_by.get_username")

    class Meta:
        model = Dataset
        fields = ["id", "model", "name", "role", "sha256", "size_bytes", "arrays", "checked_against",
                  "created_by", "created_at"]


class AuditEventOutput(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.get_username", allow_null=True, default=None)
    model = serializers.CharField(source="model.name", allow_null=True, default=None)
    version = serializers.IntegerField(source="version.number", allow_null=True, default=None)

    class Meta:
        model = AuditEvent
        fields = ["id", "actor", "action", "object_type", "object_id", "object_repr", "model", "version",
                  "before", "after", "comment", "created_at"]
