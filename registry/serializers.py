"""API input validators and output serializers (kept apart: what comes in is not what goes out)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.validators import RegexValidator
from django.db.models import Manager, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
import orjson
from rest_framework import serializers

from registry import extensions, jsonlimits, sql
from registry.models import (
    MAX_TAG_LENGTH, MAX_TAGS, AuditEvent, Dataset, ModelAlias, ModelVersion, RegisteredModel, Tag, slug_validator,
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

    def load_page(self, rows: list[Any]) -> None:
        """What the page shows from other tables in at most three queries, whatever its size: the
        model's name, the parent's number and the creator's username (joined on the page's ids
        only; skipped for versions that hold those objects already, and for ``VersionRow``s, which
        were read with them), tags with aliases, and metrics. A version registered by this request
        comes with all of it (``services.version_create``): nothing is read back."""
        instances = [v for v in rows if isinstance(v, ModelVersion)]
        missing = [v.pk for v in instances if not _holds_related(v)]
        joined = {pk: rest for pk, *rest in (
            ModelVersion.objects.filter(pk__in=missing).order_by()
            .values_list("pk", "model__name", "parent__number", username_of("created_by")))} if missing else {}
        for v in instances:
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

    def row(self, v: Any) -> dict[str, Any]:
        return {"model": v.model_name, "version": v.number, "format": v.format, "sha256": v.artifact_sha256,
                "size_bytes": v.artifact_size, "filename": v.artifact_filename, "signature": v.signature,
                "framework": v.framework, "parent": v.parent_number, "source": v.source, "status": v.status,
                "description": v.description, "metadata": v.metadata, "tags": v.tag_names,
                "aliases": self.get_aliases(v), "created_by": v.created_by_name,
                "created_at": drf_datetime(v.created_at), "metrics": self.get_metrics(v)}

    def get_metrics(self, obj: Any) -> list[dict[str, Any]]:
        return obj.metrics_rows

    def get_aliases(self, obj: Any) -> list[str]:
        return obj.alias_names


class VersionRow:
    """What ``VersionOutput.row`` reads of a version, read as plain columns (``version_rows``):
    no model instance, and the JSON columns parsed by orjson rather than by the JSONField."""

    __slots__ = ("pk", "model_name", "number", "format", "artifact_sha256", "artifact_size", "artifact_filename",
                 "signature", "framework", "parent_number", "source", "status", "description", "metadata",
                 "created_by_name", "created_at", "tag_names", "alias_names", "metrics_rows")
    # The columns in the order of __slots__ up to created_at; the JSON ones as their text.
    JSON_COLUMNS = ("signature", "framework", "metadata")

    @classmethod
    def columns(cls) -> list[Any]:
        names = {"pk": "pk", "model_name": "model__name", "parent_number": "parent__number",
                 "created_by_name": username_of("created_by")}
        return [Cast(name, TextField()) if name in cls.JSON_COLUMNS else names.get(name, name)
                for name in cls.__slots__[:cls.__slots__.index("created_at") + 1]]

    def __init__(self, values: tuple[Any, ...]) -> None:
        # Unpacked by position (a loop of setattr cost as much as the query): keep in __slots__ order.
        (self.pk, self.model_name, self.number, self.format, self.artifact_sha256, self.artifact_size,
         self.artifact_filename, signature, framework, self.parent_number, self.source, self.status,
         self.description, metadata, self.created_by_name, self.created_at) = values
        self.signature, self.framework = json_value(signature), json_value(framework)
        self.metadata = json_value(metadata)


def json_value(text: str | None) -> Any:
    """A JSON column's text as the JSONField would give it (parsed by orjson, several times faster)."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN or Infinity, which Python's json writes and orjson refuses
        return json.loads(text)


def version_rows(queryset: QuerySet[ModelVersion]) -> list[VersionRow]:
    """The versions of ``queryset`` (filtered, ordered, sliced) as ``VersionRow``s, in one query
    joined to their model, parent and creator; ``VersionOutput`` serializes them like instances."""
    return [VersionRow(values) for values in queryset.values_list(*VersionRow.columns())]


class VersionPage:
    """A paginator's view of a version queryset: counted as it is, and each page read as
    ``VersionRow``s in one query (DRF's paginator calls ``count`` and slices)."""

    def __init__(self, queryset: QuerySet[ModelVersion]) -> None:
        self.queryset = queryset
        self.ordered = queryset.ordered

    def count(self) -> int:
        return self.queryset.count()

    def __getitem__(self, window: slice) -> list[VersionRow]:
        return version_rows(self.queryset[window])


def _tag_and_alias_names(ids: list[int]) -> list[tuple[int, str, str]]:
    """(version id, name, "tag" | "alias") for these versions: one round trip (UNION ALL) for two
    lists, in SQL (``registry.sql``: the ORM spent 15x the query building it for a page)."""
    link, tag_of_link = ModelVersion.tags.through, ModelVersion.tags.field.m2m_reverse_field_name()
    version_of_link = ModelVersion.tags.field.m2m_field_name()
    return sql.fetch(
        f"SELECT {sql.column(link, version_of_link)}, {sql.column(Tag, 'name')}, 'tag' FROM {sql.table(link)} "
        f"INNER JOIN {sql.table(Tag)} ON {sql.column(link, tag_of_link)} = {sql.column(Tag, 'id')} "
        f"WHERE {sql.column(link, version_of_link)} IN ({sql.placeholders(ids)}) "
        f"UNION ALL SELECT {sql.column(ModelAlias, 'version')}, {sql.column(ModelAlias, 'name')}, 'alias' "
        f"FROM {sql.table(ModelAlias)} WHERE {sql.column(ModelAlias, 'version')} IN ({sql.placeholders(ids)})",
        [*ids, *ids])


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
