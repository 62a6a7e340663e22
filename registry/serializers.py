"""API input validators and output serializers (kept apart: what comes in is not what goes out)."""
from __future__ import annotations

import json
from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from registry import extensions, jsonlimits
from registry.models import (
    MAX_TAG_LENGTH, MAX_TAGS, AuditEvent, Dataset, ModelAlias, ModelVersion, RegisteredModel, slug_validator,
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


class ModelOutput(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.get_username")
    tags = TagNamesField()
    latest_version = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = RegisteredModel
        fields = ["name", "description", "task", "tags", "owner", "latest_version", "created_at", "updated_at"]


class VersionOutput(serializers.ModelSerializer):
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

    class Meta:
        model = ModelVersion
        fields = ["model", "version", "format", "sha256", "size_bytes", "filename", "signature", "framework",
                  "parent", "source", "status", "description", "metadata", "tags", "aliases", "created_by",
                  "created_at", "metrics"]

    def get_metrics(self, obj: ModelVersion) -> list[dict[str, Any]]:
        return extensions.version_field("metrics", obj, default=[])  # rendered by the metrics app

    def get_aliases(self, obj: ModelVersion) -> list[str]:
        return sorted(a.name for a in obj.aliases.all())


class AliasOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    alias = serializers.CharField(source="name")
    version = serializers.IntegerField(source="version.number")
    updated_by = serializers.CharField(source="updated_by.get_username")

    class Meta:
        model = ModelAlias
        fields = ["model", "alias", "version", "updated_by", "updated_at"]


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
