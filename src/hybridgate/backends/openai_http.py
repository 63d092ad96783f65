"""Any OpenAI-compatible server over HTTP (vLLM, llama.cpp's server, OpenAI): pooled keep-alive client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from hybridgate.backends._base import (
    Backend,
    BackendConnectError,
    BackendHTTPError,
    BackendRequest,
    BackendResponse,
    BackendStreamError,
    BackendTimeoutError,
)
from hybridgate.config import BackendConfig
from hybridgate.protocol import Usage

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}


def health_url(base_url: str, path: str) -> str:
    """A health path is resolved against the root of base_url: http://h:p/v1 + /health -> http://h:p/health."""
    if path.startswith(("http://", "https://")):
        return path
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + path.lstrip("/"), "", ""))


def _error_message(status: int, payload: Any, text: str) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        msg = payload["error"].get("message")
        if msg:
            return f"HTTP {status}: {msg}"
    return f"HTTP {status}: {text[:200]}" if text else f"HTTP {status}"


class OpenAIBackend(Backend):
    enforces_timeouts = True

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        assert config.base_url
        self.base_url = config.base_url
        self._health_url = health_url(config.base_url, config.health.path)
        self._headers = {"Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        t = self.config.timeouts
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # sock_read bounds every gap between bytes, so a stream that stalls mid-way fails instead of
            # holding the client until total_s.
            timeout=aiohttp.ClientTimeout(
                total=t.total_s, sock_connect=t.connect_s, sock_read=t.first_byte_s
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"backend {self.name} used before start()")
        return self._session

    async def _open(self, req: BackendRequest, body: bytes) -> aiohttp.ClientResponse:
        """Send the request and wait for the response head, mapping every failure to a BackendError.

        Every deadline is aiohttp's own (`ClientTimeout` on the session: connect, gap between bytes, which
        bounds the first byte and any stall, and total, which covers reading the body too): no asyncio timer
        per call, as each one costs several microseconds on the hot path.
        """
        t = self.config.timeouts
        try:
            resp = await self.session.post(
                self.base_url + _PATHS[req.endpoint], data=body, headers=self._headers
            )
        # aiohttp's timeouts subclass TimeoutError: the specific ones first, to say which it was.
        except aiohttp.ConnectionTimeoutError:
            raise BackendTimeoutError(f"connect timed out after {t.connect_s:g}s") from None
        except aiohttp.ServerTimeoutError:
            raise BackendTimeoutError(
                f"timed out waiting for the first byte after {t.first_byte_s:g}s"
            ) from None
        except TimeoutError:
            raise BackendTimeoutError(
                f"timed out waiting for the first byte after {t.total_s:g}s (total)"
            ) from None
        except aiohttp.ClientConnectorError as e:
            raise BackendConnectError(f"cannot connect to {self.base_url}: {e.os_error or e}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise BackendConnectError(f"request to {self.base_url} failed: {e!r}") from None
        if resp.status >= 400:
            try:
                text = await resp.text()
            except (TimeoutError, aiohttp.ClientError):
                text = ""
            finally:
                resp.release()
            try:
                payload = orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                payload = None
            raise BackendHTTPError(
                _error_message(resp.status, payload, text), status=resp.status, body=payload
            )
        return resp

    async def complete(self, req: BackendRequest) -> BackendResponse:
        t = self.config.timeouts
        resp = await self._open(req, orjson.dumps(req.body))
        try:
            raw = await resp.read()
        except aiohttp.ServerTimeoutError:
            raise BackendTimeoutError(f"response stalled: no data for {t.first_byte_s:g}s") from None
        except TimeoutError:
            raise BackendTimeoutError(f"timed out reading the response after {t.total_s:g}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise BackendConnectError(f"connection lost while reading the response: {e!r}") from None
        finally:
            resp.release()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendHTTPError(f"backend answered invalid JSON: {raw[:120]!r}", status=502) from None
        if not isinstance(body, dict) or "choices" not in body:
            raise BackendHTTPError(f"backend answered an unexpected body: {raw[:120]!r}", status=502)
        usage = Usage.from_dict(body.get("usage")) or Usage(estimated=True)
        return BackendResponse(body, usage)

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        async for batch in self.stream_batches(req):
            for chunk in batch:
                yield chunk

    async def stream_batches(self, req: BackendRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """One group per network read: the events a server writes back to back cost the client one write."""
        t = self.config.timeouts
        body = dict(req.body)
        # Always ask for usage so the call can be costed; the router strips it if the client did not ask.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        resp = await self._open(req, orjson.dumps(body))
        done = False
        partial = b""  # a line cut in two by the network, completed by the next read
        try:
            while not done:
                data = await resp.content.readany()
                lines = (partial + data).split(b"\n")
                partial = lines.pop() if data else b""
                batch, done, error = _events(lines)
                if batch:
                    yield batch
                if error is not None:
                    raise error
                if not data:
                    break
        except aiohttp.ServerTimeoutError:
            raise BackendTimeoutError(f"stream stalled: no data for {t.first_byte_s:g}s") from None
        except TimeoutError:
            raise BackendTimeoutError(f"stream exceeded the total timeout of {t.total_s:g}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise BackendStreamError(f"connection dropped mid-stream: {e!r}") from None
        finally:
            resp.release() if done else resp.close()
        if not done:
            raise BackendStreamError("stream ended without [DONE] (connection closed early)")

    async def check_health(self) -> None:
        h = self.config.health
        try:
            async with asyncio.timeout(h.timeout_s):
                async with self.session.get(self._health_url, headers=self._headers) as resp:
                    if resp.status >= 400:
                        raise BackendHTTPError(
                            f"health check {self._health_url} answered HTTP {resp.status}", status=resp.status
                        )
                    await resp.read()
        except TimeoutError:
            raise BackendTimeoutError(
                f"health check {self._health_url} timed out after {h.timeout_s:g}s"
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            raise BackendConnectError(f"health check {self._health_url} failed: {e}") from None


def _events(lines: list[bytes]) -> tuple[list[dict[str, Any]], bool, BackendStreamError | None]:
    """Parse SSE lines into chunks, up to `[DONE]` (done=True) or a bad event (returned after good ones)."""
    out: list[dict[str, Any]] = []
    for line in lines:
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == b"[DONE]":
            return out, True, None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return out, False, BackendStreamError(f"malformed stream event: {data[:120]!r}")
        if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            return out, False, BackendStreamError(f"backend sent an error mid-stream: {msg}")
        out.append(chunk)
    return out, False, None
