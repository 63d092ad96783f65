"""Transport: the lean HTTP/1.1 client every call to an HTTP backend goes through (the hot path)."""

from hybridgate.transport._http import (
    ConnectError,
    ConnectionDropped,
    ConnectTimeout,
    HTTPClient,
    HTTPClientError,
    InvalidResponse,
    Origin,
    ReadTimeout,
    Response,
    Timeouts,
    TotalTimeout,
)

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionDropped",
    "HTTPClient",
    "HTTPClientError",
    "InvalidResponse",
    "Origin",
    "ReadTimeout",
    "Response",
    "Timeouts",
    "TotalTimeout",
]
