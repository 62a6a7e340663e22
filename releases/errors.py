"""The releases app's errors. Django-free: ``releases/deploy`` (the endpoint drivers), the TF
Serving client and the image builder raise them too.

``ReleaseError`` is what the workflow refuses (a 400 unless a subclass or ``code`` says otherwise).
``EndpointError`` (a serving endpoint: the TF Serving protocol, the model repository's files) and
``DockerEngineError`` (the Docker engine: unreachable, an operation refused, a container or an
image build that failed) are failures of something outside Modelyard: a promotion or a build
records them on the release (retryable), and one that reaches the API (a rollback or canary
completion runs its driver inside the request) is answered like any unexpected failure, a logged
500 ``server_error`` with the request id, but with its message. The API maps them all by their
status and code (``registry.errors.ModelyardError``).
"""
from __future__ import annotations

from registry.errors import ModelyardError


class ReleaseError(ModelyardError):
    """Releases, approvals, promotions and endpoints: what the workflow refuses."""


class EndpointError(ReleaseError):
    """A serving endpoint failed or refused a change: the TF Serving server, its model repository."""

    status_code = 500
    code = "server_error"


class DockerEngineError(ReleaseError):
    """The Docker engine is unreachable or an operation on it failed (a container, an image build
    or push). ``retryable``: the same call may work later (engine down, 5xx, a registry hiccup)
    rather than needing a change (bad image, GPU not available, a wrong spec)."""

    status_code = 500
    code = "server_error"

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
