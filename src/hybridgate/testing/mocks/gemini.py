"""`hybridgate mock-gemini`: a faithful Gemini API server on loopback, for free, deterministic tests.

What it serves, as Google's `generativelanguage` API does (checked by running the official google-genai
SDK against it; see tests/test_gemini_mock.py):

- `POST /{v1,v1beta}/models/{model}:generateContent`, and `:streamGenerateContent` (`?alt=sse`: one whole
  GenerateContentResponse per `data:` event, the finish reason and the complete usage on the last one;
  without it, a JSON array of them), the key in `x-goog-api-key` (or `?key=`);
- `GET /{v1,v1beta}/models` (paged) and `GET /{v1,v1beta}/models/{model}`;
- Google's error bodies: `{"error": {"code", "message", "status", "details"}}`; unknown fields are refused
  as Google refuses them, so a client that sends a wrong field name finds out here, for free.

Answers come from the same engine as `hybridgate mock-server` ("Paris" for the capital of France, stable
text for anything else). Deterministic content triggers: a prompt containing `mock:block` is blocked
(promptFeedback.blockReason SAFETY, no candidates); one containing `mock:safety` is cut half way with
finishReason SAFETY. Faults: those of mock-server (latency, failures, hang, drop or stall mid-stream) plus
`error_mid_stream` (an `{"error": ...}` event half way); all can be changed while it runs through
GET/POST /_mock/config, behind the key when one is set. GET /health answers 200 (not a Google route).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import ValidationError

from hybridgate._asgi import ClientGone, Receive, Scope, Send, header, read_body, send_json
from hybridgate.backends.mock import Generation, MockBehaviour, MockEngine, tokenize
from hybridgate.protocol import Operation, PayloadTooLargeError
from hybridgate.testing.mocks._base import MockASGIServer
from hybridgate.testing.mocks.openai import MockDroppedConnection, option_errors

DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"x-content-type-options", b"nosniff")]
_VERSIONS = ("v1", "v1beta")
_CALL = re.compile(r"^/(v1|v1beta)/models/([^/:]+):(generateContent|streamGenerateContent)$")
_MODEL = re.compile(r"^/(v1|v1beta)/models/([^/:]+)$")
_LIST = re.compile(r"^/(v1|v1beta)/models$")
# Google's status word and stock message per HTTP status, for injected failures.
_STATUS_WORDS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}
_TOP_FIELDS = frozenset(
    {
        "contents",
        "systemInstruction",
        "generationConfig",
        "safetySettings",
        "tools",
        "toolConfig",
        "cachedContent",
    }
)
_CONFIG_FIELDS = frozenset(
    {
        "temperature",
        "topP",
        "topK",
        "candidateCount",
        "maxOutputTokens",
        "stopSequences",
        "presencePenalty",
        "frequencyPenalty",
        "seed",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseLogprobs",
        "logprobs",
        "responseModalities",
        "thinkingConfig",
        "mediaResolution",
        "speechConfig",
        "enableEnhancedCivicAnswers",
    }
)
_PART_FIELDS = frozenset(
    {
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
    }
)
_CONFIG_KEYS = ("error_mid_stream",)


class GoogleError(Exception):
    """An error answer in Google's shape."""

    def __init__(self, code: int, message: str, status: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or _STATUS_WORDS.get(code, ("UNKNOWN", ""))[0]
        self.reason = reason

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.reason:
            err["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
        return {"error": err}


def _invalid(message: str) -> GoogleError:
    return GoogleError(400, message, "INVALID_ARGUMENT")


def failure(status: int) -> GoogleError:
    word, message = _STATUS_WORDS.get(status, ("UNKNOWN", f"mock: injected failure (status {status})"))
    return GoogleError(status, message, word)


@dataclass
class GeminiFaults:
    """Faults only Gemini has (the shared ones live in MockBehaviour)."""

    error_mid_stream: bool = False


@dataclass
class _Request:
    version: str
    model: str
    text: str  # everything the model reads, for the engine
    n_turns: int
    max_tokens: int | None
    stops: list[str]
    candidates: int


class GeminiMockServer(MockASGIServer):
    def __init__(
        self,
        behaviour: MockBehaviour,
        models: list[str] | None = None,
        api_key: str | None = None,
        max_body_bytes: int = 20 * 1024 * 1024,
    ) -> None:
        super().__init__()
        self.engine = MockEngine(behaviour)
        self.faults = GeminiFaults()
        self.models = [m.removeprefix("models/") for m in models] if models else list(DEFAULT_MODELS)
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        # The last request body per route, for tests that check what a client sent.
        self.last_body: dict[str, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            try:
                body = await read_body(scope, receive, self.max_body_bytes)
            except PayloadTooLargeError:
                raise _invalid(
                    f"Request payload size exceeds the limit: {self.max_body_bytes} bytes."
                ) from None
            if path == "/health" and method == "GET":
                await send_json(send, 200, {"status": "ok"})
                return
            if path == "/_mock/config":
                self._check_key(scope, query)
                await self._config(method, body, send)
                return
            if m := _CALL.match(path):
                self._allow(method, "POST")
                self._check_key(scope, query)
                version, model, verb = m.groups()
                streamed = verb == "streamGenerateContent"
                sse = query.get("alt", [""])[0] == "sse"
                await self._until_disconnect(
                    receive, self._generate(version, model, body, streamed, sse, send)
                )
                return
            if m := _LIST.match(path):
                self._allow(method, "GET")
                self._check_key(scope, query)
                await self._list(query, send)
                return
            if m := _MODEL.match(path):
                self._allow(method, "GET")
                self._check_key(scope, query)
                model = m.group(2)
                if model not in self.models:
                    raise GoogleError(404, f"models/{model} is not found for API version {m.group(1)}.")
                await send_json(send, 200, self._model(model))
                return
            raise GoogleError(404, f"The requested URL {path} was not found on this server.", "NOT_FOUND")
        except GoogleError as e:
            await send_json(send, e.code, e.body())
        except ClientGone:
            return

    # ---- plumbing -------------------------------------------------------------------------------------

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise GoogleError(405, f"Method {method} is not allowed here; use {allowed}.", "UNIMPLEMENTED")

    def _check_key(self, scope: Scope, query: dict[str, list[str]]) -> None:
        if self.api_key is None:
            return
        key = header(scope, b"x-goog-api-key") or (query.get("key") or [""])[0]
        if not key:
            raise GoogleError(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
                "PERMISSION_DENIED",
            )
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise GoogleError(
                400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"
            )

    async def _config(self, method: str, body: bytes, send: Send) -> None:
        if method == "POST":
            try:
                changes = orjson.loads(body) if body.strip() else {}
            except orjson.JSONDecodeError:
                changes = None
            if not isinstance(changes, dict):
                raise _invalid('The mock config must be a JSON object of settings, e.g. {"hang": true}.')
            ours = {k: changes.pop(k) for k in _CONFIG_KEYS if k in changes}
            for k, v in ours.items():
                if not isinstance(v, bool):
                    raise _invalid(f"Invalid mock config: '{k}': must be true or false")
            try:
                self.engine.behaviour.update(changes)
            except ValidationError as e:
                refused = option_errors(e)
                raise _invalid(
                    "Invalid mock config: " + "; ".join(f"'{name}': {why}" for name, why in refused)
                ) from None
            for k, v in ours.items():
                setattr(self.faults, k, v)
        elif method != "GET":
            raise GoogleError(405, f"Method {method} is not allowed here; use GET or POST.", "UNIMPLEMENTED")
        await send_json(
            send,
            200,
            {
                **self.engine.behaviour.as_dict(),
                "error_mid_stream": self.faults.error_mid_stream,
                "requests": self.engine.requests,
                "in_flight": self.in_flight,
            },
        )

    def _model(self, name: str) -> dict[str, Any]:
        return {
            "name": f"models/{name}",
            "version": "001",
            "displayName": name.replace("-", " ").title(),
            "description": "hybridgate mock-gemini model",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
            "temperature": 1.0,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2.0,
        }

    async def _list(self, query: dict[str, list[str]], send: Send) -> None:
        try:
            size = int((query.get("pageSize") or ["50"])[0])
            start = int((query.get("pageToken") or ["0"])[0] or 0)
        except ValueError:
            raise _invalid("Invalid pageSize or pageToken.") from None
        size = max(1, min(size, 1000))
        page = self.models[start : start + size]
        out: dict[str, Any] = {"models": [self._model(m) for m in page]}
        if start + size < len(self.models):
            out["nextPageToken"] = str(start + size)
        await send_json(send, 200, out)

    # ---- generation -----------------------------------------------------------------------------------

    def _parse(self, version: str, model: str, raw: bytes) -> _Request:
        name = model.removeprefix("models/")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _invalid("Invalid JSON payload received. Unexpected token.") from None
        if not isinstance(body, dict):
            raise _invalid("Invalid JSON payload received. Expected an object.")
        self.last_body = body
        for k in body:
            if k not in _TOP_FIELDS:
                raise _invalid(f'Invalid JSON payload received. Unknown name "{k}": Cannot find field.')
        if name not in self.models:
            raise GoogleError(
                404,
                f"models/{name} is not found for API version {version}, or is not supported for "
                "generateContent. Call ListModels to see the list of available models and their "
                "supported methods.",
            )
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _invalid("* GenerateContentRequest.contents: contents is not specified\n")
        texts: list[str] = []
        system = body.get("systemInstruction")
        if system is not None:
            texts.extend(self._texts(system, "system_instruction", roles=("user", "system", None)))
        for i, c in enumerate(contents):
            texts.extend(self._texts(c, f"contents[{i}]", roles=("user", "model", None)))
        config = body.get("generationConfig") or {}
        if not isinstance(config, dict):
            raise _invalid("Invalid JSON payload received. 'generation_config' must be an object.")
        for k in config:
            if k not in _CONFIG_FIELDS:
                raise _invalid(
                    f"Invalid JSON payload received. Unknown name \"{k}\" at 'generation_config': "
                    "Cannot find field."
                )
        n = config.get("candidateCount", 1)
        if not isinstance(n, int) or not 1 <= n <= 8:
            raise _invalid("* GenerateContentRequest.generation_config.candidate_count: must be 1 to 8.\n")
        limit = config.get("maxOutputTokens")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise _invalid(
                "* GenerateContentRequest.generation_config.max_output_tokens: must be positive.\n"
            )
        stops = config.get("stopSequences") or []
        if not isinstance(stops, list) or len(stops) > 5 or not all(isinstance(s, str) for s in stops):
            raise _invalid("* GenerateContentRequest.generation_config.stop_sequences: at most 5 strings.\n")
        t = config.get("temperature")
        if t is not None and (not isinstance(t, int | float) or not 0 <= t <= 2):
            raise _invalid("* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0].\n")
        return _Request(version, name, "\n".join(texts), len(contents), limit, stops, n)

    @staticmethod
    def _texts(content: Any, where: str, roles: tuple[str | None, ...]) -> list[str]:
        if not isinstance(content, dict):
            raise _invalid(f"Invalid JSON payload received. '{where}' must be an object.")
        role = content.get("role")
        if role not in roles:
            raise _invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n")
        out: list[str] = []
        for j, p in enumerate(parts):
            if not isinstance(p, dict) or len(p.keys() & _PART_FIELDS) != 1:
                raise _invalid(
                    f"* GenerateContentRequest.{where}.parts[{j}].data: required oneof field 'data' must "
                    "have one initialized field\n"
                )
            if isinstance(p.get("text"), str):
                out.append(p["text"])
        return out

    def _generations(self, r: _Request) -> list[Generation]:
        """One generation per candidate, deterministic: candidate i > 0 answers a slightly varied prompt."""
        eng = self.engine
        gens = []
        for i in range(r.candidates):
            text = r.text if i == 0 else f"{r.text}\n(candidate {i})"
            body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "stop": r.stops or None}
            if r.max_tokens is not None:
                body["max_tokens"] = r.max_tokens
            else:
                body["max_tokens"] = (
                    8192  # Gemini's default output limit is the model's, far above any answer
                )
            g = eng.generate(Operation.CHAT, body)
            g.prompt_tokens = len(tokenize(r.text)) + 2 * r.n_turns
            gens.append(g)
        return gens

    async def _generate(
        self, version: str, model: str, raw: bytes, streamed: bool, sse: bool, send: Send
    ) -> None:
        r = self._parse(version, model, raw)
        eng = self.engine
        if eng.should_fail():
            raise failure(eng.behaviour.fail_status)
        await eng.before_answer(streamed)
        rid = os.urandom(8).hex()
        low = r.text.lower()
        gens = self._generations(r)
        prompt_tokens = gens[0].prompt_tokens
        if "mock:block" in low:
            events = [self._blocked(r, rid, prompt_tokens)]
            await self._send(events if streamed else events[0], streamed, sse, send)
            return
        safety = "mock:safety" in low
        if safety:
            for g in gens:
                g.tokens, g.finish_reason = g.tokens[: len(g.tokens) // 2], "SAFETY"
        if not streamed:
            delay = eng.token_delay()
            if delay:
                await asyncio.sleep(delay * max(len(g.tokens) for g in gens))
            await send_json(send, 200, self._response(r, rid, gens, prompt_tokens))
            return
        await self._stream(r, rid, gens, prompt_tokens, sse, send)

    @staticmethod
    def _finish(g: Generation) -> str:
        return {"stop": "STOP", "length": "MAX_TOKENS"}.get(g.finish_reason, g.finish_reason)

    def _usage(self, prompt_tokens: int, gens: list[Generation] | None) -> dict[str, Any]:
        u: dict[str, Any] = {"promptTokenCount": prompt_tokens}
        out = sum(len(g.tokens) for g in gens) if gens is not None else 0
        if gens is not None:
            u["candidatesTokenCount"] = out
        u["totalTokenCount"] = prompt_tokens + out
        u["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt_tokens}]
        return u

    @staticmethod
    def _ratings(high: bool) -> list[dict[str, Any]]:
        cats = (
            "HARM_CATEGORY_HATE_SPEECH",
            "HARM_CATEGORY_DANGEROUS_CONTENT",
            "HARM_CATEGORY_HARASSMENT",
            "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        )
        out: list[dict[str, Any]] = []
        for c in cats:
            r: dict[str, Any] = {"category": c, "probability": "NEGLIGIBLE"}
            if high and c == "HARM_CATEGORY_DANGEROUS_CONTENT":
                r = {"category": c, "probability": "HIGH", "blocked": True}
            out.append(r)
        return out

    def _candidate(self, i: int, text: str, finish: str | None) -> dict[str, Any]:
        c: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": i}
        if finish is not None:
            c["finishReason"] = finish
            if finish == "SAFETY":
                c["safetyRatings"] = self._ratings(True)
        return c

    def _response(self, r: _Request, rid: str, gens: list[Generation], prompt_tokens: int) -> dict[str, Any]:
        return {
            "candidates": [self._candidate(i, g.text, self._finish(g)) for i, g in enumerate(gens)],
            "usageMetadata": self._usage(prompt_tokens, gens),
            "modelVersion": r.model,
            "responseId": rid,
        }

    def _blocked(self, r: _Request, rid: str, prompt_tokens: int) -> dict[str, Any]:
        return {
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": self._ratings(True)},
            "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
            "modelVersion": r.model,
            "responseId": rid,
        }

    async def _send(self, payload: Any, streamed: bool, sse: bool, send: Send) -> None:
        if not streamed:
            await send_json(send, 200, payload)
        elif sse:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            for e in payload:
                await send({"type": "http.response.body", "body": _event(e), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send_json(send, 200, payload)

    async def _stream(
        self, r: _Request, rid: str, gens: list[Generation], prompt_tokens: int, sse: bool, send: Send
    ) -> None:
        """One event per token step (each candidate's next token); the last event of each candidate has its
        finish reason; usage: prompt counts on every event, the complete counts on the last one only."""
        eng, b = self.engine, self.engine.behaviour
        steps = max(1, max(len(g.tokens) for g in gens))
        fault_at = (
            max(1, steps // 2)
            if (b.drop_mid_stream or b.stall_mid_stream or self.faults.error_mid_stream)
            else -1
        )
        delay = eng.token_delay()
        if not sse:  # a JSON array of the same objects, sent whole
            events = [self._step(r, rid, gens, prompt_tokens, k, steps) for k in range(steps)]
            await send_json(send, 200, events)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for k in range(steps):
            if k == fault_at:
                if b.stall_mid_stream:
                    await asyncio.Event().wait()
                if self.faults.error_mid_stream:
                    err = failure(500).body()
                    await send({"type": "http.response.body", "body": _event(err), "more_body": False})
                    return
                raise MockDroppedConnection("injected: connection dropped mid-stream")
            if delay and k:
                await asyncio.sleep(delay)
            event = self._step(r, rid, gens, prompt_tokens, k, steps)
            await send({"type": "http.response.body", "body": _event(event), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _step(
        self, r: _Request, rid: str, gens: list[Generation], prompt_tokens: int, k: int, steps: int
    ) -> dict[str, Any]:
        cands = []
        for i, g in enumerate(gens):
            n = len(g.tokens)
            if k < n or (n == 0 and k == 0):
                last = k >= n - 1
                text = g.tokens[k] if k < n else ""
                cands.append(self._candidate(i, text, self._finish(g) if last else None))
        final = k == steps - 1
        return {
            "candidates": cands,
            "usageMetadata": self._usage(prompt_tokens, gens if final else None),
            "modelVersion": r.model,
            "responseId": rid,
        }


def _event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


__all__ = ["DEFAULT_MODELS", "GeminiFaults", "GeminiMockServer", "GoogleError"]
