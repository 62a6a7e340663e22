"""A small client for one TF Serving endpoint, over TF Serving's public protocol only.

Everything goes through TF Serving's gRPC services (ModelService: GetModelStatus,
HandleReloadConfigRequest; PredictionService: Predict, GetModelMetadata), so the same code drives
`python -m serving` and a real `tensorflow_model_server`. No Django inside.

ModelService calls (GetModelStatus, HandleReloadConfigRequest: endpoint health and the label
flips of rollback and canary completion, which web processes run) use the messages of
`releases.protos`, TensorFlow-free and the same bytes on the wire. PredictionService calls use the
official stubs of `tensorflow-serving-api`, whose messages embed TensorFlow's protos, so importing
any of them loads the whole tensorflow package: they are imported inside the methods that use them,
which only promotion's validation (in workers) calls.

Every failure is one of the `TFServingError` subclasses below, with a message a person can act on
(which endpoint, which model and version, what the server said).
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import grpc
import numpy as np
import requests
from tensorflow_serving.config import model_server_config_pb2  # plain protobuf, no TensorFlow

from releases import protos
from releases.errors import EndpointError

ModelServerConfig = model_server_config_pb2.ModelServerConfig

# ModelVersionStatus.State, by number (get_model_status.proto).
STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
AVAILABLE, END = "AVAILABLE", "END"
POLL_INTERVAL_S = 0.2
MODEL_SERVICE = "/tensorflow.serving.ModelService/"
_UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE,)


# --- errors ------------------------------------------------------------------------------------

class TFServingError(EndpointError):
    """Base of every error this module raises: the TF Serving protocol's failures."""


class EndpointUnreachable(TFServingError):
    """Nothing answers at the endpoint's gRPC address (server down, wrong port, network)."""


class LoadFailed(TFServingError):
    """A version ended in END instead of becoming AVAILABLE; carries the server's error text."""


class ServingTimeout(TFServingError):
    """A deadline passed (a load that never finished, an RPC that never answered)."""


class ReloadRefused(TFServingError):
    """HandleReloadConfigRequest returned a non-OK status; `grpc_code` is the gRPC status name."""

    def __init__(self, message: str, grpc_code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


class RequestFailed(TFServingError):
    """Predict / GetModelMetadata / GetModelStatus returned an error status."""

    def __init__(self, message: str, grpc_code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


class WrongAnswers(TFServingError):
    """The served version answered, but not with the recorded outputs."""


class SignatureMismatch(TFServingError):
    """The served version's signature does not have the expected inputs/outputs/dtypes."""


class VersionNotLoaded(TFServingError):
    """A version the caller relies on (e.g. a rollback target) is not AVAILABLE."""


# --- results -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpecInfo:
    dtype: str                 # numpy-style name: "float32", "int64", "string"
    shape: tuple[int, ...] | None  # -1 for unknown dims; None for unknown rank


@dataclass(frozen=True)
class SignatureInfo:
    name: str
    method_name: str
    inputs: dict[str, TensorSpecInfo]
    outputs: dict[str, TensorSpecInfo]
    version: int               # the version whose metadata this is


def _tensor_info(info: Any) -> TensorSpecInfo:
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(info.dtype).name
    if info.tensor_shape.unknown_rank:
        return TensorSpecInfo(dtype, None)
    return TensorSpecInfo(dtype, tuple(int(d.size) for d in info.tensor_shape.dim))


def _code_name(number: int) -> str:
    """A numeric gRPC/TensorFlow status code as its name (5 -> 'NOT_FOUND')."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)


# --- the client --------------------------------------------------------------------------------

class TFServingClient:
    """One endpoint: `grpc_target` like "10.0.0.5:8500"; `rest_url` ("http://host:8501") optional.

    `timeout` is the per-RPC deadline in seconds (reloads that block on loading take their own).
    """

    def __init__(self, grpc_target: str, rest_url: str | None = None, timeout: float = 10.0) -> None:
        self.grpc_target = grpc_target
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self.timeout = timeout
        self._channel = grpc.insecure_channel(grpc_target)
        self._messages = protos.model_service_messages()
        self._get_model_status = self._model_service("GetModelStatus")
        self._reload_config = self._model_service("HandleReloadConfigRequest", "ReloadConfig")

    def _model_service(self, method: str, messages: str | None = None) -> Any:
        """A ModelService method as a callable taking and returning ``releases.protos`` messages."""
        request, response = (self._messages[f"{messages or method}{part}"] for part in ("Request", "Response"))
        return self._channel.unary_unary(MODEL_SERVICE + method, request_serializer=request.SerializeToString,
                                         response_deserializer=response.FromString)

    @functools.cached_property
    def _predictions(self) -> Any:
        from tensorflow_serving.apis import prediction_service_pb2_grpc  # loads TensorFlow (see above)

        return prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _status_request(self, name: str) -> Any:
        request = self._messages["GetModelStatusRequest"]()
        request.model_spec.name = name
        return request

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "TFServingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TFServingClient({self.grpc_target!r})"

    # -- error mapping --

    def _rpc_error(self, exc: grpc.RpcError, what: str) -> TFServingError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in _UNREACHABLE_CODES:
            return EndpointUnreachable(
                f"TF Serving endpoint {self.grpc_target} is unreachable ({what}): {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ServingTimeout(f"{what} at {self.grpc_target} did not answer in time: {details}")
        return RequestFailed(f"{what} at {self.grpc_target} failed with {code.name}: {details}",
                             grpc_code=code.name)

    # -- ModelService --

    def reachable(self, timeout: float = 2.0) -> bool:
        """True if the gRPC ModelService answers (and the REST port, when one is configured)."""
        if not self.grpc_target:  # gRPC fails that call client-side with UNKNOWN, which reads as "answering"
            return False
        try:
            self._get_model_status(self._status_request("__modelyard_probe__"), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in _UNREACHABLE_CODES or exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False
            # NOT_FOUND for the probe name: the service is there and answering.
        if self.rest_url:
            try:
                requests.get(f"{self.rest_url}/v1/models/__modelyard_probe__", timeout=timeout)
            except requests.RequestException:
                return False
        return True

    def model_status(self, name: str) -> dict[int, tuple[str, str]]:
        """version -> (state name, error message) from GetModelStatus; {} if the model is unknown."""
        try:
            response = self._get_model_status(self._status_request(name), timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise self._rpc_error(exc, f"GetModelStatus({name})") from None
        return {s.version: (STATE_NAMES.get(s.state, str(s.state)), s.status.error_message)
                for s in response.model_version_status}

    def reload_config(self, config: ModelServerConfig, timeout: float | None = None) -> None:
        """HandleReloadConfigRequest. The server replaces its whole model list with `config`.

        It may block until newly added model names have loaded, hence the longer `timeout`.
        A non-OK answer raises ReloadRefused with the server's StatusProto message.
        """
        request = self._messages["ReloadConfigRequest"](config=config.SerializeToString())
        try:
            response = self._reload_config(
                request, timeout=timeout if timeout is not None else max(self.timeout, 60.0))
        except grpc.RpcError as exc:
            error = self._rpc_error(exc, "HandleReloadConfigRequest")
            if isinstance(error, RequestFailed):
                raise ReloadRefused(f"TF Serving at {self.grpc_target} refused the new model "
                                    f"config ({error.grpc_code}): {exc.details()}", error.grpc_code) from None
            raise error from None
        if response.status.error_code != 0:
            code = _code_name(response.status.error_code)
            raise ReloadRefused(f"TF Serving at {self.grpc_target} refused the new model config "
                                f"({code}): {response.status.error_message}", code)

    def wait_available(self, name: str, version: int, deadline_s: float) -> None:
        """Poll GetModelStatus every ~0.2 s until `version` is AVAILABLE.

        END (a failed load, or an unload) raises LoadFailed with the server's message; the
        deadline raises ServingTimeout naming the last state seen.
        """
        deadline = time.monotonic() + deadline_s
        last = "not reported yet"
        while True:
            states = self.model_status(name)
            if version in states:
                state, message = states[version]
                if state == AVAILABLE:
                    return
                if state == END:
                    reason = message or "it was unloaded (END without an error)"
                    raise LoadFailed(f"Version {version} of model {name} failed to load on "
                                     f"{self.grpc_target}: {reason}")
                last = state
            if time.monotonic() >= deadline:
                raise ServingTimeout(f"Version {version} of model {name} did not become AVAILABLE "
                                     f"on {self.grpc_target} within {deadline_s:g} s "
                                     f"(last state: {last})")
            time.sleep(POLL_INTERVAL_S)

    # -- PredictionService --

    @staticmethod
    def _spec(spec: Any, name: str, version: int | None, label: str | None,
              signature: str | None) -> None:
        if version is not None and label is not None:
            raise ValueError("Pass a version or a label, not both")
        spec.name = name
        if version is not None:
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = label
        if signature:
            spec.signature_name = signature

    def predict(self, name: str, inputs: dict[str, np.ndarray], version: int | None = None,
                label: str | None = None, signature: str = "serving_default",
                timeout: float | None = None) -> tuple[dict[str, np.ndarray], int]:
        """Predict; returns (outputs as numpy arrays, the version that served — model_spec.version)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, name, version, label, signature)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        target = f"version {version}" if version is not None else (
            f"label {label!r}" if label is not None else "latest version")
        try:
            response = self._predictions.Predict(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, f"Predict({name}, {target})") from None
        outputs = {key: tf.make_ndarray(value) for key, value in response.outputs.items()}
        return outputs, int(response.model_spec.version.value)

    def signature(self, name: str, version: int | None = None, label: str | None = None,
                  signature: str = "serving_default") -> SignatureInfo:
        """Inputs/outputs (names, dtypes, shapes) of one signature, from GetModelMetadata."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request.model_spec, name, version, label, None)
        request.metadata_field.append("signature_def")
        try:
            response = self._predictions.GetModelMetadata(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, f"GetModelMetadata({name})") from None
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        served = int(response.model_spec.version.value)
        if signature not in signature_map.signature_def:
            raise SignatureMismatch(
                f"Version {served} of model {name} has no signature {signature!r} "
                f"(it has: {', '.join(sorted(signature_map.signature_def)) or 'none'})")
        definition = signature_map.signature_def[signature]
        return SignatureInfo(
            name=signature, method_name=definition.method_name,
            inputs={k: _tensor_info(v) for k, v in definition.inputs.items()},
            outputs={k: _tensor_info(v) for k, v in definition.outputs.items()},
            version=served)
