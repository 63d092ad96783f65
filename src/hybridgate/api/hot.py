"""The hot path's HTTP binding: POST /v1/chat/completions and /v1/completions as raw ASGI.

The work is `serving.InferenceService`'s; this module reads the body, and writes the answer as JSON or
SSE, one write per group of chunks the backend sent, the cost in a header or a trailing SSE comment.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import orjson

from hybridgate._asgi import SSE_DONE, SSE_HEADERS, Receive, Scope, Send, header, read_body, send_bytes, sse
from hybridgate.auth import Principal
from hybridgate.backends import BackendError, Batch
from hybridgate.protocol import Operation, RequestTimeoutError
from hybridgate.router import Result, Stream
from hybridgate.serving import InferenceService, RequestContext, attempt_headers

log = logging.getLogger("hybridgate.api")

# How long a stream runs before a task starts watching for its client's disconnect (see _stream).
WATCH_AFTER_S = 0.05


class InferenceRoutes:
    """The two hot routes over one InferenceService."""

    __slots__ = (
        "_expired",
        "_reading",
        "_watchdog",
        "body_timeout_s",
        "chat",
        "completions",
        "limit",
        "service",
    )

    def __init__(self, service: InferenceService, max_body_bytes: int, body_timeout_s: float) -> None:
        self.service = service
        self.limit = max_body_bytes
        self.body_timeout_s = body_timeout_s
        # Requests still receiving their body -> when they must be done. One watchdog task checks them all,
        # a few times per `body_timeout_s`: cheaper than a timer per request, and a body is rarely slow.
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        # (scope, receive, send, ctx, principal) -> None, one per route; partials, not wrapper coroutines.
        self.chat = functools.partial(self._handle, Operation.CHAT)
        self.completions = functools.partial(self._handle, Operation.COMPLETIONS)

    async def start(self) -> None:
        self._watchdog = asyncio.create_task(self._watch_bodies(), name="body-timeouts")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None

    async def _watch_bodies(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(1.0, self.body_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for task, deadline in list(self._reading.items()):
                if now >= deadline and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body; 408 when it has not arrived within body_timeout_s of the request's start."""
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = asyncio.get_running_loop().time() + self.body_timeout_s
        try:
            return await read_body(scope, receive, self.limit)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise RequestTimeoutError(
                f"The request body did not arrive within {self.body_timeout_s:g}s (server.body_timeout_s)."
            ) from None
        finally:
            del self._reading[task]
            if self._expired:
                self._expired.discard(task)

    async def _handle(
        self,
        operation: Operation,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: RequestContext,
        principal: Principal,
    ) -> None:
        # The body's bytes are not kept in this frame: it lives as long as the stream, and a long prompt
        # held as bytes too would double what a stream holds (the parsed body stays, for fallback).
        p = self.service.prepare(
            operation,
            await self._read_body(scope, receive),
            principal,
            ctx.request_id,
            forced=header(scope, b"x-hybridgate-backend"),
            preferred=header(scope, b"x-hybridgate-prefer"),
        )
        ctx.model = p.call.model
        if p.stream:
            stream = await self.service.open_stream(p.call)
            ctx.attempts = stream.attempts
            await _stream(stream, p.include_usage, receive, send, ctx)
        else:
            result = await self.service.complete(p.call)
            ctx.attempts = result.attempts
            ctx.backend = result.backend
            await _answer(result, send, ctx)


async def _answer(result: Result, send: Send, ctx: RequestContext) -> None:
    hdrs = [
        (b"content-type", b"application/json"),
        *attempt_headers(result.backend, result.attempts, result.cost_usd, ctx.request_id),
    ]
    ctx.status = 200
    await send_bytes(send, 200, orjson.dumps(result.body), hdrs)


async def _stream(
    stream: Stream, include_usage: bool, receive: Receive, send: Send, ctx: RequestContext
) -> None:
    model = stream.call.model
    ctx.backend = stream.backend
    ctx.status = 200
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                *SSE_HEADERS,
                *attempt_headers(stream.backend, stream.attempts, None, ctx.request_id),
            ],
        }
    )
    # A client that goes away must free the backend promptly, even while we wait for its next token.
    task = asyncio.current_task()
    watch = _Watch(receive, task)
    error: BaseException | None = None
    held = b""  # the last group, when the backend said the stream ended with it: written with the tail
    shape = InferenceService.shape
    model_json = _json_string(model)
    try:
        # One write per group the backend received: a syscall per event would cost more than the rest. The
        # backend's iterator is read here, not through a generator of the router's (Stream.take): every
        # await level between the task and the socket is resumed and suspended again on every token.
        batch, rest = stream.take()
        observe = stream.observe
        while True:
            body = None
            if isinstance(batch, Batch):
                if batch.raw is not None:
                    body = _passthrough(batch, batch.raw, model, model_json, include_usage)
                last = batch.last
            else:
                last = False
            if body is None:
                body = b"".join([sse(chunk) for chunk in shape(batch, model, include_usage)])
            if last:
                held = body
            elif body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            batch = body = None  # type: ignore[assignment]  # not held while the next token is awaited
            try:
                batch = await rest.__anext__()
            except StopAsyncIteration:
                break
            observe(batch)
    except Exception as e:
        # A backend failure (or, never expected, a bug of ours) after the first byte: end in shape.
        error = e
        msg = e.message if isinstance(e, BackendError) else "internal gateway error"
        if not isinstance(e, BackendError):
            log.exception("stream from %s failed unexpectedly", stream.backend)
        ctx.status = 502
        ctx.stream_error = msg
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
        if not watch.gone:
            # The server is cancelling us (shutdown): the attempt is still settled and charged.
            await asyncio.shield(stream.settle(e))
            raise
        if task is not None:
            task.uncancel()
        ctx.status = 499
        await asyncio.shield(stream.settle(client_gone=True))
        return
    finally:
        watch.stop()
    await stream.settle(error)
    cost = sum(a.cost_usd for a in stream.attempts)
    # Headers are long gone; the cost travels as an SSE comment, which clients ignore.
    tail = held + f": x-hybridgate-cost-usd={cost:.8f}\n\n".encode() + SSE_DONE
    await send({"type": "http.response.body", "body": tail, "more_body": False})


class _Watch:
    """Cancels a stream's task when its client disconnects (`http.disconnect` from `receive`).

    uvicorn drops writes to a closed socket silently, so only `receive` tells. Most streams through a gateway
    end within milliseconds, so watching starts once the stream has lasted WATCH_AFTER_S (a timer until
    then). `receive()` is then driven here, step by step from its futures' callbacks, rather than by a task
    of its own: a task per stream (created, stepped, and cancelled with an exception thrown through
    `receive` at the end) cost more than the rest of the watching. The disconnect is seen in the same loop
    turn as a task would see it (a future's callbacks and a task's wake-up are both scheduled when it
    completes), and `stop` closes the pending `receive()` synchronously (its `finally` blocks run).
    """

    __slots__ = ("_await", "_loop", "_receive", "_task", "_timer", "gone")

    def __init__(self, receive: Receive, task: asyncio.Task[Any] | None) -> None:
        self._receive = receive
        self._task = task
        self._loop = loop = asyncio.get_running_loop()
        self._await: Any = None  # the pending receive()'s iterator while watching
        self.gone = False  # True once the client disconnected (and the task was cancelled for it)
        self._timer: asyncio.TimerHandle | None = loop.call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self._timer = None
        self._await = self._receive().__await__()
        self._step()

    def _step(self, _done: Any = None) -> None:
        it = self._await
        if it is None:  # stopped
            return
        try:
            waiting = it.send(None)
        except StopIteration as e:
            self._await = None
            if e.value["type"] == "http.disconnect":
                self.gone = True
                if self._task is not None:
                    self._task.cancel()
            else:
                self._start()  # more of the request's body, unread: wait on
            return
        except BaseException:  # the server's receive() failed: stop watching, as the task ended then
            self._await = None
            log.exception("watching for the client's disconnect failed")
            return
        if getattr(waiting, "_asyncio_future_blocking", None):
            waiting._asyncio_future_blocking = False  # what a task does with a future it waits on
            waiting.add_done_callback(self._step)
        elif waiting is None:  # a bare yield (sleep(0)): step again next turn
            self._loop.call_soon(self._step)
        else:  # a task would not take it either ("bad yield")
            self._await = None
            it.close()
            log.error("cannot watch for the client's disconnect: receive() awaited %r", waiting)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        it, self._await = self._await, None
        if it is not None:
            it.close()


_MISSING = object()


@functools.lru_cache(maxsize=1024)
def _json_string(model: str) -> bytes:
    """A model name as a JSON string, once per name: each `orjson.dumps` result holds a 4 KB buffer
    whatever its length, which a long stream would keep for its whole life."""
    return orjson.dumps(model)


def _passthrough(
    batch: list[dict[str, Any]], raw: bytes, model: str, model_json: bytes, include_usage: bool
) -> bytes | None:
    """The backend's own bytes for these chunks when they are what the client must get; None when a chunk
    must change in a way bytes cannot safely say (usage to drop, a chunk without a model field, anything
    unusual): then every chunk is re-serialised (InferenceService.shape, the one rule).

    Two changes are made in the bytes, each only when its pattern occurs exactly as often as the parsed
    chunks say it must (JSON escapes every quote inside a string, so the pattern cannot come from text): a
    backend model name that differs from the public one (`"model":"name"`, once per chunk), and
    `,"usage":null` on chunks with choices when the client did not ask for usage (OpenAI sends it on every
    chunk once usage is asked for, and the gateway always asks).

    Parsing stays (the router reads usage and text from the chunks); re-serialising each chunk is what this
    saves: 4.9 -> 1.5 us per event for a typical chunk (benchmarks/README.md, concurrent streams).
    """
    other: Any = _MISSING
    nulls = 0
    for chunk in batch:
        if type(chunk) is not dict:
            return None
        if "usage" in chunk and not include_usage:
            if chunk["usage"] is not None or not chunk.get("choices"):
                return None
            nulls += 1
        m = chunk.get("model", _MISSING)
        if m != model:
            if m is _MISSING or type(m) is not str or (other is not _MISSING and m != other):
                return None
            other = m
    if nulls:
        if raw.count(b',"usage":null') != nulls:
            return None
        raw = raw.replace(b',"usage":null', b"")
    if other is _MISSING:
        return raw
    needle = b'"model":' + orjson.dumps(other)
    if raw.count(needle) != len(batch):
        return None
    return raw.replace(needle, b'"model":' + model_json)


__all__ = ["WATCH_AFTER_S", "InferenceRoutes"]
