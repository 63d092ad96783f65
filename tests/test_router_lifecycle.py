"""Backends that come and go, warm up, fill up or are misconfigured: the router's rules, in process.

In-process fake backends (as in test_core_router.py) plus, where the wire matters, the real OpenAI adapter
against a loopback aiohttp server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from hybridgate.backends import (
    KINDS,
    Backend,
    BackendModelMissingError,
    BackendRequest,
    BackendResponse,
    Lifecycle,
    build_backend,
)
from hybridgate.config import BackendConfig
from hybridgate.ledger import price_usage
from hybridgate.observability import Metrics
from hybridgate.protocol import (
    BadRequestError,
    Operation,
    UpstreamUnavailableError,
    Usage,
    chunk_body,
    response_body,
)
from hybridgate.router import BackendManager, Call


class Slow(Backend):
    """Answers after `delay` seconds, recording how many of its calls ran at once and when each started."""

    def __init__(
        self,
        name: str,
        priority: int = 1,
        *,
        delay: float = 0.02,
        models: dict[str, str] | None = None,
        concurrency: dict[str, Any] | None = None,
        ops: frozenset[Operation] | None = None,
    ) -> None:
        super().__init__(
            BackendConfig(
                name=name,
                kind="mock",
                models=models or {"m": f"{name}-model"},
                priority=priority,
                price={"free": True},
                concurrency=concurrency,
            )
        )
        if ops is not None:
            self.operations = ops
        self.delay = delay
        self.running = 0
        self.peak = 0
        self.started: list[float] = []
        self.life = Lifecycle.READY
        self.closed = False
        self.fail_with: Exception | None = None

    @property
    def ready(self) -> bool:
        return self.life in (Lifecycle.READY, Lifecycle.FAILED)

    @property
    def lifecycle(self) -> Lifecycle:
        return self.life

    async def close(self) -> None:
        self.closed = True

    async def complete(self, req: BackendRequest) -> BackendResponse:
        assert not self.closed, f"{self.name} called after it was closed"
        self.started.append(time.monotonic())
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.running -= 1
        usage = Usage(3, 2)
        return BackendResponse(
            response_body(req.endpoint, "id", req.body["model"], self.name, "stop", usage), usage
        )

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        self.started.append(time.monotonic())
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            yield chunk_body("chat", "id", "x", 0, text=self.name)
            await asyncio.sleep(self.delay)
            yield chunk_body("chat", "id", "x", 0, finish_reason="stop")
        finally:
            self.running -= 1

    async def check_health(self) -> None:
        return None


def call(model: str = "m", endpoint: str = "chat", **kw: Any) -> Call:
    return Call(
        endpoint=Operation(endpoint),
        body={"model": model, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"},
        model=model,
        **kw,
    )


# --- backends added and removed while serving ----------------------------------------------------


async def test_backends_added_and_removed_under_steady_traffic_lose_nothing_and_misroute_nothing() -> None:
    first = Slow("first", delay=0.01)
    mgr = BackendManager([first])
    await mgr.start()
    served: list[tuple[str, float]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            res = await mgr.complete(call())  # raises (and fails the test) if any request is lost
            served.append((res.backend, time.monotonic()))

    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        await asyncio.sleep(0.1)
        second = Slow("second", delay=0.01)
        await mgr.add(second)
        await asyncio.sleep(0.1)
        removed_first_at = time.monotonic()
        await mgr.remove("first", drain_s=5)
        await asyncio.sleep(0.1)
        third = Slow("third", delay=0.01)
        await mgr.add(third)
        removed_second_at = time.monotonic()
        await mgr.remove("second", drain_s=5)
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await mgr.close()
    assert len(served) > 100
    # Nothing started on a backend once its removal had begun, and it was closed only after draining.
    assert all(t < removed_first_at for t in first.started)
    assert all(t < removed_second_at for t in second.started)
    assert first.closed and second.closed and first.running == 0 and second.running == 0
    assert {b for b, _ in served} == {"first", "second", "third"}
    assert [s.name for s in mgr.by_model["m"]] == ["third"] and list(mgr.states) == ["third"]


async def test_removal_waits_for_streams_in_flight_to_finish() -> None:
    a, b = Slow("a", 1, delay=0.3), Slow("b", 2)
    mgr = BackendManager([a, b])
    await mgr.start()
    s = await mgr.open_stream(call())
    assert s.backend == "a" and mgr.states["a"].in_flight == 1
    removal = asyncio.create_task(mgr.remove("a", drain_s=5))
    await asyncio.sleep(0.05)
    assert not removal.done() and not a.closed  # still draining: the stream holds it
    assert (await mgr.complete(call())).backend == "b"  # new calls already go elsewhere
    chunks = [c async for c in s]
    await s.settle()
    await asyncio.wait_for(removal, 2)
    assert a.closed and len(chunks) == 2
    await mgr.close()


async def test_adding_a_backend_with_a_taken_name_is_refused() -> None:
    mgr = BackendManager([Slow("a")])
    with pytest.raises(ValueError, match="already exists"):
        await mgr.add(Slow("a"))
    with pytest.raises(KeyError):
        await mgr.remove("nope")


# --- warming backends ----------------------------------------------------------------------------


async def test_a_request_whose_only_backend_is_warming_waits_and_succeeds() -> None:
    a = Slow("a")
    a.life = Lifecycle.WARMING
    mgr = BackendManager([a], warming_wait_s=5)

    async def warm_up() -> None:
        await asyncio.sleep(0.3)
        a.life = Lifecycle.READY

    t0 = time.monotonic()
    warmer = asyncio.create_task(warm_up())
    res = await mgr.complete(call())
    await warmer
    assert res.backend == "a" and time.monotonic() - t0 >= 0.25


async def test_a_ready_backend_serves_at_once_while_another_warms() -> None:
    a, b = Slow("a", 1), Slow("b", 2)
    a.life = Lifecycle.PROVISIONING
    t0 = time.monotonic()
    res = await BackendManager([a, b], warming_wait_s=5).complete(call())
    assert res.backend == "b" and time.monotonic() - t0 < 0.2


async def test_past_the_warming_bound_the_answer_is_503_with_retry_after() -> None:
    a = Slow("a")
    a.life = Lifecycle.WARMING
    with pytest.raises(UpstreamUnavailableError) as ei:
        await BackendManager([a], warming_wait_s=0.2).open_stream(call())
    e = ei.value
    assert e.status == 503 and e.code == "backends_warming" and int(e.headers["Retry-After"]) >= 1
    assert "a (warming)" in e.message and "warming_wait_s" in e.message


async def test_a_backend_that_fails_while_we_wait_ends_the_wait_at_once() -> None:
    a = Slow("a")
    a.life = Lifecycle.WARMING
    a.fail_with = UpstreamUnavailableError("broken")  # any call to it fails

    async def fail_soon() -> None:
        await asyncio.sleep(0.1)
        a.life = Lifecycle.STOPPED

    t0 = time.monotonic()
    task = asyncio.create_task(fail_soon())
    with pytest.raises(UpstreamUnavailableError) as ei:
        await BackendManager([a], warming_wait_s=10).complete(call())
    await task
    assert time.monotonic() - t0 < 2 and ei.value.code == "all_backends_failed"


# --- concurrency caps ----------------------------------------------------------------------------


async def test_a_cap_of_two_keeps_two_in_flight_and_queues_the_rest() -> None:
    a = Slow("a", delay=0.05, concurrency={"max": 2, "queue": 8})
    mgr = BackendManager([a])
    results = await asyncio.gather(*(mgr.complete(call()) for _ in range(10)))
    assert [r.backend for r in results] == ["a"] * 10
    assert a.peak == 2 and mgr.states["a"].in_flight == 0 and mgr.states["a"].healthy


async def test_a_full_backend_is_skipped_for_the_next_not_marked_unhealthy() -> None:
    a = Slow("a", 1, delay=0.1, concurrency={"max": 2, "queue": 0})
    b = Slow("b", 2, delay=0.1)
    mgr = BackendManager([a, b])
    results = await asyncio.gather(*(mgr.complete(call()) for _ in range(10)))
    by = [r.backend for r in results]
    assert by.count("a") == 2 and by.count("b") == 8 and a.peak == 2
    st = mgr.states["a"]
    assert st.healthy and st.consecutive_failures == 0
    skipped = [x for r in results for x in r.attempts if x.backend == "a" and not x.ok]
    assert skipped and all("concurrency.max=2" in (x.error or "") for x in skipped)


async def test_when_every_backend_is_full_and_the_queue_is_full_the_answer_is_503() -> None:
    a = Slow("a", delay=0.2, concurrency={"max": 1, "queue": 1})
    mgr = BackendManager([a])
    outcomes = await asyncio.gather(*(mgr.complete(call()) for _ in range(4)), return_exceptions=True)
    ok = [o for o in outcomes if not isinstance(o, Exception)]
    failed = [o for o in outcomes if isinstance(o, UpstreamUnavailableError)]
    assert len(ok) == 2 and len(failed) == 2 and a.peak == 1
    assert all("queue full" in e.message for e in failed)


async def test_streams_hold_their_slot_until_settled() -> None:
    a = Slow("a", delay=0.01, concurrency={"max": 1, "queue": 4})
    mgr = BackendManager([a])
    s = await mgr.open_stream(call())
    waiting = asyncio.create_task(mgr.complete(call()))
    await asyncio.sleep(0.05)
    assert not waiting.done() and mgr.states["a"].gate is not None and mgr.states["a"].gate.waiting == 1
    [c async for c in s]
    await s.settle()
    assert (await asyncio.wait_for(waiting, 2)).backend == "a"


# --- misconfigured models ------------------------------------------------------------------------


async def test_model_not_found_falls_back_and_shows_why_without_harming_health() -> None:
    a, b = Slow("a", 1), Slow("b", 2)
    a.fail_with = BackendModelMissingError("HTTP 404: The model `a-model` does not exist.", status=404)
    mgr = BackendManager([a, b])
    for _ in range(5):
        res = await mgr.complete(call())
        assert res.backend == "b"
    st = mgr.states["a"]
    assert st.healthy and st.consecutive_failures == 0
    assert "does not exist" in st.model_errors["m"] and st.snapshot()["model_errors"]["m"]
    # What the client could see never repeats the backend's own "model does not exist".
    assert "does not exist" not in (res.attempts[0].error or "") and "misconfigured" in (
        res.attempts[0].error or ""
    )
    a.fail_with = None
    assert (await mgr.complete(call())).backend == "a" and st.model_errors == {}


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def test_openai_backend_answering_model_not_found_falls_back_and_is_flagged_at_start() -> None:
    async def chat(request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        return web.json_response(
            {
                "error": {
                    "message": f"The model `{model}` does not exist.",
                    "type": "NotFoundError",
                    "code": 404,
                }
            },
            status=404,
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "served-one", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    runner, url = await _serve(app)
    gpu = build_backend(
        BackendConfig(
            name="gpu",
            kind="openai",
            base_url=url,
            models={"m": "wrong-name"},
            price={"free": True},
            health={"mode": "passive"},
        )
    )
    fallback = Slow("fallback", 20)
    mgr = BackendManager([gpu, fallback])
    await mgr.start()
    try:
        for _ in range(4):
            res = await mgr.complete(call())
            assert res.backend == "fallback"
        st = mgr.states["gpu"]
        assert st.healthy and st.consecutive_failures == 0
        assert st.model_errors["m"] and st.snapshot()["health_checks"] == "passive"
        assert res.attempts[0].status == 404 and "misconfigured" in (res.attempts[0].error or "")
        assert "wrong-name" not in (res.attempts[0].error or "")
    finally:
        await mgr.close()
        await runner.cleanup()


async def test_start_warns_naming_the_backend_and_the_models_it_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "llama-3", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner, url = await _serve(app)
    gpu = build_backend(BackendConfig(name="gpu", kind="openai", base_url=url, models={"chat": "lama-3"}))
    mgr = BackendManager([gpu])
    try:
        with caplog.at_level("WARNING", logger="hybridgate.router"):
            await mgr.start()
            for _ in range(100):
                if mgr.states["gpu"].model_errors:
                    break
                await asyncio.sleep(0.02)
        assert "'chat' to 'lama-3'" in mgr.states["gpu"].model_errors["chat"]
        line = next(r.getMessage() for r in caplog.records if "does not serve" in r.getMessage())
        assert "gpu" in line and "lama-3" in line and "llama-3" in line
    finally:
        await mgr.close()
        await runner.cleanup()


async def test_openai_backend_caps_its_connections_to_the_origin() -> None:
    running = 0
    peak = 0

    async def chat(request: web.Request) -> web.Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        usage = {"prompt_tokens": 1, "completion_tokens": 1}
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [], "usage": usage})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner, url = await _serve(app)
    gpu = build_backend(
        BackendConfig(
            name="gpu",
            kind="openai",
            base_url=url,
            models={"m": "m"},
            options={"max_connections": 2, "check_models": False},
        )
    )
    await gpu.start()
    try:
        req = BackendRequest(Operation.CHAT, {"model": "m", "messages": []}, "m")
        await asyncio.gather(*(gpu.complete(req) for _ in range(12)))
        assert peak == 2
        assert gpu.client.open_connections(gpu._origin) <= 2  # type: ignore[attr-defined]
    finally:
        await gpu.close()
        await runner.cleanup()


# --- operations, kinds, options, prices ----------------------------------------------------------


async def test_only_backends_implementing_the_operation_are_planned() -> None:
    chat_only = Slow("chat_only", 1, ops=frozenset({Operation.CHAT}))
    both = Slow("both", 2)
    mgr = BackendManager([chat_only, both])
    assert (await mgr.complete(call(endpoint="completions"))).backend == "both"
    assert (await mgr.complete(call(endpoint="chat"))).backend == "chat_only"
    with pytest.raises(BadRequestError) as ei:
        await BackendManager([chat_only]).complete(call(endpoint="completions"))
    assert ei.value.code == "operation_not_supported"


def test_unknown_kind_and_bad_options_name_the_backend_and_the_field() -> None:
    with pytest.raises(
        ValueError, match=r"backend 'x': unknown backend kind 'gpu'; known kinds: .*llamacpp.*mock"
    ):
        build_backend(BackendConfig(name="x", kind="gpu", models={"m": "m"}))
    with pytest.raises(
        ValueError, match=r"backend 'x' \(kind mock\) has invalid options: options.latency_ms"
    ):
        build_backend(BackendConfig(name="x", kind="mock", models={"m": "m"}, options={"latency_ms": -1}))
    with pytest.raises(ValueError, match=r"options.max_connectionz"):
        build_backend(
            BackendConfig(
                name="x",
                kind="openai",
                base_url="http://h/v1",
                models={"m": "m"},
                options={"max_connectionz": 1},
            )
        )


ECHO_KIND = """
from pydantic import BaseModel, ConfigDict

from hybridgate.backends import Backend, BackendResponse
from hybridgate.protocol import Operation, Usage, response_body


class EchoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix: str = ">"


class EchoBackend(Backend):
    operations = frozenset({Operation.CHAT})
    Options = EchoOptions

    async def complete(self, req):
        text = self.options.prefix + req.body["messages"][-1]["content"]
        return BackendResponse(response_body(req.endpoint, "id", req.body["model"], text, "stop", Usage(1, 1)))

    async def stream(self, req):
        raise NotImplementedError
        yield

    async def check_health(self):
        return None
"""


async def test_a_new_kind_is_one_module_and_one_registry_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "echo_kind.py").write_text(ECHO_KIND)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KINDS, "echo", "echo_kind:EchoBackend")
    b = build_backend(BackendConfig(name="e", kind="echo", models={"m": "m"}, options={"prefix": "echo: "}))
    res = await BackendManager([b]).complete(call())
    assert res.body["choices"][0]["message"]["content"] == "echo: hi"
    with pytest.raises(ValueError, match=r"options.prefx"):
        build_backend(BackendConfig(name="e", kind="echo", models={"m": "m"}, options={"prefx": "x"}))
    with pytest.raises(BadRequestError, match="does not support completions"):
        await BackendManager([b]).complete(call(endpoint="completions"))


def test_the_ledger_prices_every_usage_unit() -> None:
    price = BackendConfig(
        name="p",
        kind="mock",
        models={"m": "m"},
        price={
            "input_per_mtok": 1.0,
            "output_per_mtok": 2.0,
            "per_request": 0.01,
            "per_image": 0.04,
            "per_gpu_hour": 3.6,
            "training_per_mtok": 5.0,
            "per_hour": 36.0,
        },
    ).price
    u = Usage(1_000_000, 500_000, images=3, gpu_seconds=100.0, training_tokens=200_000, requests=2)
    expected = 1.0 + 1.0 + 0.02 + 0.12 + 0.1 + 1.0 + 0.01 * 36 / 36 * 1.0
    assert price_usage(price, u, seconds=1.0) == pytest.approx(expected)
    assert not price.is_zero and price_usage(price, Usage(requests=0), 0.0) == 0.0


def test_metrics_show_each_backends_lifecycle() -> None:
    a = Slow("a")
    a.life = Lifecycle.WARMING
    mgr = BackendManager([a, Slow("b", 2)])
    text = Metrics(lambda: [s.snapshot() for s in mgr.states.values()]).render().decode()
    assert 'hybridgate_backend_lifecycle{backend="a",state="warming"} 1.0' in text
    assert 'hybridgate_backend_lifecycle{backend="a",state="ready"} 0.0' in text
    assert 'hybridgate_backend_lifecycle{backend="b",state="ready"} 1.0' in text
    assert mgr.states["a"].snapshot()["lifecycle"] == "warming"
