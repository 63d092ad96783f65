"""What the kinds that call a server over the gateway's pooled HTTP client share (openai, gemini).

The pool's life (opened at start, capped per origin, closed at close), the deadlines each call runs
under, a key checked before it goes into a request head, and one reading of the client's failures as
the BackendErrors the router acts on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from hybridgate import transport as _http
from hybridgate.backends._base import (
    Backend,
    BackendConnectError,
    BackendError,
    BackendHTTPError,
    BackendRequest,
    BackendStreamError,
    BackendTimeoutError,
)
from hybridgate.config import BackendConfig


def checked_key(backend: str, key: str) -> str:
    """`key`, refused when it would break a request head (a line break, e.g. read from a file with its
    trailing newline, or a non-ASCII character)."""
    if any(c in key for c in "\r\n\0") or not key.isascii():
        raise ValueError(
            f"backend '{backend}': api_key has a line break or a non-ASCII character; "
            "check the value (or the ${...} variable) it comes from"
        )
    return key


class HTTPBackend(Backend):
    """A backend reached over `transport.HTTPClient`; its `Options` may set `max_connections`."""

    enforces_timeouts = True

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.base_url = config.base_url or ""
        t = config.timeouts
        # `read_s` bounds every gap between bytes, so a stream that stalls mid-way fails instead of holding
        # the client until total_s.
        self._timeouts = _http.Timeouts(connect_s=t.connect_s, read_s=t.first_byte_s, total_s=t.total_s)
        # A non-streamed answer comes in one piece once generated: it waits up to answer_s, not first_byte_s.
        self._answer_timeouts = _http.Timeouts(connect_s=t.connect_s, read_s=t.answer, total_s=t.total_s)
        h = config.health.timeout_s  # the client's total deadline bounds the whole check
        self._health_timeouts = _http.Timeouts(connect_s=min(h, t.connect_s), read_s=h, total_s=h)
        self._client: _http.HTTPClient | None = None

    async def start(self) -> None:
        c = self.config.concurrency
        cap = getattr(self.options, "max_connections", None) or (c.max if c is not None else None)
        self._client = _http.HTTPClient(keepalive_s=60.0, max_connections_per_origin=cap)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> _http.HTTPClient:
        if self._client is None:
            raise RuntimeError(f"backend {self.name} used before start()")
        return self._client

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        """The chunks one by one (HTTP kinds implement `stream_batches`, which the gateway uses)."""
        async for batch in self.stream_batches(req):
            for chunk in batch:
                yield chunk

    async def _read_json(self, resp: _http.Response, who: str) -> dict[str, Any]:
        """A whole non-streamed answer as a JSON object; failures as BackendErrors (502 for a bad body)."""
        try:
            raw = await resp.read()
        except _http.HTTPClientError as e:
            raise self._error(e, "answer") from None
        finally:
            resp.release()
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendHTTPError(f"{who} answered invalid JSON: {raw[:120]!r}", status=502) from None
        if not isinstance(payload, dict):
            raise BackendHTTPError(f"{who} answered an unexpected body: {raw[:120]!r}", status=502)
        return payload

    def _error(self, e: _http.HTTPClientError, phase: str) -> BackendError:
        """The client's failure as the BackendError the router acts on, saying where it happened.

        `phase`: "head" (a stream's connecting, sending, waiting for the status line), "answer" (a
        non-streamed call, up to its whole answer) or "stream" (reading events).
        """
        t = self.config.timeouts
        if isinstance(e, _http.ConnectTimeout):
            return BackendTimeoutError(f"connect timed out after {t.connect_s:g}s")
        if isinstance(e, _http.ConnectError):
            return BackendConnectError(e.message)
        if isinstance(e, _http.ReadTimeout):
            # The request went out: the backend may have generated (and billed) an answer nobody received.
            if phase == "answer":
                return BackendTimeoutError(
                    f"no answer within {t.answer:g}s (timeouts.answer_s)", maybe_billed=True
                )
            if phase == "head" and e.first_byte:
                return BackendTimeoutError(
                    f"timed out waiting for the first byte after {t.first_byte_s:g}s", maybe_billed=True
                )
            what = "stream stalled" if phase == "stream" else "response stalled"
            return BackendTimeoutError(f"{what}: no data for {t.first_byte_s:g}s", maybe_billed=True)
        if isinstance(e, _http.TotalTimeout):
            if phase == "stream":
                return BackendTimeoutError(
                    f"stream exceeded the total timeout of {t.total_s:g}s", maybe_billed=True
                )
            return BackendTimeoutError(
                f"no complete answer within the total timeout of {t.total_s:g}s", maybe_billed=True
            )
        if phase == "stream":
            return BackendStreamError(f"connection dropped mid-stream: {e.message}")
        return BackendConnectError(f"request to {self.base_url} failed: {e.message}")
