"""Releases: environments with their policy and serving profile, release requests moving through
a state machine, approvals, and (issue #6) serving endpoints."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from registry.models import ModelVersion, RegisteredModel, slug_validator


class Environment(models.Model):
    """A deployment target (staging, production, ...): default gates, approval rules, and the
    serving profile image builds and endpoints use."""

    name = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    four_eyes = models.BooleanField(default=True, help_text="The approver may not be the requester.")
    auto_approve = models.BooleanField(default=False, help_text="Approve automatically when every gate passes.")
    auto_promote = models.BooleanField(default=False, help_text="Promote automatically once the image is ready.")
    build_image = models.BooleanField(
        default=True, help_text="Build a serving image on approval. Off: approved releases go straight to "
                                "model_repository endpoints (the embedded `make run` setup has no Docker).")
    # default gates (a ReleasePolicy per model overrides any of them)
    max_accuracy_drop = models.FloatField(null=True, blank=True, help_text="Fraction, 0.01 = one point.")
    max_p95_latency_ms = models.FloatField(null=True, blank=True)
    min_size_reduction = models.FloatField(null=True, blank=True, help_text="Parent gzipped / variant gzipped.")
    required_datasets = models.JSONField(default=list, blank=True, help_text='Roles, e.g. ["eval"].')
    # serving profile
    batching = models.JSONField(null=True, blank=True, help_text="BatchingParameters fields, or null for none.")
    gpu_memory_fraction = models.FloatField(null=True, blank=True)
    xla = models.BooleanField(default=False)
    prefer_tflite = models.BooleanField(default=False, help_text="Endpoints run --prefer_tflite_model.")
    gpu = models.BooleanField(default=True, help_text="Containers request GPUs.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_production(self) -> bool:
        return self.name == "production"


class ReleasePolicy(models.Model):
    """Per-model gate thresholds for one environment; a null field inherits the environment's."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="release_policies")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="policies")
    max_accuracy_drop = models.FloatField(null=True, blank=True)
    max_p95_latency_ms = models.FloatField(null=True, blank=True)
    min_size_reduction = models.FloatField(null=True, blank=True)
    required_datasets = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "environment"], name="one_policy_per_env")]
        verbose_name_plural = "release policies"

    def __str__(self) -> str:
        return f"{self.model.name} in {self.environment.name}"


class Release(models.Model):
    class State(models.TextChoices):
        DRAFT = "draft"
        PENDING_APPROVAL = "pending_approval"
        APPROVED = "approved"
        REJECTED = "rejected"
        IMAGE_BUILDING = "image_building"
        IMAGE_READY = "image_ready"
        PROMOTING = "promoting"
        CANARY = "canary"
        LIVE = "live"
        ROLLING_BACK = "rolling_back"  # a rollback re-stages a version on the deploy worker
        ROLLED_BACK = "rolled_back"
        SUPERSEDED = "superseded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="releases")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="releases")
    notes = models.TextField(blank=True)
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=20, choices=State.choices, default=State.DRAFT, db_index=True)
    failure_step = models.CharField(max_length=64, blank=True)
    failure_reason = models.TextField(blank=True)
    retryable = models.BooleanField(default=False, help_text="The failure was transient (engine, registry).")
    # gates
    gates = models.JSONField(default=list, blank=True, help_text="Gate results with their numbers.")
    gates_passed = models.BooleanField(null=True)
    baseline = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                 help_text="What the accuracy gate compared with (live version or parent).")
    override_reason = models.TextField(blank=True)
    # image
    image_repository = models.CharField(max_length=255, blank=True)
    image_tag = models.CharField(max_length=128, blank=True)
    image_id = models.CharField(max_length=128, blank=True)
    image_digest = models.CharField(max_length=128, blank=True)
    image_size = models.BigIntegerField(null=True, blank=True)
    context_sha256 = models.CharField(max_length=64, blank=True)
    build_log = models.TextField(blank=True)
    # timestamps
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("approve_release", "Can approve or reject releases")]

    def __str__(self) -> str:
        return f"release {self.pk}: {self.version} → {self.environment.name}"

    @property
    def image_ref(self) -> str:
        if self.image_repository and self.image_digest:
            return f"{self.image_repository}@{self.image_digest}"
        return ""


class Approval(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="approvals")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField()
    override_reason = models.TextField(blank=True, help_text="Why failing gates were overridden.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.decision} of release {self.release_id} by {self.actor}"


class Endpoint(models.Model):
    """A serving endpoint Modelyard promotes to. Talks only TF Serving's public protocol."""

    class Kind(models.TextChoices):
        MODEL_REPOSITORY = "model_repository", "TF Serving reading a model repository"
        DOCKER = "docker", "Container on a Docker host"

    name = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="endpoints")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    grpc_target = models.CharField(max_length=255, blank=True, help_text="host:port of the gRPC API.")
    rest_url = models.CharField(max_length=255, blank=True)
    repository_path = models.CharField(max_length=500, blank=True,
                                       help_text="model_repository: the directory the server reads (absolute).")
    config_path = models.CharField(max_length=500, blank=True,
                                   help_text="model_repository: its models.config (default <repository>/models.config).")
    docker_host = models.CharField(max_length=255, blank=True, help_text="docker: engine URL (default DOCKER_HOST).")
    grpc_port_base = models.PositiveIntegerField(null=True, blank=True,
                                                 help_text="docker: containers take gRPC base, base+2 or base+4 (REST one above).")
    active_container_id = models.CharField(max_length=128, blank=True)
    previous_container_id = models.CharField(max_length=128, blank=True)
    profile = models.JSONField(default=dict, blank=True,
                               help_text="Serving profile overrides (batching, gpu_memory_fraction, xla, "
                                         "prefer_tflite, gpu) over the environment's.")
    # health, refreshed by check_endpoints and after every promotion
    reachable = models.BooleanField(null=True)
    health = models.JSONField(default=dict, blank=True, help_text="{model: {labels: {...}, versions: {...}}}")
    health_error = models.TextField(blank=True)
    health_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        # Registering or changing an endpoint decides where Modelyard writes and deletes files and
        # which Docker engine it drives: an operator's permission, not part of the release rights.
        permissions = [("operate_endpoints", "Can register and change serving endpoints (operators)")]

    def __str__(self) -> str:
        return self.name

    def serving_profile(self) -> dict:
        env = self.environment
        base = {"batching": env.batching, "gpu_memory_fraction": env.gpu_memory_fraction, "xla": env.xla,
                "prefer_tflite": env.prefer_tflite, "gpu": env.gpu}
        return {**base, **(self.profile or {})}


class Promotion(models.Model):
    """One release going onto one endpoint: the steps taken, and how it ended."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        # the release's rollback re-stages the previous version here (deploy worker); back to
        # SUCCEEDED when that is done or failed, ROLLED_BACK with the release
        ROLLING_BACK = "rolling_back"
        ROLLED_BACK = "rolled_back"

    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="promotions")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.PROTECT, related_name="promotions")
    canary = models.BooleanField(default=False)
    canary_weight = models.PositiveSmallIntegerField(
        default=10, help_text="A canary's share of traffic (%) on endpoints that split by weight (docker).")
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED)
    previous_version = models.PositiveIntegerField(null=True, blank=True)
    steps = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # while running or re-staging for a rollback: who runs it and when it last said so (a scheduled
    # reaper handles a promotion whose worker died: releases.promotion.promotions_reap_stale)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"release {self.release_id} → {self.endpoint.name} ({self.state})"
