"""The typed context one request carries between the API, the ledger and the request log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridgate.auth import Principal
    from hybridgate.router import Attempt


@dataclass(slots=True)
class RequestContext:
    """What is known of one request so far; the API fills it in, `_account` reads it once at the end."""

    request_id: str
    path: str
    status: int = 0
    principal: Principal | None = None
    model: str = ""
    backend: str | None = None
    attempts: list[Attempt] | None = None
    error: str | None = None
    # A failure after the stream's head was sent (the status stays 200 on the wire; logged as 502).
    stream_error: str | None = None


__all__ = ["RequestContext"]
