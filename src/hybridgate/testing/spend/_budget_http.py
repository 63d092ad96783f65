"""The transports that put the budget meter in front of every call a client makes (see budget.py).

They work with httpx and with httpx2 (which openai 3 is built on) alike: the transports are duck-typed, the
stream wrapper subclasses the client's own flavour, and the real I/O is done by an inner transport of the
client's flavour.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import orjson

from hybridgate.testing.spend.budget import Meter, Reservation, _find_usage


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


def _is_sse(response: Any) -> tuple[bool, bool]:
    ct = response.headers.get("content-type", "")
    encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
    return ct.startswith("text/event-stream"), encoded


class _Metered:
    """Passes a response's bytes through, watching for usage; settles the reservation when closed."""

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

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._scan.feed(chunk)
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._meter.settle(self._r, self._scan.usage)


@functools.cache
def _stream_class(flavour: str, asynchronous: bool) -> type:
    # The client asserts the stream is its own flavour's (a)sync byte stream; subclass that one.
    mod = importlib.import_module(flavour)
    base = mod.AsyncByteStream if asynchronous else mod.SyncByteStream
    return type("MeteredStream", (_Metered, base), {})


def _metered(response: Any, meter: Meter, r: Reservation, encoded: bool, asynchronous: bool) -> Any:
    flavour = type(response).__module__.split(".")[0]
    return _stream_class(flavour, asynchronous)(response.stream, meter, r, encoded)


def _settle_body(meter: Meter, r: Reservation, content: bytes) -> None:
    try:
        usage = _find_usage(orjson.loads(content))
    except orjson.JSONDecodeError:
        usage = None
    meter.settle(r, usage)


class BudgetTransport:
    """A sync transport that meters every call through `meter`, then lets `inner` do the I/O."""

    def __init__(self, meter: Meter, inner: Any) -> None:
        self.meter = meter
        self.inner = inner

    def handle_request(self, request: Any) -> Any:
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
            response.stream = _metered(response, self.meter, r, encoded, asynchronous=False)
            return response
        try:
            response.read()
        except BaseException:
            self.meter.ledger.settle(r, None)  # it may have run: the worst case stays charged
            raise
        _settle_body(self.meter, r, response.content)
        return response

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> BudgetTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


class AsyncBudgetTransport:
    """The asyncio twin of BudgetTransport."""

    def __init__(self, meter: Meter, inner: Any) -> None:
        self.meter = meter
        self.inner = inner

    async def handle_async_request(self, request: Any) -> Any:
        r = self.meter.open(request, await request.aread())
        if r is None:
            return await self.inner.handle_async_request(request)
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            self.meter.ledger.settle(r, 0.0)
            raise
        if response.status_code >= 400:
            self.meter.ledger.settle(r, 0.0)
            return response
        sse, encoded = _is_sse(response)
        if sse:
            response.stream = _metered(response, self.meter, r, encoded, asynchronous=True)
            return response
        try:
            await response.aread()
        except BaseException:
            self.meter.ledger.settle(r, None)
            raise
        _settle_body(self.meter, r, response.content)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> AsyncBudgetTransport:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.aclose()


def openai_httpx() -> ModuleType:
    """The httpx flavour the installed openai SDK is built on (httpx, or httpx2 from openai 3 on)."""
    import openai

    return importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


def metered_http_client(meter: Meter, *, asynchronous: bool = False, timeout: float = 60.0) -> Any:
    """An http client for `openai.OpenAI(http_client=...)` (or AsyncOpenAI) whose every call is metered."""
    import openai

    mod = openai_httpx()
    if asynchronous:
        atransport: Any = AsyncBudgetTransport(meter, mod.AsyncHTTPTransport())
        return openai.DefaultAsyncHttpxClient(transport=atransport, timeout=timeout)
    transport = BudgetTransport(meter, mod.HTTPTransport())
    return openai.DefaultHttpxClient(transport=transport, timeout=timeout)  # type: ignore[arg-type]  # duck-typed
