"""Selection, fallback and circuit-breaker rules, against in-process fake backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hybridgate.backends import (
    Backend,
    BackendConnectError,
    BackendHTTPError,
    BackendRequest,
    BackendResponse,
    BackendStreamError,
    BackendTimeoutError,
)
from hybridgate.config import BackendConfig
from hybridgate.protocol import (
    BadRequestError,
    BudgetExceededError,
    ModelNotFoundError,
    UpstreamUnavailableError,
    Usage,
    chunk_body,
    response_body,
)
from hybridgate.router import Attempt, BackendManager, BackendState, Call, ClientError, check_once


class Fake(Backend):
    """A backend whose next outcomes are scripted: 'ok', or an exception instance to raise."""

    def __init__(
        self,
        name: str,
        priority: int = 1,
        *,
        group: str | None = None,
        price: dict | None = None,
        trip: int = 2,
        cooldown: float = 10.0,
        models: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            BackendConfig(
                name=name,
                kind="mock",
                models=models or {"m": f"{name}-model"},
                priority=priority,
                group=group,
                price=price or {},
                health={"failures_to_trip": trip, "cooldown_s": cooldown},
            )
        )
        self.script: list[Any] = []
        self.calls: list[BackendRequest] = []
        self.healthy_check = True
        self.is_ready = True
        self.mid_stream_error: Exception | None = None

    @property
    def ready(self) -> bool:
        return self.is_ready

    def _next(self) -> Any:
        return self.script.pop(0) if self.script else "ok"

    async def complete(self, req: BackendRequest) -> BackendResponse:
        self.calls.append(req)
        out = self._next()
        if isinstance(out, Exception):
            raise out
        return BackendResponse(
            response_body(req.endpoint, "id", req.body["model"], self.name, "stop", Usage(10, 5)),
            Usage(10, 5),
        )

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(req)
        out = self._next()
        if isinstance(out, Exception):
            raise out
        yield chunk_body("chat", "id", "x", 0, role=True)
        yield chunk_body("chat", "id", "x", 0, text=self.name)
        if self.mid_stream_error is not None:
            raise self.mid_stream_error
        yield chunk_body("chat", "id", "x", 0, finish_reason="stop")
        yield {
            "id": "id",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        }

    async def check_health(self) -> None:
        if not self.healthy_check:
            raise BackendConnectError("down")


def call(**kw: Any) -> Call:
    base = dict(
        endpoint="chat", body={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, model="m"
    )
    base.update(kw)
    return Call(**base)


async def test_tries_backends_in_priority_order_and_rewrites_model_name() -> None:
    a, b = Fake("a", 2), Fake("b", 1)
    mgr = BackendManager([a, b])
    res = await mgr.complete(call())
    assert res.backend == "b"
    assert b.calls[0].body["model"] == "b-model"
    assert res.body["model"] == "m"  # the client sees the public name
    assert a.calls == []


@pytest.mark.parametrize(
    "failure",
    [
        BackendHTTPError("boom", status=500),
        BackendHTTPError("slow down", status=429),
        BackendTimeoutError("first byte"),
        BackendConnectError("refused"),
    ],
)
async def test_falls_back_to_next_backend_on_retryable_failure(failure: Exception) -> None:
    a, b = Fake("a", 1), Fake("b", 2)
    a.script = [failure]
    res = await BackendManager([a, b]).complete(call())
    assert res.backend == "b"
    assert [x.backend for x in res.attempts] == ["a", "b"]
    assert not res.attempts[0].ok and res.attempts[1].ok


async def test_client_error_from_backend_is_returned_as_is_without_fallback() -> None:
    a, b = Fake("a", 1), Fake("b", 2)
    body = {
        "error": {
            "message": "context too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
    }
    a.script = [BackendHTTPError("bad", status=400, body=body)]
    with pytest.raises(ClientError) as ei:
        await BackendManager([a, b]).complete(call())
    assert ei.value.status == 400 and ei.value.body() == body
    assert b.calls == []


async def test_all_backends_failing_is_503_listing_each_backend_and_why() -> None:
    a, b = Fake("a", 1), Fake("b", 2)
    a.script = [BackendHTTPError("HTTP 500: exploded", status=500)]
    b.script = [BackendTimeoutError("timed out waiting for the first byte after 1s")]
    with pytest.raises(UpstreamUnavailableError) as ei:
        await BackendManager([a, b]).complete(call())
    e = ei.value
    assert e.status == 503
    assert "a: HTTP 500: exploded" in e.message and "b: timed out" in e.message
    assert [x["backend"] for x in e.body()["error"]["attempts"]] == ["a", "b"]


async def test_forced_backend_is_the_only_one_tried_and_its_failure_is_502() -> None:
    a, b = Fake("a", 1), Fake("b", 2)
    b.script = [BackendHTTPError("down", status=503)]
    mgr = BackendManager([a, b])
    with pytest.raises(UpstreamUnavailableError) as ei:
        await mgr.complete(call(forced="b"))
    assert ei.value.status == 502 and a.calls == []
    assert (await mgr.complete(call(forced="b"))).backend == "b"


async def test_forced_backend_is_tried_even_when_marked_unhealthy() -> None:
    a = Fake("a", 1, trip=1)
    mgr = BackendManager([a, Fake("b", 2)])
    mgr.states["a"].record_failure("x")
    assert not mgr.states["a"].routable()
    assert (await mgr.complete(call(forced="a"))).backend == "a"


async def test_unknown_or_unrelated_forced_backend_is_a_400_naming_the_header() -> None:
    mgr = BackendManager([Fake("a"), Fake("z", models={"other": "o"})])
    with pytest.raises(BadRequestError) as e1:
        await mgr.complete(call(forced="nope"))
    assert e1.value.param == "X-Hybridgate-Backend"
    with pytest.raises(BadRequestError) as e2:
        await mgr.complete(call(forced="z"))
    assert "does not serve model" in e2.value.message


async def test_preferred_backend_goes_first_when_healthy_then_the_rest_by_priority() -> None:
    a, b, c = Fake("a", 1), Fake("b", 2), Fake("c", 3)
    mgr = BackendManager([a, b, c])
    assert (await mgr.complete(call(preferred="c"))).backend == "c"
    c.script = [BackendHTTPError("x", status=500)]
    res = await mgr.complete(call(preferred="c"))
    assert [x.backend for x in res.attempts] == ["c", "a"]


async def test_preferred_backend_is_skipped_while_unhealthy() -> None:
    a, c = Fake("a", 1), Fake("c", 3, trip=1)
    mgr = BackendManager([a, c])
    mgr.states["c"].record_failure("down")
    res = await mgr.complete(call(preferred="c"))
    assert res.backend == "a" and c.calls == []


async def test_unknown_model_is_404() -> None:
    with pytest.raises(ModelNotFoundError) as ei:
        await BackendManager([Fake("a")]).complete(call(model="nope"))
    assert ei.value.status == 404 and ei.value.param == "model"


async def test_consecutive_failures_trip_the_breaker_and_backend_is_skipped() -> None:
    a, b = Fake("a", 1, trip=2), Fake("b", 2)
    mgr = BackendManager([a, b])
    a.script = [BackendHTTPError("x", status=500)] * 2
    await mgr.complete(call())
    assert mgr.states["a"].healthy
    await mgr.complete(call())
    assert not mgr.states["a"].healthy
    calls_before = len(a.calls)
    res = await mgr.complete(call())
    assert res.backend == "b" and len(a.calls) == calls_before
    assert res.attempts[0].backend == "a" and "unhealthy" in (res.attempts[0].error or "")


async def test_a_success_resets_the_failure_count() -> None:
    a, b = Fake("a", 1, trip=2), Fake("b", 2)
    mgr = BackendManager([a, b])
    a.script = [BackendHTTPError("x", status=500), "ok", BackendHTTPError("x", status=500)]
    for _ in range(3):
        await mgr.complete(call())
    assert mgr.states["a"].healthy and mgr.states["a"].consecutive_failures == 1


async def test_backend_recovers_after_cooldown_through_a_trial_request() -> None:
    now = [1000.0]
    a, b = Fake("a", 1, trip=1, cooldown=5), Fake("b", 2)
    mgr = BackendManager([a, b])
    st = mgr.states["a"]
    st._clock = lambda: now[0]
    a.script = [BackendHTTPError("x", status=500)]
    await mgr.complete(call())
    assert not st.routable()
    now[0] += 5.1
    assert st.routable()  # half-open
    res = await mgr.complete(call())
    assert res.backend == "a" and st.healthy


async def test_health_check_passing_during_cooldown_does_not_close_the_circuit_early() -> None:
    a = Fake("a", 1, trip=1, cooldown=60)
    st = BackendState(a)
    st.record_failure("down")
    assert await check_once(st)
    assert not st.healthy and st.consecutive_failures == 0


async def test_failing_health_checks_mark_a_backend_unhealthy() -> None:
    a = Fake("a", 1, trip=2)
    a.healthy_check = False
    st = BackendState(a)
    assert not await check_once(st)
    assert not await check_once(st)
    assert not st.healthy and st.last_error == "health check: down" and st.last_check is not None


async def test_loading_backend_is_not_routable_and_requests_fall_back() -> None:
    a, b = Fake("a", 1), Fake("b", 2)
    a.is_ready = False
    res = await BackendManager([a, b]).complete(call())
    assert res.backend == "b" and "not ready" in (res.attempts[0].error or "")


def test_priority_override_by_name_or_group() -> None:
    local, cloud, mock = Fake("local", 1, group="local"), Fake("cloud", 2, group="cloud"), Fake("mock", 9)
    mgr = BackendManager([local, cloud, mock], priority_override=["cloud", "local"])
    assert [s.name for s in mgr.by_model["m"]] == ["cloud", "local", "mock"]
    mgr = BackendManager([local, cloud, mock], priority_override=["mock"])
    assert [s.name for s in mgr.by_model["m"]] == ["mock", "local", "cloud"]


def test_priority_override_with_unknown_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="neither a backend name nor a group"):
        BackendManager([Fake("a")], priority_override=["gpu"])


async def test_stream_failure_before_first_chunk_falls_back() -> None:
    a, b = Fake("a", 1), Fake("b", 2)
    a.script = [BackendConnectError("refused")]
    s = await BackendManager([a, b]).open_stream(call())
    texts = [c["choices"][0]["delta"].get("content") for c in [x async for x in s] if c.get("choices")]
    await s.settle()
    assert s.backend == "b" and "b" in texts
    assert s.attempt.ok and s.attempt.usage.completion_tokens == 2


async def test_stream_failure_after_first_chunk_raises_and_is_recorded_against_the_backend() -> None:
    a, b = Fake("a", 1), Fake("b", 2)
    a.mid_stream_error = BackendStreamError("dropped")
    s = await BackendManager([a, b]).open_stream(call())
    got = []
    with pytest.raises(BackendStreamError):
        async for c in s:
            got.append(c)
    await s.settle(BackendStreamError("dropped"))
    assert len(got) == 2 and b.calls == []
    assert not s.attempt.ok and s.attempt.error == "dropped"
    assert s.attempt.usage.estimated  # no usage chunk arrived: counted from what was produced


class Budget:
    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.after: list[Attempt] = []

    async def before_attempt(self, state: BackendState, req: BackendRequest) -> None:
        if state.name in self.refuse:
            raise BudgetExceededError(f"over budget on {state.name}")

    async def after_attempt(self, state: BackendState, attempt: Attempt) -> None:
        self.after.append(attempt)


async def test_hook_refusal_skips_that_backend_only() -> None:
    a, b = Fake("a", 1, price={"input_per_mtok": 1.0}), Fake("b", 2, price={"free": True})
    hooks = Budget({"a"})
    res = await BackendManager([a, b]).complete(call(hooks=hooks))
    assert res.backend == "b" and a.calls == []
    assert [x.backend for x in hooks.after] == ["b"]


async def test_when_every_backend_is_refused_the_refusal_is_the_answer() -> None:
    with pytest.raises(BudgetExceededError):
        await BackendManager([Fake("a"), Fake("b", 2)]).complete(call(hooks=Budget({"a", "b"})))


async def test_cost_is_computed_from_price_and_usage_for_every_attempt() -> None:
    a = Fake("a", 1, price={"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000})
    b = Fake("b", 2, price={"per_request": 0.5})
    a.script = [BackendHTTPError("x", status=500)]
    hooks = Budget(set())
    res = await BackendManager([a, b]).complete(call(hooks=hooks))
    assert res.attempts[0].cost_usd == 0.0  # failed attempt: no usage
    assert res.attempts[1].cost_usd == pytest.approx(0.5)
    assert len(hooks.after) == 2


async def test_per_hour_price_is_prorated_by_duration() -> None:
    class Slow(Fake):
        async def complete(self, req: BackendRequest) -> BackendResponse:
            await asyncio.sleep(0.2)
            return await super().complete(req)

    res = await BackendManager([Slow("a", price={"per_hour": 3600})]).complete(call())
    assert 0.19 < res.cost_usd < 0.5


async def test_a_hanging_in_process_backend_times_out_and_falls_back() -> None:
    class Hang(Fake):
        async def complete(self, req: BackendRequest) -> BackendResponse:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
            await asyncio.Event().wait()
            yield {}

    h = Hang("h", 1)
    h.config = h.config.model_copy(
        update={"timeouts": h.config.timeouts.model_copy(update={"total_s": 0.2, "first_byte_s": 0.2})}
    )
    mgr = BackendManager([h, Fake("b", 2)])
    res = await mgr.complete(call())
    assert res.backend == "b" and "timed out" in (res.attempts[0].error or "")
    s = await mgr.open_stream(call())
    assert s.backend == "b" and "first chunk" in (s.attempts[0].error or "")
    await s.settle()


async def test_an_adapter_bug_falls_back_without_touching_that_backends_health() -> None:
    # An adapter crash is most likely met by an unusual request: client input must never bench a backend.
    a, b = Fake("a", 1, trip=1), Fake("b", 2)
    a.script = [RuntimeError("oops")]
    hooks = Budget(set())
    mgr = BackendManager([a, b])
    res = await mgr.complete(call(hooks=hooks))
    assert res.backend == "b" and "adapter error" in (res.attempts[0].error or "")
    assert [x.backend for x in hooks.after] == ["a", "b"]
    assert mgr.states["a"].healthy and mgr.states["a"].consecutive_failures == 0


async def test_a_cancelled_call_still_settles_its_attempt() -> None:
    class Slow(Fake):
        async def complete(self, req: BackendRequest) -> BackendResponse:
            await asyncio.sleep(10)
            raise AssertionError("unreachable")

    hooks = Budget(set())
    task = asyncio.create_task(BackendManager([Slow("a")]).complete(call(hooks=hooks)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(hooks.after) == 1 and "cancelled" in (hooks.after[0].error or "")


async def test_a_busy_backend_falls_back_without_tripping_its_breaker() -> None:
    from hybridgate.backends import BackendUnavailableError

    a, b = Fake("a", 1, trip=1), Fake("b", 2)
    a.script = [BackendUnavailableError("queue full")] * 3
    mgr = BackendManager([a, b])
    for _ in range(3):
        assert (await mgr.complete(call())).backend == "b"
    assert mgr.states["a"].healthy and mgr.states["a"].consecutive_failures == 0


class _SlowProbe(Fake):
    """A backend whose health probe always times out (queued behind its load), whatever its calls do."""

    async def check_health(self) -> None:
        raise BackendTimeoutError("health check http://a/health timed out after 2s")


async def test_a_probe_timing_out_while_calls_succeed_does_not_bench_the_backend() -> None:
    a = _SlowProbe("a", 1, trip=2)
    mgr = BackendManager([a])
    st = mgr.states["a"]
    for _ in range(5):
        assert (await mgr.complete(call())).backend == "a"  # a real call succeeds...
        assert not await check_once(st)  # ...and the probe times out
    assert st.healthy and st.routable() and st.consecutive_failures == 0
    assert st.busy_probes == 5 and "not counted" in (st.last_error or "")
    snap = st.snapshot()
    assert snap["healthy"] and snap["busy_probes"] == 5


async def test_a_streams_first_chunk_counts_as_a_call_succeeding() -> None:
    a = _SlowProbe("a", 1, trip=1)
    mgr = BackendManager([a])
    st = mgr.states["a"]
    stream = await mgr.open_stream(call())  # open, not yet ended
    assert not await check_once(st)
    assert st.healthy and st.busy_probes == 1
    await stream.settle()


async def test_probe_timeouts_with_no_call_succeeding_still_bench_the_backend() -> None:
    now = [1000.0]
    a = _SlowProbe("a", 1, trip=2)
    st = BackendState(a, _clock=lambda: now[0])
    # Nothing succeeded at all: a dead backend is still benched after failures_to_trip probes.
    assert not await check_once(st)
    assert not await check_once(st)
    assert not st.healthy and st.busy_probes == 0
    # A call that succeeded long before the probe (over one interval earlier) does not excuse it either.
    b = _SlowProbe("b", 1, trip=1)
    st2 = BackendState(b, _clock=lambda: now[0])
    st2.last_ok = now[0]
    now[0] += b.config.health.interval_s + 1
    assert not await check_once(st2)
    assert not st2.healthy
