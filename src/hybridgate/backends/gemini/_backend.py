"""Google's Gemini API in its own protocol (generateContent), answered in OpenAI's shapes.

Not Google's OpenAI-compatible endpoint: that one lags the native features and flattens Gemini's errors.
Requests go over the gateway's pooled HTTP client (`transport/`), with the key in `x-goog-api-key`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from hybridgate import transport as _http
from hybridgate.backends._base import (
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
from hybridgate.backends._http_backend import HTTPBackend, checked_key
from hybridgate.backends.gemini._translate import (
    StreamTranslator,
    TranslationError,
    request_body,
    response_body,
)
from hybridgate.config import BackendConfig
from hybridgate.protocol import whole_count

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Statuses that say the gateway's key or project is wrong (not the client's request): fall back.
_CONFIG_STATUSES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "FAILED_PRECONDITION"})
_MAX_MODEL_PAGES = 5


class GeminiOptions(BaseModel):
    """`options` of a gemini backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The API version in every path; v1 is what google-genai uses by default, v1beta has newer features.
    api_version: Literal["v1", "v1beta"] = "v1"
    # At start, list the models (free) and warn about mapped names the API does not serve.
    check_models: bool = True
    # Most connections open to the API at once (unset: `concurrency.max` when set, else no cap).
    max_connections: int | None = Field(None, ge=1)
    # Sent as `safetySettings` with every request: [{category: HARM_CATEGORY_..., threshold: BLOCK_...}].
    safety_settings: list[dict[str, str]] | None = None


class GeminiConfigError(BackendHTTPError):
    """Gemini refused the gateway's own key or project (bad key, no permission, billing, region): the
    operator's problem, never passed to the client as theirs. The next backend is tried."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        super().__init__(message, status=status, body=body)
        self.retryable = True


def _google_error(payload: Any) -> tuple[str, str, set[str]]:
    """(message, status word, detail reasons) of a Google error body; empty strings when it is not one."""
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return "", "", set()
    reasons = {
        str(d.get("reason")) for d in err.get("details") or () if isinstance(d, dict) and d.get("reason")
    }
    return str(err.get("message") or ""), str(err.get("status") or ""), reasons


def http_error(status: int, payload: Any, text: str) -> BackendError:
    """An error answer as the BackendError the router acts on (see the README's error table)."""
    message, word, reasons = _google_error(payload)
    if not message:
        message = text.strip()[:300] or "no error message"
    said = f"HTTP {status}{' ' + word if word else ''}: {message}"
    if status == 404 and "models/" in message:
        return BackendModelMissingError(said, status=status, body=payload)
    if status in (401, 403) or word in _CONFIG_STATUSES or "API_KEY_INVALID" in reasons:
        return GeminiConfigError(f"the gateway's Gemini key or project was refused: {said}", status=status)
    if status == 429 or status >= 500:
        return BackendHTTPError(said, status=status, body=payload)
    # The client's own request (400 INVALID_ARGUMENT and the like): passed back in OpenAI's shape, with
    # Google's message kept.
    body = {
        "error": {
            "message": f"Gemini: {message}",
            "type": "invalid_request_error",
            "param": None,
            "code": word.lower() or None,
        }
    }
    return BackendHTTPError(said, status=status, body=body)


def _translation_error(e: TranslationError) -> BackendHTTPError:
    body = {
        "error": {
            "message": e.message,
            "type": "invalid_request_error",
            "param": e.param,
            "code": "unsupported_parameter",
        }
    }
    return BackendHTTPError(e.message, status=400, body=body)


class GeminiBackend(HTTPBackend):
    """Gemini's native API: chat and completions translated to generateContent / streamGenerateContent."""

    Options = GeminiOptions
    # A probe of a paid API is not free: passive health unless the config asks for the (free) model listing.
    free_health_checks = False

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        if not config.api_key:
            raise ValueError(
                f"backend '{config.name}' of kind gemini needs an api_key (e.g. api_key: ${{GEMINI_API_KEY}})"
            )
        key = checked_key(self.name, config.api_key)
        for public, own in config.models.items():
            if not _MODEL_NAME.match(own.removeprefix("models/")):
                raise ValueError(
                    f"backend '{self.name}': models.{public}: {own!r} is not a Gemini model name "
                    "(letters, digits, '.', '_' and '-', optionally after 'models/')"
                )
        self.base_url = config.base_url or DEFAULT_BASE_URL
        self._origin, base_path = _http.Origin.split(self.base_url)
        self._prefix = f"{base_path.rstrip('/')}/{self.options.api_version}"
        self._headers = (
            "Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
            f"x-goog-api-key: {key}\r\n".encode("ascii")
        )

    def _target(self, model: str, streamed: bool) -> str:
        name = model.removeprefix("models/")
        if streamed:
            return f"{self._prefix}/models/{name}:streamGenerateContent?alt=sse"
        return f"{self._prefix}/models/{name}:generateContent"

    def _body(self, req: BackendRequest) -> bytes:
        try:
            body = request_body(req.endpoint, req.body, req.max_tokens, self.options.safety_settings)
        except TranslationError as e:
            raise _translation_error(e) from None
        return orjson.dumps(body)

    async def _open(self, req: BackendRequest, *, streamed: bool) -> _http.Response:
        body = self._body(req)
        try:
            resp = await self.client.request(
                self._origin,
                "POST",
                self._target(str(req.body.get("model", "")), streamed),
                self._headers,
                body,
                timeouts=self._timeouts if streamed else self._answer_timeouts,
            )
        except _http.HTTPClientError as e:
            raise self._error(e, "head" if streamed else "answer") from None
        if resp.status != 200:  # Google answers success with exactly 200; the SDK treats the rest as errors
            try:
                raw = await resp.read()
            except _http.HTTPClientError:
                raw = b""
            finally:
                resp.release()
            try:
                payload = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                payload = None
            if resp.status < 400:
                raise BackendHTTPError(f"Gemini answered HTTP {resp.status}, not 200", status=502)
            raise http_error(resp.status, payload, raw.decode("utf-8", "replace"))
        return resp

    async def complete(self, req: BackendRequest) -> BackendResponse:
        payload = await self._read_json(await self._open(req, streamed=False), "Gemini")
        try:
            body, usage = response_body(req.endpoint, payload, str(req.body.get("model", "")))
        except ValueError as e:
            raise BackendHTTPError(f"Gemini answered no result: {e}", status=502) from None
        return BackendResponse(body, usage)

    async def stream_batches(self, req: BackendRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """One group of chunks per network read; the usage chunk closes the last group."""
        resp = await self._open(req, streamed=True)
        tr = StreamTranslator(
            req.endpoint, str(req.body.get("model", "")), expected=whole_count(req.body.get("n")) or 1
        )
        partial = b""
        try:
            while True:
                data = await resp.readany()
                lines = (partial + data).split(b"\n")
                partial = lines.pop() if data else b""
                out, error = _feed(tr, lines)
                if error is not None:
                    if out:
                        yield Batch(out)
                    raise error
                if tr.complete:
                    tail = tr.usage_chunk()
                    if tail is not None:
                        out.append(tail)
                    yield Batch(out, True)
                    return
                if not data:
                    raise BackendStreamError(
                        "Gemini's stream ended before its finish reason (connection closed early)"
                    )
                if out:
                    yield Batch(out)
        except _http.HTTPClientError as e:
            raise self._error(e, "stream") from None
        finally:
            if tr.complete:
                resp.release_after_end()
            else:
                resp.release()

    async def _get(self, target: str) -> tuple[int, Any]:
        resp = await self.client.request(
            self._origin, "GET", target, self._headers, timeouts=self._health_timeouts
        )
        try:
            raw = await resp.read()
        finally:
            resp.release()
        try:
            return resp.status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return resp.status, None

    async def served_models(self) -> list[str] | None:
        """The model names the API lists (the listing is free), without the `models/` prefix."""
        if not self.options.check_models:
            return None
        names: list[str] = []
        token = ""
        try:
            for _ in range(_MAX_MODEL_PAGES):
                status, payload = await self._get(
                    f"{self._prefix}/models?pageSize=1000" + (f"&pageToken={token}" if token else "")
                )
                if status != 200 or not isinstance(payload, dict):
                    return None
                for m in payload.get("models") or ():
                    if isinstance(m, dict) and isinstance(m.get("name"), str):
                        names.append(m["name"].removeprefix("models/"))
                token = str(payload.get("nextPageToken") or "")
                if not token.replace("-", "").replace("_", "").isalnum():
                    break
        except _http.HTTPClientError:
            return None
        return names

    async def check_health(self) -> None:
        """The opt-in active probe: the (free) model listing, one entry long."""
        h = self.config.health
        target = f"{self._prefix}/models?pageSize=1"
        try:
            status, payload = await self._get(target)
        except (_http.ReadTimeout, _http.TotalTimeout, _http.ConnectTimeout):
            raise BackendTimeoutError(
                f"health check (model listing) timed out after {h.timeout_s:g}s"
            ) from None
        except _http.HTTPClientError as e:
            raise BackendConnectError(f"health check (model listing) failed: {e.message}") from None
        if status != 200:
            err = http_error(status, payload, "")
            raise BackendHTTPError(f"health check (model listing): {err.message}", status=status)


def _feed(tr: StreamTranslator, lines: list[bytes]) -> tuple[list[dict[str, Any]], BackendStreamError | None]:
    """The chunks for a group of SSE lines, and the error an event carried (after the good chunks)."""
    out: list[dict[str, Any]] = []
    for line in lines:
        line = line.rstrip(b"\r")
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data:
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return out, BackendStreamError(f"malformed stream event from Gemini: {data[:120]!r}")
        if not isinstance(event, dict):
            return out, BackendStreamError(f"unexpected stream event from Gemini: {data[:120]!r}")
        if "error" in event:
            message, word, _ = _google_error(event)
            err = event["error"]
            code = err.get("code") if isinstance(err, dict) else None
            said = " ".join(str(x) for x in (code, word) if x)
            return out, BackendStreamError(
                f"Gemini sent an error mid-stream: {said + ': ' if said else ''}{message or err}"
            )
        out.extend(tr.feed(event))
        if tr.complete:
            break
    return out, None
