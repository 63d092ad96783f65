"""`hybridgate mock-server`: the mock backend as a real OpenAI-compatible HTTP server.

Routes follow vLLM and llama.cpp's server: /v1/chat/completions, /v1/completions and /v1/models under
/v1, GET /health at the root. Faults can be changed while it runs: GET/POST /_mock/config, behind the
API key when one is set. WebSocket upgrades are refused with a 404.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from pydantic import ValidationError

from hybridgate._asgi import (
    SSE_DONE,
    SSE_HEADERS,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    refuse_websocket,
    send_error,
    send_json,
    sse,
)
from hybridgate.auth import bearer_token
from hybridgate.backends.mock import MockBehaviour, MockEngine
from hybridgate.protocol import (
    AuthenticationError,
    BadRequestError,
    GatewayError,
    ModelNotFoundError,
    NotFoundError,
    parse_request,
)
from hybridgate.testing.mocks._base import MockASGIServer


class MockDroppedConnection(Exception):
    """Raised inside the ASGI app to make the server cut the connection mid-stream (injected fault)."""


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


def option_errors(e: ValidationError) -> list[tuple[str, str]]:
    """(setting, reason) for each mock setting that `MockBehaviour.update` refused."""
    return [
        (".".join(str(p) for p in err["loc"]) or "body", err["msg"].removeprefix("Value error, "))
        for err in e.errors()
    ]


Handler = Callable[["MockServer", Scope, bytes, Send], Coroutine[Any, Any, None]]


class MockServer(MockASGIServer):
    def __init__(
        self,
        behaviour: MockBehaviour,
        models: list[str] | None = None,
        api_key: str | None = None,
        max_body_bytes: int = 1024 * 1024,
    ) -> None:
        super().__init__()
        self.engine = MockEngine(behaviour)
        self.models = models or ["mock"]
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        if scope["type"] == "websocket":
            err = NotFoundError(f"No WebSocket endpoint at {path}: this server answers plain HTTP only.")
            await refuse_websocket(scope, receive, send, err)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        try:
            if path.startswith("/v1/") or path == "/_mock/config":
                self._check_key(scope)
            methods = _ROUTES.get(path)
            if methods is None:
                raise NotFoundError(f"Unknown path {method} {path}.")
            handler = methods.get(method)
            if handler is None:
                allow = ", ".join(methods)
                raise MethodNotAllowedError(
                    f"Method {method} is not allowed on {path} (allowed: {allow}).", headers={"Allow": allow}
                )
            body = await read_body(scope, receive, self.max_body_bytes)
            if path == "/_mock/config":
                await handler(self, scope, body, send)
            else:
                await self._until_disconnect(receive, handler(self, scope, body, send))
        except GatewayError as e:
            await send_error(send, e)
        except ClientGone:
            return

    def _check_key(self, scope: Scope) -> None:
        if self.api_key is None:
            return
        token = bearer_token(header(scope, b"authorization"))
        if token is None or not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise AuthenticationError("Invalid or missing API key for the mock server.")

    async def _health(self, scope: Scope, body: bytes, send: Send) -> None:
        if self.engine.behaviour.hang:
            await self.engine.before_answer(False)
        await send_json(send, 200, {"status": "ok"})

    async def _config(self, scope: Scope, body: bytes, send: Send) -> None:
        await send_json(
            send,
            200,
            {
                **self.engine.behaviour.as_dict(),
                "requests": self.engine.requests,
                "in_flight": self.in_flight,
            },
        )

    async def _set_config(self, scope: Scope, body: bytes, send: Send) -> None:
        try:
            changes = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            changes = None
        if not isinstance(changes, dict):
            raise BadRequestError('The mock config must be a JSON object of settings, e.g. {"hang": true}.')
        try:
            self.engine.behaviour.update(changes)
        except ValidationError as e:
            refused = option_errors(e)
            raise BadRequestError(
                "Invalid mock config: " + "; ".join(f"'{name}': {why}" for name, why in refused),
                param=refused[0][0],
            ) from None
        await self._config(scope, body, send)

    async def _models(self, scope: Scope, body: bytes, send: Send) -> None:
        await send_json(
            send,
            200,
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "hybridgate-mock"}
                    for m in self.models
                ],
            },
        )

    async def _chat(self, scope: Scope, body: bytes, send: Send) -> None:
        await self._complete(body, send, "chat")

    async def _completions(self, scope: Scope, body: bytes, send: Send) -> None:
        await self._complete(body, send, "completions")

    async def _complete(self, raw: bytes, send: Send, endpoint: Any) -> None:
        body, req = parse_request(raw, endpoint)
        if req.model not in self.models:
            raise ModelNotFoundError(f"The model '{req.model}' does not exist.", param="model")
        eng = self.engine
        if eng.should_fail():
            await send_json(send, eng.behaviour.fail_status, eng.failure_body())
            return
        await eng.before_answer(req.stream)
        if not req.stream:
            out, gen = eng.respond(endpoint, body, req.model)
            delay = eng.token_delay()
            if delay:
                await asyncio.sleep(delay * len(gen.tokens))
            await send_json(send, 200, out)
            return
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        async for chunk in eng.chunks(endpoint, body, req.model):
            if chunk is None:
                raise MockDroppedConnection("injected: connection dropped mid-stream")
            if not chunk["choices"] and not include_usage:
                continue
            await send({"type": "http.response.body", "body": sse(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": SSE_DONE, "more_body": False})


# path -> method -> handler; a known path asked with another method is a 405 that lists these.
_ROUTES: dict[str, dict[str, Handler]] = {
    "/health": {"GET": MockServer._health},
    "/_mock/config": {"GET": MockServer._config, "POST": MockServer._set_config},
    "/v1/models": {"GET": MockServer._models},
    "/v1/chat/completions": {"POST": MockServer._chat},
    "/v1/completions": {"POST": MockServer._completions},
}
