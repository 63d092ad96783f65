"""Any OpenAI-compatible server over HTTP (vLLM, llama.cpp's server, OpenAI): pooled keep-alive client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field

from hybridgate import transport as _http
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
    Batch,
)
from hybridgate.config import BackendConfig
from hybridgate.protocol import Usage

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
# How OpenAI, vLLM, Ollama and others say a model is not served (with 404, or OpenAI's code).
_MODEL_MISSING = re.compile(r"model\b.*\b(does not exist|not found|not exist|is not served|unknown)", re.I)


class OpenAIOptions(BaseModel):
    """`options` of an openai backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # At start, GET {base_url}/models and warn about mapped models the server does not list (free: a GET).
    check_models: bool = True
    # Most connections open to the server at once; a burst waits for one instead of opening more.
    # Unset: `concurrency.max` when set, else no cap.
    max_connections: int | None = Field(None, ge=1)


def _model_missing(status: int, payload: Any, message: str) -> bool:
    """Whether an error answer says the requested model is not served (the config maps it wrong)."""
    err = payload.get("error") if isinstance(payload, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    if code == "model_not_found":
        return True
    return status == 404 and bool(_MODEL_MISSING.search(message))


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
    """Any OpenAI-compatible HTTP server: vLLM, llama.cpp's server, Ollama, OpenAI itself."""

    enforces_timeouts = True
    Options = OpenAIOptions

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        if not config.base_url:
            raise ValueError(f"backend '{config.name}' of kind openai needs a base_url")
        self.base_url = config.base_url
        self._origin, base_path = _http.Origin.split(config.base_url)
        self._targets = {ep: base_path.rstrip("/") + p for ep, p in _PATHS.items()}
        self._models_target = base_path.rstrip("/") + "/models"
        self._health_url = health_url(config.base_url, config.health.path)
        self._health_origin, self._health_target = _http.Origin.split(self._health_url)
        # Header lines sent with every call, encoded once. Identity: a compressed stream would be held back
        # by the compressor, and answers are small.
        lines = ["Content-Type: application/json", "Accept-Encoding: identity"]
        if config.api_key:
            key = config.api_key
            if any(c in key for c in "\r\n\0") or not key.isascii():
                # e.g. a key read from a file with its trailing newline: it would break the request's head
                raise ValueError(
                    f"backend '{self.name}': api_key has a line break or a non-ASCII character; "
                    "check the value (or the ${...} variable) it comes from"
                )
            lines.append(f"Authorization: Bearer {key}")
        self._headers = "".join(f"{h}\r\n" for h in lines).encode("ascii")
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
        cap = self.options.max_connections or (c.max if c is not None else None)
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

    async def _open(self, req: BackendRequest, body: bytes, *, streamed: bool) -> _http.Response:
        """Send the request and wait for the response head, mapping every failure to a BackendError."""
        try:
            resp = await self.client.request(
                self._origin,
                "POST",
                self._targets[req.endpoint],
                self._headers,
                body,
                timeouts=self._timeouts if streamed else self._answer_timeouts,
            )
        except _http.HTTPClientError as e:
            raise self._error(e, "head" if streamed else "answer") from None
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except _http.HTTPClientError:
                raw = b""
            finally:
                resp.release()
            text = raw.decode("utf-8", "replace")
            try:
                payload = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                payload = None
            message = _error_message(resp.status, payload, text)
            if _model_missing(resp.status, payload, message):
                raise BackendModelMissingError(message, status=resp.status, body=payload)
            raise BackendHTTPError(message, status=resp.status, body=payload)
        return resp

    async def complete(self, req: BackendRequest) -> BackendResponse:
        resp = await self._open(req, orjson.dumps(req.body), streamed=False)
        try:
            raw = await resp.read()
        except _http.HTTPClientError as e:
            raise self._error(e, "answer") from None
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
        body = dict(req.body)
        # Always ask for usage so the call can be costed; the router strips it if the client did not ask.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        resp = await self._open(req, orjson.dumps(body), streamed=True)
        done = False
        partial = b""  # a line cut in two by the network, completed by the next read
        try:
            while not done:
                data = await resp.readany()
                lines = (partial + data).split(b"\n")
                partial = lines.pop() if data else b""
                batch, done, error = _events(lines)
                if batch:
                    yield Batch(batch, done)
                if error is not None:
                    raise error
                if not data:
                    break
        except _http.HTTPClientError as e:
            raise self._error(e, "stream") from None
        finally:
            # Past [DONE] the connection is reused once the body's last bytes are in; otherwise it is closed.
            if done:
                resp.release_after_end()
            else:
                resp.release()
        if not done:
            raise BackendStreamError("stream ended without [DONE] (connection closed early)")

    async def served_models(self) -> list[str] | None:
        """The model ids the server lists at {base_url}/models; None when it cannot tell (or not asked)."""
        if not self.options.check_models:
            return None
        try:
            resp = await self.client.request(
                self._origin, "GET", self._models_target, self._headers, timeouts=self._health_timeouts
            )
            try:
                raw = await resp.read()
            finally:
                resp.release()
        except _http.HTTPClientError:
            return None
        if resp.status != 200:
            return None
        try:
            data = orjson.loads(raw).get("data")
            return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return None

    async def check_health(self) -> None:
        h = self.config.health
        try:
            resp = await self.client.request(
                self._health_origin, "GET", self._health_target, self._headers, timeouts=self._health_timeouts
            )
            try:
                await resp.read()
            finally:
                resp.release()
        except (_http.ReadTimeout, _http.TotalTimeout, _http.ConnectTimeout):
            raise BackendTimeoutError(
                f"health check {self._health_url} timed out after {h.timeout_s:g}s"
            ) from None
        except _http.HTTPClientError as e:
            raise BackendConnectError(f"health check {self._health_url} failed: {e.message}") from None
        if resp.status >= 400:
            raise BackendHTTPError(
                f"health check {self._health_url} answered HTTP {resp.status}", status=resp.status
            )


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
