"""One error type for the whole server, mapped to both gRPC and HTTP.

TF Serving reports every failure as a TensorFlow status (code + message); the gRPC
layer forwards the code unchanged and the REST layer maps it to an HTTP status
(tensorflow_serving/model_servers/http_server.cc). Keeping one exception type
means each behaviour is written once and both front ends agree by construction.
"""
from __future__ import annotations

import grpc

# gRPC code -> HTTP status, as ToHTTPStatusCode() in http_server.cc.
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

Code = grpc.StatusCode


class ServingError(Exception):
    """A TensorFlow-style status: a canonical code and a message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)

    @property
    def code_value(self) -> int:
        """Numeric TensorFlow/gRPC code (tensorflow.error.Code uses the same numbers)."""
        return self.code.value[0]

    @property
    def code_name(self) -> str:
        return self.code.name

    def __str__(self) -> str:
        # Same shape as absl::Status::ToString(); TF Serving embeds nested statuses this way.
        return f"{self.code.name}: {self.message}"


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(Code.UNIMPLEMENTED, message)


def unknown(message: str) -> ServingError:
    return ServingError(Code.UNKNOWN, message)


def internal(message: str) -> ServingError:
    return ServingError(Code.INTERNAL, message)


def unavailable(message: str) -> ServingError:
    return ServingError(Code.UNAVAILABLE, message)
