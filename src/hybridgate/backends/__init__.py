"""Backend adapters: one module per kind, all behind the `Backend` interface, found through `KINDS`."""

from hybridgate.backends._base import (
    Backend,
    BackendConnectError,
    BackendError,
    BackendHTTPError,
    BackendModelMissingError,
    BackendRequest,
    BackendResponse,
    BackendStreamError,
    BackendTimeoutError,
    BackendUnavailableError,
    Batch,
    Lifecycle,
    NoOptions,
)
from hybridgate.backends._registry import KINDS, adapter_class, build_backend

__all__ = [
    "KINDS",
    "Backend",
    "BackendConnectError",
    "BackendError",
    "BackendHTTPError",
    "BackendModelMissingError",
    "BackendRequest",
    "BackendResponse",
    "BackendStreamError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "Batch",
    "Lifecycle",
    "NoOptions",
    "adapter_class",
    "build_backend",
]
