"""The few raw-ASGI helpers the gateway and the mock server share. Raw ASGI keeps the hot path short."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from hybridgate.protocol import GatewayError, PayloadTooLargeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (name in lower case), or None."""
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole body, refusing with 413 as soon as it exceeds `limit` bytes."""
    cl = header(scope, b"content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise PayloadTooLargeError(f"Request body of {int(cl)} bytes exceeds the limit of {limit} bytes.")
    return await _read(receive, limit)


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone()
        part = msg.get("body", b"")
        if part:
            size += len(part)
            if size > limit:
                raise PayloadTooLargeError(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(part)
        if not msg.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = JSON_HEADERS
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_bytes(send, status, orjson.dumps(obj), [*JSON_HEADERS, *extra])


async def send_error(send: Send, err: GatewayError, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    hdrs = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send_json(send, err.status, err.body(), [*hdrs, *extra])


async def refuse_websocket(scope: Scope, receive: Receive, send: Send, err: GatewayError) -> None:
    """Turn a WebSocket upgrade down with `err`, as a plain HTTP answer in OpenAI's shape.

    An app that returns without answering the handshake makes the server log an error and answer 500. The
    ASGI denial response carries our status and body; a server without it can only be told to close, which
    it answers with 403.
    """
    if (await receive())["type"] != "websocket.connect":
        return  # the client left first
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    hdrs = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send(
        {"type": "websocket.http.response.start", "status": err.status, "headers": [*JSON_HEADERS, *hdrs]}
    )
    await send({"type": "websocket.http.response.body", "body": orjson.dumps(err.body())})


def quiet_denied_handshakes() -> None:
    """Drop uvicorn's false alarm after `refuse_websocket` (call once per process that runs uvicorn).

    uvicorn's websockets-sansio protocol (the default with uvicorn[standard]) sends the denial response but
    never marks that handshake complete, so it then logs an error although the client got its answer.
    TODO: remove once uvicorn marks a denied handshake complete (upstream: Kludex/uvicorn#3138).
    """
    log = logging.getLogger("uvicorn.error")
    if _denied_handshake_is_no_error not in log.filters:
        log.addFilter(_denied_handshake_is_no_error)


def _denied_handshake_is_no_error(record: logging.LogRecord) -> bool:
    return record.getMessage() != "ASGI callable returned without completing handshake."


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
