"""Registry domain: registered models, their immutable versions, aliases, datasets, audit."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone


slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]{0,99}$",
    "Use 1-100 lowercase letters, digits, '-' or '_', starting with a letter or digit.",
)
sha256_validator = RegexValidator(r"^[0-9a-f]{64}$", "Not a sha256 hex digest.")


MAX_TAGS = 32  # tags on one model or version (README "API overview")
MAX_TAG_LENGTH = 64


class Tag(models.Model):
    name = models.CharField(max_length=MAX_TAG_LENGTH, unique=True, validators=[slug_validator])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def username_of(user_field: str) -> models.F:
    """The username behind a user foreign key, for ``annotate`` (``owner`` -> ``owner__username``)."""
    return models.F(f"{user_field}__{get_user_model().USERNAME_FIELD}")


class RegisteredModel(models.Model):
    class Task(models.TextChoices):
        CLASSIFICATION = "classification"
        REGRESSION = "regression"
        OTHER = "other"

    name = models.CharField(max_length=100, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    task = models.CharField(max_length=20, choices=Task.choices, default=Task.OTHER)
    tags = models.ManyToManyField(Tag, blank=True, related_name="models")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="models")
    # Denormalized so that a page of models costs the page, not the registry: the number of the
    # newest version (null before the first). ``services.version_create`` allocates the next number
    # by incrementing it, in the transaction that inserts the version. Versions are never deleted
    # and numbers are dense, so it is also the model's version count.
    latest_version = models.PositiveIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def ready(self) -> "ModelVersionQuerySet":
        """Versions whose artifact was accepted; ``failed`` ones are kept only as records."""
        return self.filter(status=ModelVersion.Status.READY)


class ModelVersion(models.Model):
    """One immutable artifact of a model. Only description, tags and metadata may change."""

    class Format(models.TextChoices):
        SAVED_MODEL = "saved_model"
        KERAS = "keras"
        TFLITE = "tflite"

    class Source(models.TextChoices):
        UPLOAD = "upload"
        OPTIMIZATION = "optimization"
        IMPORT = "import"

    class Status(models.TextChoices):
        READY = "ready"
        FAILED = "failed"

    MUTABLE_FIELDS = frozenset({"description", "metadata"})  # tags are an M2M, also mutable

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    format = models.CharField(max_length=20, choices=Format.choices)
    artifact_sha256 = models.CharField(max_length=64, validators=[sha256_validator])
    artifact_size = models.BigIntegerField()
    artifact_filename = models.CharField(max_length=255, help_text="File name as uploaded.")
    signature = models.JSONField(default=dict, help_text="Serving signature read from the artifact.")
    framework = models.JSONField(default=dict, help_text="Framework versions that wrote/read it.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="variants")
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.UPLOAD)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.READY)
    description = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="versions")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["model__name", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="unique_version_number_per_model"),
            models.CheckConstraint(condition=models.Q(number__gte=1), name="version_number_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    def clean(self) -> None:
        if self.parent_id and self.parent and self.parent.model_id != self.model_id:
            raise ValidationError({"parent": "The parent must be a version of the same model."})
        if not isinstance(self.metadata, dict):
            raise ValidationError({"metadata": "Metadata must be a JSON object."})

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Defence in depth behind the service layer: once written, only MUTABLE_FIELDS may change.
        if self.pk is not None:
            update_fields = kwargs.get("update_fields")
            if update_fields is None or not set(update_fields) <= self.MUTABLE_FIELDS:
                raise ImmutableVersionError(
                    f"{self} is immutable; only {', '.join(sorted(self.MUTABLE_FIELDS))} and tags may change."
                )
        super().save(*args, **kwargs)


def newest_version_number(versions: type[models.Model] | None = None) -> models.Subquery:
    """The newest version number of the model in the outer query, for ``RegisteredModel``
    updates: ``latest_version``'s value from the rows. ``versions`` is the version class to query
    (a migration passes its historical one)."""
    return models.Subquery((versions or ModelVersion).objects.filter(model=models.OuterRef("pk")).order_by()
                           .values("model").annotate(n=models.Max("number")).values("n"))


class ImmutableVersionError(Exception):
    """Raised when code tries to rewrite an immutable field of a stored version."""


class ModelAlias(models.Model):
    """A movable name (e.g. ``champion``) pointing at one version of a model."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64, validators=[slug_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "name"]
        verbose_name_plural = "model aliases"
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="unique_alias_per_model")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"

    def clean(self) -> None:
        if self.version_id and self.version.model_id != self.model_id:
            raise ValidationError({"version": "An alias can only point at a version of its own model."})


class Dataset(models.Model):
    """An ``.npz`` with array ``x`` and optional ``y``, used for evaluation, training, calibration."""

    class Role(models.TextChoices):
        TRAIN = "train"
        EVAL = "eval"
        CALIBRATION = "calibration"

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="datasets")
    name = models.CharField(max_length=255)
    role = models.CharField(max_length=20, choices=Role.choices)
    sha256 = models.CharField(max_length=64, validators=[sha256_validator])
    size_bytes = models.BigIntegerField()
    arrays = models.JSONField(help_text='{"x": {"shape": [...], "dtype": "..."}, "y": ...}')
    checked_against = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="checked_datasets",
        help_text="The version whose signature x was checked against at upload.",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "-created_at"]

    def __str__(self) -> str:
        return f"{self.model.name}/{self.name} ({self.role})"

    @property
    def num_examples(self) -> int:
        return int(self.arrays.get("x", {}).get("shape", [0])[0])


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("Audit events are append-only: they cannot be updated.")

    def delete(self) -> tuple[int, dict[str, int]]:  # type: ignore[override]
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")


class AppendOnlyError(Exception):
    pass


class AuditEvent(models.Model):
    """Append-only record of every state change: who did what to which object, and when.

    Written in the same transaction as the change it records (see ``registry.audit.record``).
    Updates and deletes are refused here and, on the database, by triggers (migration 0002).
    """

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=255)
    model = models.ForeignKey(RegisteredModel, null=True, on_delete=models.PROTECT, related_name="audit_events")
    version = models.ForeignKey(ModelVersion, null=True, on_delete=models.PROTECT, related_name="audit_events")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.action} {self.object_repr}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise AppendOnlyError("Audit events are append-only: they cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")


class IdempotencyKey(models.Model):
    """The first answer to a create sent with an ``Idempotency-Key``; replayed for a day
    (``registry.idempotency``, used by every app's create endpoints).

    ``(user, key)`` is unique: of two concurrent requests with one key, one inserts the row and
    runs, the other finds it and gets 409 (in progress) or the stored answer."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=64, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="one_idempotency_key_per_user")]
        indexes = [models.Index(fields=["created_at"], name="idempotencykey_created_idx")]  # expiry sweeps

    def __str__(self) -> str:
        return f"{self.key} ({self.method} {self.path})"
