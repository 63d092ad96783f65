"""The router's side of capacity on demand (`demand()`), in process: a call that finds no ready backend
able to take it (none ready, all failed, all full) asks for capacity and waits for it, bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.test_router_lifecycle import Slow, call

from hybridgate.backends import BackendConnectError, Lifecycle
from hybridgate.protocol import UpstreamUnavailableError
from hybridgate.router import BackendManager


class OnDemand(Slow):
    """Stopped until asked; then provisioning, and ready `warm_s` later (unless `refuse`)."""

    def __init__(self, name: str, *, warm_s: float = 0.2, refuse: bool = False, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.life = Lifecycle.STOPPED
        self.warm_s = warm_s
        self.refuse = refuse
        self.asked = 0
        self.task: asyncio.Task[None] | None = None

    def demand(self) -> bool:
        self.asked += 1
        if self.refuse:
            return False
        if self.life is Lifecycle.STOPPED:
            self.life = Lifecycle.PROVISIONING
            self.task = asyncio.create_task(self._warm())
        return self.life.coming or self.life is Lifecycle.READY

    async def _warm(self) -> None:
        await asyncio.sleep(self.warm_s)
        self.life = Lifecycle.READY


async def test_nothing_ready_starts_capacity_and_the_call_waits_for_it() -> None:
    pod = OnDemand("pod", priority=5)
    res = await BackendManager([pod], warming_wait_s=5).complete(call())
    assert res.backend == "pod" and pod.asked >= 1


async def test_the_local_backend_failing_starts_a_pod_and_the_call_succeeds_on_it() -> None:
    local, pod = Slow("local", priority=1), OnDemand("pod", priority=5)
    local.fail_with = BackendConnectError("connection refused")
    res = await BackendManager([local, pod], warming_wait_s=5).complete(call())
    assert res.backend == "pod"
    assert [a.backend for a in res.attempts if a.reached_backend] == ["local", "pod"]


async def test_a_ready_backend_serves_and_nothing_is_started() -> None:
    local, pod = Slow("local", priority=1), OnDemand("pod", priority=5)
    res = await BackendManager([local, pod], warming_wait_s=5).complete(call())
    assert res.backend == "local" and pod.asked == 0 and pod.life is Lifecycle.STOPPED


async def test_a_full_local_backend_starts_a_pod_while_the_call_queues() -> None:
    local = Slow("local", priority=1, delay=0.5, concurrency={"max": 1, "queue": 4})
    pod = OnDemand("pod", priority=5, warm_s=0.1)
    mgr = BackendManager([local, pod], warming_wait_s=5)
    first = asyncio.create_task(mgr.complete(call()))
    await asyncio.sleep(0.05)
    second = await mgr.complete(call())
    assert pod.asked >= 1 and pod.life is Lifecycle.READY  # started when the local one was full
    assert (await first).backend == "local"
    assert second.backend == "local"  # it was queued on local; the pod serves the next calls
    assert (await mgr.complete(call())).backend == "local"


async def test_capacity_that_cannot_come_fails_at_once() -> None:
    local, pod = Slow("local", priority=1), OnDemand("pod", priority=5, refuse=True)
    local.fail_with = BackendConnectError("connection refused")
    with pytest.raises(UpstreamUnavailableError) as e:
        await BackendManager([local, pod], warming_wait_s=5).complete(call())
    assert "local: connection refused" in e.value.message


async def test_capacity_slower_than_the_bound_is_a_503_saying_so() -> None:
    pod = OnDemand("pod", warm_s=10)
    with pytest.raises(UpstreamUnavailableError) as e:
        await BackendManager([pod], warming_wait_s=0.2).complete(call())
    assert e.value.code == "backends_warming"


async def test_while_a_pod_ranked_above_a_fallback_warms_the_fallback_serves_then_the_pod() -> None:
    local, pod = Slow("local", priority=1), OnDemand("pod", priority=5, warm_s=0.3)
    hosted = Slow("hosted", priority=8)
    local.fail_with = BackendConnectError("connection refused")
    mgr = BackendManager([local, pod, hosted], warming_wait_s=5)
    first = await mgr.complete(call())
    assert first.backend == "hosted" and pod.asked == 1  # bridged by the fallback, the pod started at once
    assert pod.task is not None
    await pod.task
    assert (await mgr.complete(call())).backend == "pod"


async def test_a_pod_ranked_below_a_ready_fallback_is_not_started() -> None:
    local, hosted = Slow("local", priority=1), Slow("hosted", priority=5)
    pod = OnDemand("pod", priority=8)
    local.fail_with = BackendConnectError("connection refused")
    res = await BackendManager([local, hosted, pod], warming_wait_s=5).complete(call())
    assert res.backend == "hosted" and pod.asked == 0 and pod.life is Lifecycle.STOPPED
