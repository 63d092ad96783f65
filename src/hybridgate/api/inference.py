"""POST /v1/chat/completions and /v1/completions: validate, route, answer (JSON or SSE)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any

import orjson

from hybridgate._asgi import SSE_DONE, SSE_HEADERS, Receive, Scope, Send, header, send_bytes, sse
from hybridgate.backends import BackendError, Batch
from hybridgate.protocol import Endpoint, PermissionDeniedError, parse_request
from hybridgate.router import Attempt, Call, Result, Stream

if TYPE_CHECKING:
    from hybridgate.api.app import Gateway

log = logging.getLogger("hybridgate.api")

# How long a stream runs before a task starts watching for its client's disconnect (see _stream).
WATCH_AFTER_S = 0.05


def _headers(
    backend: str | None, attempts: list[Attempt], cost: float | None, request_id: str
) -> list[tuple[bytes, bytes]]:
    h = [
        (b"x-request-id", request_id.encode()),
        (b"x-hybridgate-attempts", str(sum(1 for a in attempts if a.reached_backend)).encode()),
    ]
    if backend is not None:
        h.append((b"x-hybridgate-backend", backend.encode()))
    if cost is not None:
        h.append((b"x-hybridgate-cost-usd", f"{cost:.8f}".encode()))
    return h


async def handle(
    gw: Gateway,
    endpoint: Endpoint,
    scope: Scope,
    receive: Receive,
    send: Send,
    raw: bytes,
    ctx: dict[str, Any],
) -> None:
    body, req = parse_request(raw, endpoint)
    principal = ctx["principal"]
    allowed = getattr(principal, "allowed_models", None)
    if allowed and req.model not in allowed:
        raise PermissionDeniedError(
            f"This API key may not use model '{req.model}'; it may use: {', '.join(allowed)}.", param="model"
        )
    call = Call(
        endpoint=endpoint,
        body=body,
        model=req.model,
        max_tokens=req.limit(),
        forced=header(scope, b"x-hybridgate-backend"),
        preferred=header(scope, b"x-hybridgate-prefer"),
        hooks=gw.hooks_for(principal, ctx),
    )
    ctx["model"] = req.model
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        stream = await gw.manager.open_stream(call)
        ctx["attempts"] = stream.attempts
        await _stream(gw, stream, include_usage, scope, receive, send, ctx)
    else:
        result = await gw.manager.complete(call)
        ctx["attempts"] = result.attempts
        ctx["backend"] = result.backend
        await _answer(gw, result, send, ctx)


async def _answer(gw: Gateway, result: Result, send: Send, ctx: dict[str, Any]) -> None:
    cost = result.cost_usd
    hdrs = [
        (b"content-type", b"application/json"),
        *_headers(result.backend, result.attempts, cost, ctx["request_id"]),
    ]
    ctx["status"] = 200
    await send_bytes(send, 200, orjson.dumps(result.body), hdrs)


async def _stream(
    gw: Gateway,
    stream: Stream,
    include_usage: bool,
    scope: Scope,
    receive: Receive,
    send: Send,
    ctx: dict[str, Any],
) -> None:
    model = stream.call.model
    ctx["backend"] = stream.backend
    ctx["status"] = 200
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*SSE_HEADERS, *_headers(stream.backend, stream.attempts, None, ctx["request_id"])],
        }
    )
    # A client that goes away must free the backend promptly, even while we wait for its next token. Most
    # streams through a gateway end within milliseconds, so the task that watches for the disconnect starts
    # only once this one has lasted WATCH_AFTER_S: a timer costs a short stream far less than a task.
    task = asyncio.current_task()
    gone = asyncio.Event()
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        if task is not None:
            task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    error: BaseException | None = None
    held = b""  # the last group, when the backend said the stream ended with it: written with the tail
    try:
        # One write per group the backend received: a syscall per event would cost more than the rest.
        async for batch in stream.batches():
            out = []
            for chunk in batch:
                chunk["model"] = model
                if "usage" in chunk:
                    if not chunk.get("choices"):
                        if not include_usage:
                            continue
                    elif not include_usage:
                        del chunk["usage"]
                out.append(sse(chunk))
            if isinstance(batch, Batch) and batch.last:
                held = b"".join(out)
            elif out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
    except Exception as e:
        # A backend failure (or, never expected, a bug of ours) after the first byte: end in shape.
        error = e
        msg = e.message if isinstance(e, BackendError) else "internal gateway error"
        if not isinstance(e, BackendError):
            log.exception("stream from %s failed unexpectedly", stream.backend)
        ctx["status"] = 502
        ctx["stream_error"] = msg
        await send(
            {
                "type": "http.response.body",
                "body": sse(
                    {
                        "error": {
                            "message": f"Backend '{stream.backend}' failed mid-stream: {msg}",
                            "type": "server_error",
                            "param": None,
                            "code": "stream_interrupted",
                        }
                    }
                ),
                "more_body": True,
            }
        )
    except asyncio.CancelledError as e:
        if not gone.is_set():
            # The server is cancelling us (shutdown): the attempt is still settled and charged.
            await asyncio.shield(stream.settle(e))
            raise
        if task is not None:
            task.uncancel()
        ctx["status"] = 499
        await asyncio.shield(stream.settle(client_gone=True))
        return
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
    await stream.settle(error)
    cost = sum(a.cost_usd for a in stream.attempts)
    # Headers are long gone; the cost travels as an SSE comment, which clients ignore.
    tail = held + f": x-hybridgate-cost-usd={cost:.8f}\n\n".encode() + SSE_DONE
    await send({"type": "http.response.body", "body": tail, "more_body": False})


_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def request_id(scope: Scope) -> str:
    """The client's X-Request-Id, or a process-unique one (no syscall per request, unlike os.urandom)."""
    return header(scope, b"x-request-id") or f"{_ID_PREFIX}{next(_ids):08x}"
