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
    BackendConnectError,
    BackendHTTPError,
    BackendModelMissingError,
    BackendRequest,
    BackendResponse,
    BackendStreamError,
    BackendTimeoutError,
    Batch,
)
from hybridgate.backends._http_backend import HTTPBackend, checked_key
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


class OpenAIBackend(HTTPBackend):
    """Any OpenAI-compatible HTTP server: vLLM, llama.cpp's server, Ollama, OpenAI itself."""

    Options = OpenAIOptions

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        if not config.base_url:
            raise ValueError(f"backend '{config.name}' of kind openai needs a base_url")
        self._origin, base_path = _http.Origin.split(config.base_url)
        self._targets = {ep: base_path.rstrip("/") + p for ep, p in _PATHS.items()}
        self._models_target = base_path.rstrip("/") + "/models"
        self._health_url = health_url(config.base_url, config.health.path)
        self._health_origin, self._health_target = _http.Origin.split(self._health_url)
        # Header lines sent with every call, encoded once. Identity: a compressed stream would be held back
        # by the compressor, and answers are small.
        lines = ["Content-Type: application/json", "Accept-Encoding: identity"]
        if config.api_key:
            lines.append(f"Authorization: Bearer {checked_key(self.name, config.api_key)}")
        self._headers = "".join(f"{h}\r\n" for h in lines).encode("ascii")

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
        body = await self._read_json(resp, "backend")
        if "choices" not in body:
            raise BackendHTTPError(
                f"backend answered an unexpected body: {orjson.dumps(body)[:120]!r}", status=502
            )
        usage = Usage.from_dict(body.get("usage")) or Usage(estimated=True)
        return BackendResponse(body, usage)

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
                ended = not data
                group, partial, done, error = _group(partial, data)
                data = b""
                if group is not None:
                    yield group
                    group = None  # not held while the next read waits (most of a stream's life)
                if error is not None:
                    raise error
                if ended:
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


def _group(partial: bytes, data: bytes) -> tuple[Batch | None, bytes, bool, BackendStreamError | None]:
    """The events of one read (after the line a previous read cut in two), as a group; the new partial
    line, whether `[DONE]` came, and a bad event's error (after the good ones)."""
    lines = (partial + data).split(b"\n")
    partial = lines.pop() if data else b""
    batch, raw, done, error = _events(lines)
    # The events' own bytes ride along: written on untouched when nothing must change.
    return (Batch(batch, done, b"\n\n".join(raw) + b"\n\n") if batch else None), partial, done, error


def _events(
    lines: list[bytes],
) -> tuple[list[dict[str, Any]], list[bytes], bool, BackendStreamError | None]:
    """Parse SSE lines into chunks, up to `[DONE]` (done=True) or a bad event (returned after good ones).

    Also the `data:` lines of those chunks, as received (for `Batch.raw`); a chunk that is not a JSON
    object is not forwarded as it came (the gateway writes the chunks themselves then).
    """
    out: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for line in lines:
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == b"[DONE]":
            return out, raw, True, None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return out, raw, False, BackendStreamError(f"malformed stream event: {data[:120]!r}")
        if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            return out, raw, False, BackendStreamError(f"backend sent an error mid-stream: {msg}")
        out.append(chunk)
        raw.append(line)
    return out, raw, False, None
