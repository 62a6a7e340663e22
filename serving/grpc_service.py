"""gRPC front end: tensorflow.serving.PredictionService and ModelService.

Each handler calls the shared core and turns a ServingError into the same gRPC
status code and message TF Serving would return.
"""
from __future__ import annotations

import functools
import logging
import time
from concurrent import futures
from typing import Callable, TypeVar

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2, get_model_status_pb2, model_management_pb2, model_pb2,
    model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc, classification_pb2,
    regression_pb2)
from tensorflow_serving.apis import status_pb2

from . import inference
from .errors import ServingError, invalid_argument, unimplemented
from .manager import ModelManager
from .monitoring import ServingMetrics
from .tensors import request_inputs, to_proto

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
T = TypeVar("T")


# The inference RPCs TF Serving counts in :tensorflow:serving:request_count / request_latency.
MONITORED_API = {"Predict": "predict", "Classify": "classify", "Regress": "regress"}


def _handles_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Map ServingError to a gRPC status; log anything unexpected as INTERNAL; record the
    inference RPCs' status and latency."""
    api = MONITORED_API.get(method.__name__)

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        started, status = time.perf_counter(), "OK"
        try:
            return method(self, request, context)
        except ServingError as exc:
            status = exc.code.name
            context.abort(exc.code, exc.message)
        except Exception as exc:  # a bug must still answer, not hang the client
            status = "INTERNAL"
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            metrics: ServingMetrics | None = getattr(self, "metrics", None)
            if api and metrics is not None:
                metrics.record(model_name=request.model_spec.name, api=api, entrypoint="GRPC", status=status,
                               seconds=time.perf_counter() - started)

    return wrapper


def effective_spec(name: str, version: int, signature_name: str | None) -> model_pb2.ModelSpec:
    """MakeModelSpec(): the response names the version that actually served."""
    spec = model_pb2.ModelSpec(name=name)
    spec.version.value = version
    if signature_name is not None:
        spec.signature_name = inference.signature_key(signature_name)
    return spec


def model_metadata(manager: ModelManager, request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadataImpl: only the signature_def field exists."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field_name in request.metadata_field:
        if field_name != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field_name} is not supported")
    servable, version = manager.resolve(request.model_spec)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=effective_spec(request.model_spec.name, version, None))
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def model_status(manager: ModelManager, request: get_model_status_pb2.GetModelStatusRequest
                 ) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusImpl: labels are ignored, only `version` narrows the answer."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    response = get_model_status_pb2.GetModelStatusResponse()
    for record in manager.version_states(spec.name, version):
        item = response.model_version_status.add(version=record.version, state=int(record.state))
        item.status.CopyFrom(status_proto(record.error))
    return response


def status_proto(error: ServingError | None) -> status_pb2.StatusProto:
    if error is None:
        return status_pb2.StatusProto(error_code=0, error_message="")
    return status_pb2.StatusProto(error_code=error.code_value, error_message=error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, metrics: ServingMetrics | None = None) -> None:
        self._manager = manager
        self.metrics = metrics

    @_handles_errors
    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        servable, version = self._manager.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name
        # The spec is fixed before inputs are checked, as RunPredict does.
        inference.find_signature(servable, signature_name)
        outputs = inference.predict(servable, signature_name, request_inputs(request),
                                    list(request.output_filter))
        response = predict_pb2.PredictResponse(
            model_spec=effective_spec(request.model_spec.name, version, signature_name))
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(to_proto(array))
        return response

    @_handles_errors
    def GetModelMetadata(self, request, context):
        return model_metadata(self._manager, request)

    @_handles_errors
    def Classify(self, request: classification_pb2.ClassificationRequest, context):
        servable, version = self._manager.resolve(request.model_spec)
        result = inference.classify(servable, request.model_spec.signature_name, request.input,
                                    self._manager.options.signature_method_name_check)
        return classification_pb2.ClassificationResponse(
            model_spec=effective_spec(request.model_spec.name, version,
                                      request.model_spec.signature_name),
            result=result)

    @_handles_errors
    def Regress(self, request: regression_pb2.RegressionRequest, context):
        servable, version = self._manager.resolve(request.model_spec)
        result = inference.regress(servable, request.model_spec.signature_name, request.input,
                                   self._manager.options.signature_method_name_check)
        return regression_pb2.RegressionResponse(
            model_spec=effective_spec(request.model_spec.name, version,
                                      request.model_spec.signature_name),
            result=result)

    @_handles_errors
    def MultiInference(self, request, context):
        raise unimplemented("MultiInference is not implemented by the Modelyard server.")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    @_handles_errors
    def GetModelStatus(self, request, context):
        return model_status(self._manager, request)

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                  context) -> model_management_pb2.ReloadConfigResponse:
        """Like model_service_impl.cc: the status goes in the response AND the RPC status."""
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported")
            for index, entry in enumerate(request.config.model_config_list.config):
                log.info("Config entry index : %d path : %s name : %s platform : %s",
                         index, entry.base_path, entry.name, entry.model_platform)
            self._manager.reload_config(request.config)
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            context.set_code(exc.code)
            context.set_details(exc.message)
            return model_management_pb2.ReloadConfigResponse(status=status_proto(exc))
        return model_management_pb2.ReloadConfigResponse(status=status_proto(None))


def create_server(manager: ModelManager, port: int, workers: int = 16,
                  metrics: ServingMetrics | None = None) -> tuple[grpc.Server, int]:
    """Bind 0.0.0.0:port (like TF Serving); returns the server and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", 2**31 - 1),
                 ("grpc.max_send_message_length", 2**31 - 1),
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    bound = server.add_insecure_port(f"0.0.0.0:{port}")
    if bound == 0:
        raise OSError(f"Failed to bind gRPC port {port}")
    return server, bound
