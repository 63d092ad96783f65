"""Behaviour kept by the performance changes on the request path (numbers: benchmarks/README.md)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from hybridgate.backends import Backend, BackendRequest, BackendResponse, BackendStreamError
from hybridgate.backends.openai_http import OpenAIBackend
from hybridgate.config import BackendConfig
from hybridgate.protocol import Operation, chunk_body


def _event(i: int) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": f"w{i}"}}]}) + b"\n\n"


async def _upstream(writes: list[bytes]) -> tuple[web.AppRunner, int]:
    """An upstream that sends `writes` one by one, with a pause between them (so each is its own read)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for w in writes:
            await resp.write(w)
            await asyncio.sleep(0.02)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def _batches(writes: list[bytes], got: list[list[str]] | None = None) -> list[list[str]]:
    """The content of each batch the backend yields for an upstream that sends `writes`."""
    got = [] if got is None else got
    runner, port = await _upstream(writes)
    cfg = BackendConfig(name="up", kind="openai", base_url=f"http://127.0.0.1:{port}/v1", models={"m": "m"})
    backend = OpenAIBackend(cfg)
    await backend.start()
    try:
        req = BackendRequest("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "m")
        async for batch in backend.stream_batches(req):
            got.append([c["choices"][0]["delta"]["content"] for c in batch])
        return got
    finally:
        await backend.close()
        await runner.cleanup()


async def test_events_written_together_arrive_as_one_batch_and_split_lines_are_rejoined() -> None:
    e0, e1, e2, e3 = (_event(i) for i in range(4))
    writes = [e0 + e1, e2[:10], e2[10:] + e3, b"data: [DONE]\n\n"]
    assert await _batches(writes) == [["w0", "w1"], ["w2", "w3"]]


async def test_good_events_before_an_error_event_are_delivered_then_the_error_raised() -> None:
    err = b'data: {"error": {"message": "boom"}}\n\n'
    got: list[list[str]] = []
    with pytest.raises(BackendStreamError, match="boom"):
        await _batches([_event(0) + err], got)
    assert got == [["w0"]]


async def test_stream_without_done_is_an_error_after_its_events() -> None:
    got: list[list[str]] = []
    with pytest.raises(BackendStreamError, match="without \\[DONE\\]"):
        await _batches([_event(0), _event(1)], got)
    assert got == [["w0"], ["w1"]]


async def test_request_lines_are_written_in_batches_in_order_with_other_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import logging

    from hybridgate.observability import configure_logging, log_request, logs

    root = logging.getLogger("hybridgate")
    saved = (root.handlers[:], root.level, root.propagate, logs._handler)
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    configure_logging("info")
    try:
        log_request({"id": "a", "status": 200})
        log_request({"id": "b", "status": 200})
        assert out.getvalue() == ""  # waiting for the batch
        logging.getLogger("hybridgate.app").warning("something else")  # writes the batch first
        log_request({"id": "c", "status": 500})
        await asyncio.sleep(logs.FLUSH_S * 3)
        lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
        assert [x.get("id") or x["msg"] for x in lines] == ["a", "b", "something else", "c"]
        assert all(
            x["logger"] == "hybridgate.request" and x["msg"] == "request" for x in (lines[0], lines[3])
        )
        assert {"ts", "ts_end", "level"} <= lines[0].keys()
    finally:
        root.handlers[:], root.level, root.propagate, logs._handler = saved


def test_serve_with_two_workers_answers_and_every_worker_logs(tmp_path: Path) -> None:
    import time
    import urllib.request

    from hybridgate.testing.procs import start_gateway

    cfg = {
        "database": f"sqlite:///{tmp_path / 'gw.db'}",
        "backends": [{"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}}],
    }
    gw = start_gateway(cfg, workdir=tmp_path, extra_args=["--workers", "2"])
    try:
        body = orjson.dumps({"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
        for _ in range(4):
            req = urllib.request.Request(
                gw.base_url + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
        deadline = time.monotonic() + 20  # the second worker may still be starting: health had one answer
        while time.monotonic() < deadline and (
            gw.log().count('"msg":"request"') < 4 or gw.log().count('"msg":"gateway started"') < 2
        ):
            time.sleep(0.05)
        # Workers are fresh interpreters: each must set up logging itself, or its lines are lost.
        assert gw.log().count('"msg":"gateway started"') == 2, gw.log()
        assert gw.log().count('"msg":"request"') == 4, gw.log()
    finally:
        assert gw.stop() in (0, -15)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """One request off a loopback upstream's connection: its body (the head read past, by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


async def test_the_openai_backend_reuses_one_upstream_connection_for_answers_and_streams() -> None:
    """A connection per call would cost a TCP handshake each time; servers that write a stream's chunked
    terminator after [DONE], in a later write, must not cost one either."""
    accepted = 0
    chat = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while True:
                body = orjson.loads(await _read_request(reader))
                if not body.get("stream"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(chat), chat)
                    )
                    await writer.drain()
                    continue
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                for part in (_event(0), b"data: [DONE]\n\n"):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.02)  # the terminator comes in a write of its own
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = BackendConfig(name="up", kind="openai", base_url=f"http://127.0.0.1:{port}/v1", models={"m": "m"})
    backend = OpenAIBackend(cfg)
    await backend.start()
    try:
        msgs = [{"role": "user", "content": "hi"}]
        for _ in range(3):
            resp = await backend.complete(BackendRequest("chat", {"model": "m", "messages": msgs}, "m"))
            assert resp.usage.completion_tokens == 1
            req = BackendRequest("chat", {"model": "m", "messages": msgs, "stream": True}, "m")
            got = [c["choices"][0]["delta"]["content"] async for b in backend.stream_batches(req) for c in b]
            assert got == ["w0"]
            await asyncio.sleep(0.05)  # past the late terminator: the connection is back in the pool
        assert accepted == 1
    finally:
        await backend.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("tune", [False, True])
async def test_gc_is_tuned_only_where_the_gateway_owns_the_process(tmp_path: Path, tune: bool) -> None:
    import gc

    from hybridgate.api.app import GC_GEN0_THRESHOLD, Gateway
    from hybridgate.config import Config

    cfg = Config(
        database=f"sqlite:///{tmp_path / 'gw.db'}",
        backends=[BackendConfig(name="m", kind="mock", models={"m": "m"}, price={"free": True})],
    )
    before = gc.get_threshold()
    gw = Gateway(cfg, tune_gc=tune)
    await gw.startup()
    try:
        tuned = gc.get_threshold()[0] >= GC_GEN0_THRESHOLD and gc.get_freeze_count() > 0
        assert tuned is tune
    finally:
        await gw.shutdown()
        gc.unfreeze()
        gc.set_threshold(*before)


# --- stream events passed through untouched when nothing in them must change ----------------------------


def _reserialised(chunks: list[dict], model: str, include_usage: bool) -> list[dict]:
    """What the client gets by the one rule (InferenceService.shape), as parsed JSON."""
    from hybridgate.serving import InferenceService

    return InferenceService.shape([dict(c) for c in chunks], model, include_usage)


def _sent(body: bytes) -> list[dict]:
    return [orjson.loads(line[5:]) for line in body.split(b"\n") if line.startswith(b"data:")]


_CASES = {
    # name: (events as the backend wrote them, public model, include_usage, passed through untouched?)
    "same model": ([b'{"model":"m","choices":[{"delta":{"content":"a"}}]}'], "m", False, True),
    "usage asked": (
        [
            b'{"model":"m","choices":[{"delta":{"content":"a"}}],"usage":null}',
            b'{"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}',
        ],
        "m",
        True,
        True,
    ),
    "usage null stripped in bytes": (
        [b'{"model":"m","choices":[{"delta":{"content":"a"}}],"usage":null}'] * 2,
        "m",
        False,
        True,
    ),
    "usage chunk dropped": (
        [
            b'{"model":"m","choices":[{"delta":{"content":"a"}}]}',
            b'{"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}',
        ],
        "m",
        False,
        False,
    ),
    "backend model renamed in bytes": (
        [b'{"model":"org/llama-3","choices":[{"delta":{"content":"\\"model\\":\\"org/llama-3\\""}}]}'] * 3,
        "llama",
        False,
        True,
    ),
    "backend model with spaces": ([b'{"model": "x", "choices": []}'], "m", True, False),
    "no model field": ([b'{"choices":[{"delta":{"content":"a"}}]}'], "m", False, False),
    "two backend names": ([b'{"model":"x","choices":[]}', b'{"model":"y","choices":[]}'], "m", True, False),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_a_passed_through_group_is_exactly_what_the_reserialising_rule_sends(case: str) -> None:
    from hybridgate.api.hot import _passthrough

    events, model, include_usage, untouched = _CASES[case]
    raw_lines = [b"data: " + e for e in events]
    raw = b"\n\n".join(raw_lines) + b"\n\n"
    chunks = [orjson.loads(e) for e in events]
    out = _passthrough(chunks, raw, model, orjson.dumps(model), include_usage)
    if not untouched:
        assert out is None  # the hot path re-serialises this group
        return
    assert out is not None
    assert _sent(out) == _reserialised(chunks, model, include_usage)
    assert out.endswith(b"\n\n") and out.count(b"data: ") == len(chunks)
    if case == "same model":
        assert out is raw  # not a byte copied


async def test_the_openai_backend_hands_over_each_groups_own_bytes() -> None:
    runner, port = await _upstream(
        [_event(0) + _event(1), _event(2)[:9], _event(2)[9:] + b"data: [DONE]\n\n"]
    )
    cfg = BackendConfig(name="up", kind="openai", base_url=f"http://127.0.0.1:{port}/v1", models={"m": "m"})
    backend = OpenAIBackend(cfg)
    await backend.start()
    try:
        req = BackendRequest("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "m")
        raws = [(b.raw, b.last) async for b in backend.stream_batches(req)]  # type: ignore[attr-defined]
    finally:
        await backend.close()
        await runner.cleanup()
    assert raws == [(_event(0) + _event(1), False), (_event(2), True)]


async def test_the_upstream_connection_is_back_in_the_pool_before_the_client_gets_the_end_of_its_stream(
    tmp_path: Path,
) -> None:
    """A closed-loop client sends its next stream as soon as it reads `[DONE]`; on a busy loop that request
    finds no idle connection (and opens one more) unless the last one was already handed back. So the
    gateway writes the stream's last bytes only after the backend's connection is idle in the pool; over
    rounds of streams on one connection, the upstream accepts no new one."""
    from hybridgate.api.app import Gateway
    from hybridgate.config import Config

    accepted = 0
    # the last token, [DONE] and the chunked terminator in one write, as a model server sends them
    events = [_event(0), _event(1) + b"data: [DONE]\n\n"]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while True:
                await _read_request(reader)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                for i, e in enumerate(events):
                    end = b"0\r\n\r\n" if i == len(events) - 1 else b""
                    writer.write(b"%x\r\n%s\r\n%s" % (len(e), e, end))
                    await writer.drain()
                    await asyncio.sleep(0.005)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = Config(
        database=f"sqlite:///{tmp_path / 'gw.db'}",
        backends=[
            BackendConfig(
                name="up",
                kind="openai",
                base_url=f"http://127.0.0.1:{port}/v1",
                models={"m": "m"},
                price={"free": True},
            )
        ],
    )
    gw = Gateway(cfg)
    await gw.startup()
    try:
        backend = gw.manager.backends[0]
        assert isinstance(backend, OpenAIBackend)
        idle_at_end: list[int] = []
        accepted_after: list[int] = []  # after each stream
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        got: list[bytes] = []
        sent = False

        async def receive() -> MutableMapping[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError("unreachable")

        async def send(msg: MutableMapping[str, Any]) -> None:
            if msg["type"] == "http.response.body":
                data = msg.get("body", b"")
                got.append(data)
                if b"[DONE]" in data:  # every connection open is idle: the stream's is back
                    c, o = backend.client, backend._origin
                    idle_at_end.append(c.open_connections(o) - c.idle_connections(o))

        for _ in range(5):
            got.clear()
            sent = False
            scope: dict[str, Any] = {
                "type": "http",
                "method": "POST",
                "path": "/v1/chat/completions",
                "raw_path": b"/v1/chat/completions",
                "query_string": b"",
                "headers": [(b"content-type", b"application/json")],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 8080),
                "scheme": "http",
                "http_version": "1.1",
                "root_path": "",
            }
            await gw(scope, receive, send)
            text = b"".join(got)
            assert b'"w0"' in text and b'"w1"' in text and text.endswith(b"data: [DONE]\n\n")
            accepted_after.append(accepted)
        assert idle_at_end == [0] * 5  # connections busy when the client got [DONE]
        # the startup's health and model checks may have opened one more; the streams open none after the first
        assert accepted_after == [accepted_after[0]] * 5
    finally:
        await gw.shutdown()
        server.close()
        await server.wait_closed()


class _Caller(Backend):
    """Streams four groups and notes, each time it is resumed for the next one, which frame resumed it."""

    def __init__(self) -> None:
        super().__init__(BackendConfig(name="caller", kind="mock", models={"m": "m"}))
        self.resumed_by: list[str] = []

    async def complete(self, req: BackendRequest) -> BackendResponse:
        raise NotImplementedError

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError
        yield {}

    async def stream_batches(self, req: BackendRequest) -> AsyncIterator[list[dict[str, Any]]]:
        usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        groups = [
            *([chunk_body(Operation.CHAT, "id", "m", 0, text=f"w{i}")] for i in range(3)),
            [{"id": "id", "object": "chat.completion.chunk", "model": "m", "choices": [], "usage": usage}],
        ]
        for group in groups:
            yield group
            frame = sys._getframe(1)  # the frame that asked for the next group
            self.resumed_by.append(frame.f_code.co_name)

    async def check_health(self) -> None:
        return None


async def test_the_stream_loop_reads_the_backend_with_no_generator_between() -> None:
    """Every await level between the request's task and the socket is resumed and suspended on each token;
    the API's loop reads the backend's iterator itself (the router observes each group in that loop)."""
    from hybridgate.api.hot import _stream
    from hybridgate.router import BackendManager, Call
    from hybridgate.serving import RequestContext

    backend = _Caller()
    mgr = BackendManager([backend])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    stream = await mgr.open_stream(Call(endpoint=Operation.CHAT, body=body, model="m"))
    sent: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message.get("body", b""))

    async def receive() -> MutableMapping[str, Any]:
        await asyncio.Event().wait()
        return {}

    await _stream(stream, True, receive, send, RequestContext(request_id="r", path="/v1/chat/completions"))
    assert backend.resumed_by == ["_stream"] * 4  # before: ["batches"] * 4 (Stream.batches in between)
    assert stream.attempt.usage.completion_tokens == 3 and not stream.attempt.usage.estimated
    out = b"".join(sent)
    assert out.count(b'"content":"w') == 3 and b'"usage":{' in out and out.endswith(b"data: [DONE]\n\n")


class _Holder(_Caller):
    """Streams like _Caller and, before its second group, counts the references to a bytes object."""

    def __init__(self, watched: bytes) -> None:
        super().__init__()
        self.watched = watched
        self.refs_mid_stream = -1

    async def stream_batches(self, req: BackendRequest) -> AsyncIterator[list[dict[str, Any]]]:
        first = True
        async for group in super().stream_batches(req):
            if not first and self.refs_mid_stream < 0:
                self.refs_mid_stream = sys.getrefcount(self.watched)
            first = False
            yield group


async def test_a_stream_does_not_hold_the_request_bytes() -> None:
    """A stream lives for seconds with its request's prompt; the raw body must not be held beside the parsed
    one (a 50 KB prompt would cost twice that per stream)."""
    from hybridgate.api.hot import InferenceRoutes
    from hybridgate.auth import Principal
    from hybridgate.router import NO_HOOKS, BackendManager
    from hybridgate.serving import InferenceService, RequestContext

    raw = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 50_000}], "stream": True}
    )
    backend = _Holder(raw)
    baseline = sys.getrefcount(raw)  # this frame's name, the backend's attribute, the call's argument
    routes = InferenceRoutes(InferenceService(BackendManager([backend]), lambda p, r: NO_HOOKS), 1 << 20, 30)
    await routes.start()
    messages = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> MutableMapping[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        return {}

    sent: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message.get("body", b""))

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    ctx = RequestContext(request_id="r", path="/v1/chat/completions")
    try:
        await routes.chat(scope, receive, send, ctx, Principal())
    finally:
        await routes.stop()
    assert b"".join(sent).endswith(b"data: [DONE]\n\n")
    # Mid-stream, only the references this test holds remain (before: one more, _handle's local).
    assert backend.refs_mid_stream == baseline


class _Slow(_Caller):
    """Streams like _Caller, `pause_s` before each group after the first."""

    def __init__(self, pause_s: float) -> None:
        super().__init__()
        self.pause_s = pause_s
        self.closed = False

    async def stream_batches(self, req: BackendRequest) -> AsyncIterator[list[dict[str, Any]]]:
        first = True
        try:
            async for group in super().stream_batches(req):
                if not first:
                    await asyncio.sleep(self.pause_s)
                first = False
                yield group
        finally:
            self.closed = True


async def _slow_stream(
    pause_s: float, disconnect_after_s: float | None
) -> tuple[_Slow, Any, list[bytes], dict[str, Any]]:
    """A stream of 4 groups `pause_s` apart through `_stream`, its client leaving after `disconnect_after_s`;
    counts the tasks created while it runs and whether the pending receive() was closed."""
    from hybridgate.api.hot import _stream
    from hybridgate.router import BackendManager, Call
    from hybridgate.serving import RequestContext

    backend = _Slow(pause_s)
    mgr = BackendManager([backend])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    stream = await mgr.open_stream(Call(endpoint=Operation.CHAT, body=body, model="m"))
    sent: list[bytes] = []
    seen: dict[str, Any] = {"receives": 0, "receives_closed": 0, "tasks": 0}
    loop = asyncio.get_running_loop()
    gone_at = None if disconnect_after_s is None else loop.time() + disconnect_after_s

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message.get("body", b""))

    async def receive() -> MutableMapping[str, Any]:
        seen["receives"] += 1
        try:
            if gone_at is not None:
                await asyncio.sleep(max(0.0, gone_at - loop.time()))
                return {"type": "http.disconnect"}
            await asyncio.Event().wait()
            return {}
        finally:
            seen["receives_closed"] += 1

    def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        seen["tasks"] += 1
        return asyncio.Task(coro, loop=lp, **kw)

    ctx = RequestContext(request_id="r", path="/v1/chat/completions")
    old = loop.get_task_factory()
    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        t0 = loop.time()
        await asyncio.create_task(_stream(stream, True, receive, send, ctx))
        seen["took_s"] = loop.time() - t0
    finally:
        loop.set_task_factory(old)
    seen["status"] = ctx.status
    return backend, stream, sent, seen


async def test_a_long_stream_is_watched_for_its_client_without_a_task_of_its_own() -> None:
    from hybridgate.api.hot import WATCH_AFTER_S

    _, _, sent, seen = await _slow_stream(WATCH_AFTER_S, None)  # lasts 3 x WATCH_AFTER_S
    assert seen["took_s"] > 2 * WATCH_AFTER_S and b"".join(sent).endswith(b"data: [DONE]\n\n")
    assert seen["status"] == 200
    assert seen["tasks"] == 1  # the stream's own (before: 2, the watcher's task too)
    assert seen["receives"] == 1 and seen["receives_closed"] == 1  # watched, then closed when it ended


async def test_a_client_gone_mid_stream_still_ends_it_promptly_and_it_is_settled() -> None:
    from hybridgate.api.hot import WATCH_AFTER_S

    backend, stream, sent, seen = await _slow_stream(1.0, 2 * WATCH_AFTER_S)
    assert seen["status"] == 499
    assert seen["took_s"] < 2 * WATCH_AFTER_S + 0.1  # not the 3 s the stream would have lasted
    assert backend.closed  # the backend's stream was closed: its slot is free
    assert stream.attempt.ok and stream.attempt.status == 499
    assert stream.attempt.error == "client disconnected mid-stream"
    assert not any(b"[DONE]" in s for s in sent)
