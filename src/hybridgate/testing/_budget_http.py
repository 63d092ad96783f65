"""The httpx transports that put the budget meter in front of every call a client makes (see budget.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson

from hybridgate.testing.budget import Meter, Reservation, _find_usage


class _UsageScanner:
    """Watches SSE bytes for usage objects without holding more than one partial line."""

    def __init__(self, encoded: bool) -> None:
        self.usage: Any = None
        self._buf = b""
        self._blind = encoded  # compressed events cannot be read here: the worst case stays charged

    def feed(self, chunk: bytes) -> None:
        if self._blind:
            return
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    u = _find_usage(orjson.loads(line[5:].strip()))
                except orjson.JSONDecodeError:
                    continue
                if u is not None:
                    self.usage = u


def _is_sse(response: httpx.Response) -> tuple[bool, bool]:
    ct = response.headers.get("content-type", "")
    encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
    return ct.startswith("text/event-stream"), encoded


class _MeteredStream(httpx.SyncByteStream):
    def __init__(self, inner: Any, meter: Meter, r: Reservation, encoded: bool) -> None:
        self._inner, self._meter, self._r = inner, meter, r
        self._scan = _UsageScanner(encoded)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._scan.feed(chunk)
            yield chunk

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._meter.settle(self._r, self._scan.usage)


class _AsyncMeteredStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, meter: Meter, r: Reservation, encoded: bool) -> None:
        self._inner, self._meter, self._r = inner, meter, r
        self._scan = _UsageScanner(encoded)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._scan.feed(chunk)
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._meter.settle(self._r, self._scan.usage)


class BudgetTransport(httpx.BaseTransport):
    """An httpx transport that meters every call through `meter`: `httpx.Client(transport=...)`."""

    def __init__(self, meter: Meter, inner: httpx.BaseTransport | None = None) -> None:
        self.meter = meter
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.meter.open(request, request.read())
        if r is None:
            return self.inner.handle_request(request)
        try:
            response = self.inner.handle_request(request)
        except BaseException:
            self.meter.ledger.settle(r, 0.0)  # never reached the API: nothing to pay
            raise
        if response.status_code >= 400:  # the APIs bill answers, not refusals
            self.meter.ledger.settle(r, 0.0)
            return response
        sse, encoded = _is_sse(response)
        if sse:
            response.stream = _MeteredStream(response.stream, self.meter, r, encoded)
            return response
        try:
            response.read()
            self.meter.settle(r, _find_usage(orjson.loads(response.content)))
        except (orjson.JSONDecodeError, httpx.HTTPError):
            self.meter.ledger.settle(r, None)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncBudgetTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of BudgetTransport, for `httpx.AsyncClient` and `openai.AsyncOpenAI`."""

    def __init__(self, meter: Meter, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.meter = meter
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        r = self.meter.open(request, await request.aread())
        if r is None:
            return await self.inner.handle_async_request(request)
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            self.meter.ledger.settle(r, 0.0)
            raise
        if response.status_code >= 400:  # the APIs bill answers, not refusals
            self.meter.ledger.settle(r, 0.0)
            return response
        sse, encoded = _is_sse(response)
        if sse:
            response.stream = _AsyncMeteredStream(response.stream, self.meter, r, encoded)
            return response
        try:
            await response.aread()
            self.meter.settle(r, _find_usage(orjson.loads(response.content)))
        except (orjson.JSONDecodeError, httpx.HTTPError):
            self.meter.ledger.settle(r, None)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
