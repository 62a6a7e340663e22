"""REST API for releases: request, submit, approve/reject (four-eyes), cancel, build."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from registry.idempotency import idempotent
from registry import services as registry
from releases import promotion, services
from releases.models import Endpoint, Environment, Release
from releases.serializers import (
    CommentInput, DecisionInput, EndpointInput, EndpointOutput, EnvironmentOutput, PromoteInput, ReleaseCreateInput,
    ReleaseDetailOutput, ReleaseOutput,
)


def _releases() -> QuerySet[Release]:
    return Release.objects.select_related("version__model", "environment", "requester", "baseline")


def _detail(release_id: int, code: int = status.HTTP_200_OK) -> Response:
    release = _releases().prefetch_related("approvals__actor").get(pk=release_id)
    return Response(ReleaseDetailOutput(release).data, status=code)


class ReleaseList(generics.ListAPIView):
    """Releases, newest first (filters ``state``, ``environment``, ``model``). POST requests one."""

    serializer_class = ReleaseOutput
    queryset = Release.objects.none()

    def get_queryset(self) -> QuerySet[Release]:
        releases = _releases()
        params = self.request.query_params
        if state := params.get("state"):
            releases = releases.filter(state=state)
        if env := params.get("environment"):
            releases = releases.filter(environment__name=env)
        if model := params.get("model"):
            releases = releases.filter(version__model__name=model)
        return releases

    @extend_schema(request=ReleaseCreateInput, responses={201: ReleaseDetailOutput})
    @idempotent
    def post(self, request: Request) -> Response:
        serializer = ReleaseCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = registry.get_version(registry.get_model(data["model"]), data["version"])
        release = services.release_create(version=version, environment=services.get_environment(data["environment"]),
                                          requester=request.user, notes=data["notes"])
        return _detail(release.pk, status.HTTP_201_CREATED)


class ReleaseDetail(APIView):
    queryset = Release.objects.none()

    @extend_schema(responses=ReleaseDetailOutput)
    def get(self, request: Request, release_id: int) -> Response:
        return _detail(services.get_release(release_id).pk)


class _Transition(APIView):
    """POST /releases/{id}/<action>/: validate the body, call one service, answer with the release."""

    queryset = Release.objects.none()
    permission_action = "change"
    input_class: type = CommentInput
    queued_state = ""  # the service answers in this state when it left the work to a task: 202

    def call(self, release: Release, actor: Any, data: dict[str, Any]) -> Release:
        raise NotImplementedError

    @extend_schema(responses=ReleaseDetailOutput)
    def post(self, request: Request, release_id: int) -> Response:
        serializer = self.input_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        release = self.call(services.get_release(release_id), request.user, serializer.validated_data)
        queued = self.queued_state and release.state == self.queued_state
        return _detail(release.pk, status.HTTP_202_ACCEPTED if queued else status.HTTP_200_OK)


def transition_view(service: Callable[..., Release], input_class: type = CommentInput, *,
                    decides: bool = False, takes_comment: bool = False,
                    queued: tuple[str, str] | None = None) -> type[_Transition]:
    """``queued``: (state, description) of an answer the service gives when a task finishes the
    work: 202 with the release in that state (documented in the schema beside the 200)."""
    class View(_Transition):
        def call(self, release: Release, actor: Any, data: dict[str, Any]) -> Release:
            kwargs = dict(data) if (decides or takes_comment) else {}
            return service(release=release, actor=actor, **kwargs)

    View.input_class = input_class
    if decides:
        # Deciding needs releases.approve_release, checked by the service (with four-eyes);
        # the approver need not hold change_release.
        View.permission_classes = [permissions.IsAuthenticated]
    View.__name__ = f"{service.__name__.title().replace('_', '')}View"
    responses: Any = ReleaseDetailOutput
    if queued:
        View.queued_state = queued[0]
        responses = {200: OpenApiResponse(ReleaseDetailOutput, description="Done: the release in its new state."),
                     202: OpenApiResponse(ReleaseDetailOutput, description=queued[1])}
    View.post = extend_schema(request=input_class, responses=responses)(View.post)  # type: ignore[method-assign]
    return View


ReleaseSubmit = transition_view(services.release_submit)
ReleaseApprove = transition_view(services.release_approve, DecisionInput, decides=True)
ReleaseReject = transition_view(services.release_reject, CommentInput, decides=True)
ReleaseCancel = transition_view(services.release_cancel, CommentInput, takes_comment=True)
ReleaseBuild = transition_view(services.release_build_request)


ReleasePromote = transition_view(promotion.release_promote, PromoteInput, takes_comment=True)
ReleaseComplete = transition_view(promotion.release_complete)
ReleaseRollback = transition_view(
    promotion.release_rollback, CommentInput, takes_comment=True,
    queued=(Release.State.ROLLING_BACK,
            "Accepted: the release is `rolling_back`; a version no longer on an endpoint is staged again by the "
            "deploy worker, then the release is `rolled_back` (or `failed` at `rollback:<endpoint>:<step>` with the "
            "reason). Poll the release."))


class EndpointList(generics.ListAPIView):
    """Serving endpoints with their last recorded health. POST registers one: an operator action
    (``releases.operate_endpoints``, checked by the service), not a model permission."""

    serializer_class = EndpointOutput
    queryset = Endpoint.objects.none()
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self) -> QuerySet[Endpoint]:
        return Endpoint.objects.select_related("environment")

    @extend_schema(request=EndpointInput, responses={201: EndpointOutput})
    def post(self, request: Request) -> Response:
        promotion.require_operator(request.user)  # 403 before any validation detail
        serializer = EndpointInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = promotion.endpoint_create(actor=request.user, **serializer.validated_data)
        return Response(EndpointOutput(endpoint).data, status=status.HTTP_201_CREATED)


class EndpointDetail(APIView):
    """One endpoint; ``?refresh=1`` checks its health now (reachability, what each label serves)."""

    queryset = Endpoint.objects.none()

    @extend_schema(responses=EndpointOutput)
    def get(self, request: Request, name: str) -> Response:
        endpoint = promotion.get_endpoint(name)
        if request.query_params.get("refresh") in ("1", "true"):
            endpoint = promotion.check_endpoint_health(endpoint)
        return Response(EndpointOutput(endpoint).data)


class EnvironmentList(generics.ListAPIView):
    serializer_class = EnvironmentOutput
    queryset = Environment.objects.all()
    pagination_class = None
