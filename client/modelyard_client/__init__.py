"""Modelyard client: ``Client`` for Python, ``modelyard`` for shells and pipelines."""
from modelyard_client.client import ApiError, Client

__all__ = ["ApiError", "Client"]
__version__ = "1.0.0"
