"""Backend adapters: one module per kind, all behind the `Backend` interface."""

from hybridgate.backends._base import (
    Backend,
    BackendConnectError,
    BackendError,
    BackendHTTPError,
    BackendRequest,
    BackendResponse,
    BackendStreamError,
    BackendTimeoutError,
    BackendUnavailableError,
    Batch,
)
from hybridgate.config import BackendConfig


def build_backend(config: BackendConfig) -> Backend:
    """Create the adapter for a backend's kind (imports lazily: optional extras stay optional)."""
    if config.kind == "mock":
        from hybridgate.backends.mock import MockBackend

        return MockBackend(config)
    if config.kind == "openai":
        from hybridgate.backends.openai_http import OpenAIBackend

        return OpenAIBackend(config)
    if config.kind == "llamacpp":
        from hybridgate.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(config)
    raise ValueError(f"unknown backend kind {config.kind!r}")


__all__ = [
    "Backend",
    "BackendConnectError",
    "BackendError",
    "BackendHTTPError",
    "BackendRequest",
    "BackendResponse",
    "BackendStreamError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "Batch",
    "build_backend",
]
