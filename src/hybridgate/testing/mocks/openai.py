"""`hybridgate mock-server`: the mock backend as a real OpenAI-compatible HTTP server.

Routes follow vLLM and llama.cpp's server: /v1/chat/completions, /v1/completions and /v1/models under
/v1, GET /health at the root. Faults can be changed while it runs: GET/POST /_mock/config.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import orjson

from hybridgate._asgi import (
    SSE_DONE,
    SSE_HEADERS,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
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
    parse_request,
)
from hybridgate.protocol._errors import NotFoundError


class MockDroppedConnection(Exception):
    """Raised inside the ASGI app to make the server cut the connection mid-stream (injected fault)."""


class MockServer:
    def __init__(
        self,
        behaviour: MockBehaviour,
        models: list[str] | None = None,
        api_key: str | None = None,
        max_body_bytes: int = 1024 * 1024,
    ) -> None:
        self.engine = MockEngine(behaviour)
        self.models = models or ["mock"]
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        try:
            if path == "/health" and method == "GET":
                if self.engine.behaviour.hang:
                    await self.engine.before_answer(False)
                await send_json(send, 200, {"status": "ok"})
            elif path == "/_mock/config":
                if method == "POST":
                    changes = orjson.loads(await read_body(scope, receive, self.max_body_bytes) or b"{}")
                    try:
                        self.engine.behaviour.update(changes)
                    except Exception as e:
                        raise BadRequestError(f"invalid mock config: {e}") from None
                await send_json(
                    send, 200, {**self.engine.behaviour.as_dict(), "requests": self.engine.requests}
                )
            elif path.startswith("/v1/"):
                self._check_key(scope)
                if path == "/v1/models" and method == "GET":
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
                elif path in ("/v1/chat/completions", "/v1/completions") and method == "POST":
                    await self._complete(
                        scope, receive, send, "chat" if path.endswith("chat/completions") else "completions"
                    )
                else:
                    raise NotFoundError(f"Unknown path {method} {path}.")
            else:
                raise NotFoundError(f"Unknown path {method} {path}.")
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

    async def _complete(self, scope: Scope, receive: Receive, send: Send, endpoint: Any) -> None:
        raw = await read_body(scope, receive, self.max_body_bytes)
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
