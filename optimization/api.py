"""REST API for optimization jobs and variant comparison."""
from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics.serializers import MetricsOutput
from optimization import services
from optimization.models import OptimizationJob
from optimization.serializers import JobCreateInput, JobOutput, VariantsOutput
from registry.idempotency import idempotent
from registry.serializers import VersionOutput
from registry import services as registry
from registry.models import ModelVersion


def _jobs() -> QuerySet[OptimizationJob]:
    return OptimizationJob.objects.select_related("source__model", "variant", "created_by")


class JobList(generics.ListAPIView):
    """Optimization jobs, newest first (filter ``?status=``, ``?model=``). POST starts one (202)."""

    serializer_class = JobOutput
    queryset = OptimizationJob.objects.none()
    filterset_fields = ["status"]

    def get_queryset(self) -> QuerySet[OptimizationJob]:
        jobs = _jobs()
        if model := self.request.query_params.get("model"):
            jobs = jobs.filter(source__model__name=model)
        return jobs

    @extend_schema(request=JobCreateInput, responses={202: JobOutput})
    @idempotent
    def post(self, request: Request) -> Response:
        serializer = JobCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        model = registry.get_model(data["model"])
        source = registry.get_version(model, data["version"])
        datasets = {role: _dataset(model, role, pk) for role, pk in (data.get("datasets") or {}).items() if pk}
        job = services.job_create(source=source, recipe=data["recipe"], actor=request.user, datasets=datasets)
        return Response(JobOutput(_jobs().get(pk=job.pk)).data, status=status.HTTP_202_ACCEPTED)


_dataset = services.get_dataset


class JobDetail(APIView):
    queryset = OptimizationJob.objects.none()

    @extend_schema(responses=JobOutput)
    def get(self, request: Request, job_id: int) -> Response:
        return Response(JobOutput(services.get_job(job_id)).data)


class JobCancel(APIView):
    queryset = OptimizationJob.objects.none()
    permission_action = "change"

    @extend_schema(request=None, responses=JobOutput)
    def post(self, request: Request, job_id: int) -> Response:
        job = services.job_cancel(job=services.get_job(job_id), actor=request.user)
        return Response(JobOutput(_jobs().get(pk=job.pk)).data)


class VariantList(APIView):
    """Variants of a version with their metrics, beside the version's own (for comparison)."""

    queryset = ModelVersion.objects.none()

    @extend_schema(responses=VariantsOutput)
    def get(self, request: Request, name: str, version: int) -> Response:
        parent = registry.get_version(registry.get_model(name), version)
        variants = ModelVersion.objects.filter(parent=parent).order_by("number")  # rows loaded per page
        return Response({
            "parent": {"version": parent.number, "format": parent.format,
                       "metrics": MetricsOutput(parent.metrics.all(), many=True).data},
            "variants": VersionOutput(variants, many=True).data,
        })
