"""REST API for the registry (/api/v1/). Views validate input, call a service, serialize output."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from registry.idempotency import idempotent
from registry import inspector, services
from registry.errors import NotFound
from registry.filters import AuditEventFilter, DatasetFilter, ModelFilter, VersionFilter
from registry.models import AuditEvent, Dataset, ModelAlias, ModelVersion, RegisteredModel
from registry.parsers import JSONParser
from registry.serializers import (
    AliasInput, AliasOutput, AuditEventOutput, DatasetCreateInput, DatasetOutput, ModelCreateInput, ModelOutput,
    ModelUpdateInput, VersionCreateInput, VersionOutput, VersionPage, VersionUpdateInput,
)
from registry.uploads import StagedFile, announced_too_large


def _valid(serializer_class: type, data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class ModelList(generics.ListAPIView):
    """Registered models. POST creates one (needs registry.add_registeredmodel)."""

    serializer_class = ModelOutput
    filterset_class = ModelFilter
    queryset = RegisteredModel.objects.none()

    def get_queryset(self) -> QuerySet[RegisteredModel]:
        # latest_version is a column (kept by version_create): a page costs the page, not the registry.
        return RegisteredModel.objects.order_by("name")

    @extend_schema(request=ModelCreateInput, responses={201: ModelOutput})
    @idempotent
    def post(self, request: Request) -> Response:
        data = _valid(ModelCreateInput, request.data)
        model = services.model_create(owner=request.user, **data)
        return Response(ModelOutput(model).data, status=status.HTTP_201_CREATED)


class ModelDetail(APIView):
    queryset = RegisteredModel.objects.none()

    @extend_schema(responses=ModelOutput)
    def get(self, request: Request, name: str) -> Response:
        return Response(ModelOutput(services.get_model(name)).data)

    @extend_schema(request=ModelUpdateInput, responses=ModelOutput)
    def patch(self, request: Request, name: str) -> Response:
        data = _valid(ModelUpdateInput, request.data)
        model = services.model_update(model=services.get_model(name), actor=request.user, **data)
        return Response(ModelOutput(model).data)


def _prewarm_inspector(request: Request) -> None:
    """Make sure this process has a warm (or warming) inspector before the body is read, so that a
    cold one imports TensorFlow while the upload streams in instead of after it."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if not announced_too_large(length):  # else a 413 follows without any inspection
        inspector.prewarm()


class VersionList(generics.ListAPIView):
    """Versions of a model, newest first. POST uploads a new one (multipart, field ``artifact``)."""

    serializer_class = VersionOutput
    filterset_class = VersionFilter
    parser_classes = [MultiPartParser, FormParser]
    queryset = ModelVersion.objects.none()

    def get_queryset(self) -> QuerySet[ModelVersion]:
        # The model is joined by name rather than fetched first (one query fewer per page); an empty
        # page checks that it exists. No DISTINCT: each filter (a tag, an alias, a parent) matches a
        # version once.
        return ModelVersion.objects.filter(model__name=self.kwargs["name"]).order_by("-number")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # Each page is read as plain rows in one query (``VersionPage``), not as model instances.
        page = self.paginate_queryset(VersionPage(self.filter_queryset(self.get_queryset())))
        if not page:
            services.get_model(self.kwargs["name"])  # 404 for a model that does not exist
        return self.get_paginated_response(VersionOutput(page, many=True).data)

    @extend_schema(request={"multipart/form-data": VersionCreateInput}, responses={201: VersionOutput})
    @idempotent
    def post(self, request: Request, name: str) -> Response:
        model = services.get_model(name)
        _prewarm_inspector(request)  # before request.data: the body has not been read yet
        data = _valid(VersionCreateInput, request.data)
        parent = services.get_version(model, data["parent"]) if data.get("parent") else None
        version = services.version_create(
            model=model, staged=StagedFile.from_upload(data["artifact"]), actor=request.user,
            description=data["description"], metadata=data["metadata"], tags=data["tags"], parent=parent,
        )
        return Response(VersionOutput(version).data, status=status.HTTP_201_CREATED)  # as inserted: no re-read


class VersionDetail(APIView):
    queryset = ModelVersion.objects.none()
    parser_classes = [JSONParser]

    @extend_schema(responses=VersionOutput)
    def get(self, request: Request, name: str, version: int) -> Response:
        return Response(VersionOutput(services.get_version_of(name, version)).data)

    @extend_schema(request=VersionUpdateInput, responses=VersionOutput)
    def patch(self, request: Request, name: str, version: int) -> Response:
        target = services.get_version_of(name, version)
        data = _valid(VersionUpdateInput, request.data)
        return Response(VersionOutput(services.version_update(version=target, actor=request.user, **data)).data)


class VersionArtifact(APIView):
    """The uploaded bytes, streamed, after checking they still match the recorded sha256."""

    queryset = ModelVersion.objects.none()

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse(description="The artifact bytes"),
                              304: OpenApiResponse(description="If-None-Match matched the ETag (sha256)")})
    def get(self, request: Request, name: str, version: int) -> HttpResponse:
        target = services.get_version_of(name, version)
        etag = f'"{target.artifact_sha256}"'
        if request.headers.get("If-None-Match") == etag:
            return HttpResponse(status=304, headers={"ETag": etag})
        path = services.version_artifact_path(target)
        response = FileResponse(open(path, "rb"), as_attachment=True, filename=target.artifact_filename,
                                content_type="application/octet-stream")
        response["ETag"] = etag
        response["X-Checksum-Sha256"] = target.artifact_sha256
        return response


class AliasList(generics.ListAPIView):
    serializer_class = AliasOutput
    queryset = ModelAlias.objects.none()

    def get_queryset(self) -> QuerySet[ModelAlias]:
        model = services.get_model(self.kwargs["name"])
        return ModelAlias.objects.filter(model=model).select_related("model", "version", "updated_by")


class AliasDetail(APIView):
    """GET shows where an alias points; PUT ``{"version": N}`` creates or moves it; DELETE removes it."""

    queryset = ModelAlias.objects.none()
    parser_classes = [JSONParser]

    @extend_schema(responses=AliasOutput)
    def get(self, request: Request, name: str, alias: str) -> Response:
        found = (ModelAlias.objects.select_related("model", "version", "updated_by")
                 .filter(model__name=name, name=alias).order_by().first())  # one query when it exists
        if found is None:
            services.get_model(name)  # a missing model is a 404 of its own
            raise NotFound(f"Model {name!r} has no alias {alias!r}.", code="alias_not_found")
        return Response(AliasOutput(found).data)

    @extend_schema(request=AliasInput, responses=AliasOutput)
    def put(self, request: Request, name: str, alias: str) -> Response:
        model = services.get_model(name)
        data = _valid(AliasInput, request.data)
        moved = services.alias_set(model=model, name=alias, version=services.get_version(model, data["version"]),
                                   actor=request.user)
        return Response(AliasOutput(moved).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str, alias: str) -> Response:
        services.alias_delete(model=services.get_model(name), name=alias, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DatasetList(generics.ListAPIView):
    serializer_class = DatasetOutput
    filterset_class = DatasetFilter
    parser_classes = [MultiPartParser, FormParser]
    queryset = Dataset.objects.none()

    def get_queryset(self) -> QuerySet[Dataset]:
        model = services.get_model(self.kwargs["name"])
        return Dataset.objects.filter(model=model).select_related("model", "checked_against", "created_by")

    @extend_schema(request={"multipart/form-data": DatasetCreateInput}, responses={201: DatasetOutput})
    @idempotent
    def post(self, request: Request, name: str) -> Response:
        model = services.get_model(name)
        data = _valid(DatasetCreateInput, request.data)
        version = services.get_version(model, data["version"]) if data.get("version") else None
        dataset = services.dataset_create(model=model, staged=StagedFile.from_upload(data["file"]),
                                          role=data["role"], actor=request.user, check_version=version,
                                          name=data["name"])
        return Response(DatasetOutput(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetail(generics.RetrieveAPIView):
    serializer_class = DatasetOutput
    queryset = Dataset.objects.none()
    lookup_url_kwarg = "dataset_id"

    def get_queryset(self) -> QuerySet[Dataset]:
        model = services.get_model(self.kwargs["name"])
        return Dataset.objects.filter(model=model).select_related("model", "checked_against", "created_by")


class AuditEventList(generics.ListAPIView):
    """The append-only audit trail, filterable by model, version, action and object."""

    serializer_class = AuditEventOutput
    filterset_class = AuditEventFilter
    queryset = AuditEvent.objects.select_related("actor", "model", "version")
