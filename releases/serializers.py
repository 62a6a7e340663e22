from __future__ import annotations

from typing import Any

from rest_framework import serializers

from registry.models import AuditEvent
from registry.serializers import AuditEventOutput
from releases.promotion import route_path
from releases.models import Approval, Environment, Release


class ReleaseCreateInput(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    version = serializers.IntegerField(min_value=1)
    environment = serializers.CharField(max_length=64)
    notes = serializers.CharField(required=False, allow_blank=True, default="")


class DecisionInput(serializers.Serializer):
    comment = serializers.CharField(allow_blank=False, trim_whitespace=True)
    override_reason = serializers.CharField(required=False, allow_blank=True, default="",
                                            help_text="Required to approve despite failing gates; recorded.")


class CommentInput(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class ApprovalOutput(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.get_username")

    class Meta:
        model = Approval
        fields = ["actor", "decision", "comment", "override_reason", "created_at"]


class EnvironmentOutput(serializers.ModelSerializer):
    class Meta:
        model = Environment
        fields = ["name", "description", "four_eyes", "auto_approve", "auto_promote", "max_accuracy_drop",
                  "max_p95_latency_ms", "min_size_reduction", "required_datasets", "batching",
                  "gpu_memory_fraction", "xla", "prefer_tflite", "gpu"]


class ReleaseOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name")
    version = serializers.IntegerField(source="version.number")
    environment = serializers.CharField(source="environment.name")
    requester = serializers.CharField(source="requester.get_username")
    baseline = serializers.IntegerField(source="baseline.number", allow_null=True, default=None)
    image = serializers.SerializerMethodField()
    failure = serializers.SerializerMethodField()
    warnings = serializers.SerializerMethodField()

    class Meta:
        model = Release
        fields = ["id", "model", "version", "environment", "notes", "requester", "state", "gates", "gates_passed",
                  "baseline", "override_reason", "image", "failure", "warnings", "created_at", "updated_at",
                  "submitted_at", "decided_at"]

    def get_warnings(self, release: Release) -> list[str]:
        """What clients must know: a serving-signature change approved over the gate."""
        from releases.gates import approved_signature_change

        changes = approved_signature_change(release)
        if not changes:
            return []
        return [f"This release changes the serving signature (approved: {release.override_reason}); clients of "
                f"the previous version must adapt: {'; '.join(changes)}"]

    def get_image(self, release: Release) -> dict[str, Any] | None:
        if not (release.image_id or release.image_digest):
            return None
        return {"repository": release.image_repository, "tag": release.image_tag, "id": release.image_id,
                "digest": release.image_digest, "size": release.image_size, "ref": release.image_ref,
                "context_sha256": release.context_sha256}

    def get_failure(self, release: Release) -> dict[str, Any] | None:
        if not release.failure_reason:
            return None
        return {"step": release.failure_step, "reason": release.failure_reason, "retryable": release.retryable}


class ReleaseDetailOutput(ReleaseOutput):
    approvals = ApprovalOutput(many=True, read_only=True)
    promotions = serializers.SerializerMethodField()
    audit_trail = serializers.SerializerMethodField()
    build_log = serializers.CharField()

    class Meta(ReleaseOutput.Meta):
        fields = [*ReleaseOutput.Meta.fields, "approvals", "promotions", "audit_trail", "build_log"]

    def get_promotions(self, release: Release) -> list[dict[str, Any]]:
        return PromotionOutput(release.promotions.select_related("endpoint").order_by("id"), many=True).data

    def get_audit_trail(self, release: Release) -> list[dict[str, Any]]:
        events = (AuditEvent.objects.filter(object_type="releases.release", object_id=str(release.pk))
                  .select_related("actor", "model", "version").order_by("created_at", "id"))
        return AuditEventOutput(events, many=True).data


class PromoteInput(serializers.Serializer):
    endpoint = serializers.CharField(required=False, allow_blank=True, default="",
                                     help_text="One endpoint; default: every endpoint of the release's environment.")
    canary = serializers.BooleanField(default=False, help_text="Only label the new version `canary`.")
    weight = serializers.IntegerField(default=10, min_value=1, max_value=100,
                                      help_text="A canary's share of traffic (%) where the endpoint splits by "
                                                "weight (docker endpoints; model repositories use the label).")


class EndpointInput(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    environment = serializers.CharField(max_length=64)
    kind = serializers.ChoiceField(choices=["model_repository", "docker"])
    grpc_target = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    rest_url = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    repository_path = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    config_path = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    docker_host = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    grpc_port_base = serializers.IntegerField(required=False, allow_null=True, min_value=1024, max_value=65000)
    profile = serializers.JSONField(required=False, default=dict)


class PromotionOutput(serializers.Serializer):
    endpoint = serializers.CharField(source="endpoint.name")
    canary = serializers.BooleanField()
    canary_weight = serializers.IntegerField()
    state = serializers.CharField()
    previous_version = serializers.IntegerField(allow_null=True)
    steps = serializers.JSONField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class EndpointOutput(serializers.Serializer):
    name = serializers.CharField()
    environment = serializers.CharField(source="environment.name")
    kind = serializers.CharField()
    grpc_target = serializers.CharField()
    rest_url = serializers.CharField()
    repository_path = serializers.CharField()
    serving_profile = serializers.JSONField()
    active_container_id = serializers.CharField()
    route_file = serializers.SerializerMethodField(
        help_text="docker endpoints: the file `manage.py route_endpoint` follows (null for other kinds)")
    reachable = serializers.BooleanField(allow_null=True)
    health = serializers.JSONField()
    health_error = serializers.CharField()
    health_checked_at = serializers.DateTimeField(allow_null=True)

    def get_route_file(self, obj: Any) -> str | None:
        return str(route_path(obj.name)) if obj.kind == "docker" else None
