"""The pod pool in process against `hybridgate mock-runpod` (a real process; each running pod backed by a
real mock-server process): resume failure -> terminate and re-create, readiness deadline, provider
errors, adoption of a crashed gateway's pods, operator actions, and scaling between min and max."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from hybridgate.backends import BackendConnectError, BackendError, BackendTimeoutError, Lifecycle
from hybridgate.backends.pod import PodBackend, Replica
from hybridgate.cloud._autoscale import ScalePolicy
from hybridgate.config import BackendConfig
from hybridgate.protocol import Operation
from hybridgate.router import BackendManager, Call
from hybridgate.testing.mocks.runpod import start_mock_runpod
from hybridgate.testing.procs import Proc

KEY = "rp-test-key"


@pytest.fixture(scope="module")
def rp() -> Iterator[Proc]:
    proc = start_mock_runpod(api_key=KEY, provision_polls=1)
    yield proc
    proc.stop()


def configure(rp: Proc, **faults: Any) -> None:
    httpx.post(rp.url + "/_mock/config", json=faults).raise_for_status()


def interrupt(rp: Proc, pod_id: str) -> None:
    httpx.post(rp.url + "/_mock/interrupt", json={"pod_id": pod_id}).raise_for_status()


def mock_pods(rp: Proc) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in httpx.get(rp.url + "/_mock/pods").json()["pods"]}


@pytest.fixture(autouse=True)
def _reset(rp: Proc) -> Iterator[None]:
    yield
    configure(rp, no_capacity=[], resume_fails=False, html_502=0, null_data=0, provision_polls=1)


def pool(rp: Proc, name: str, **options: Any) -> PodBackend:
    opts = {
        "provider_url": rp.url,
        "gpu_types": ["NVIDIA L4"],
        "image": "vllm/vllm-openai:latest",
        "poll_s": 0.1,
        "retry_s": 0,
        **options,
    }
    return PodBackend(BackendConfig(name=name, kind="pod", api_key=KEY, models={"m": "m"}, options=opts))


@pytest.fixture
async def pools() -> AsyncIterator[list[PodBackend]]:
    made: list[PodBackend] = []
    yield made
    for p in made:
        await p.close()


async def until(what: str, check: Any, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s}s")
        await asyncio.sleep(0.05)


def chat() -> Call:
    return Call(Operation.CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "m")


async def test_resume_without_a_free_gpu_terminates_and_re_creates_saying_so(
    rp: Proc, pools: list[PodBackend]
) -> None:
    p = pool(rp, "resume")
    pools.append(p)
    await p.start()
    r = p.start_one()
    await until("ready", lambda: p.ready)
    first = r.pod_id
    assert first is not None
    p.stop_one(r, terminate=False, reason="test")
    await until("stopped", lambda: r.lifecycle is Lifecycle.STOPPED)
    assert mock_pods(rp)[first]["desiredStatus"] == "EXITED"
    configure(rp, resume_fails=True)
    p.resume_one(r)
    await until("ready again", lambda: p.ready)
    assert r.pod_id != first
    assert mock_pods(rp)[first]["desiredStatus"] == "TERMINATED"
    notes = " ".join(t[2] for t in r.transitions) + " ".join(e for _, e in p.events)
    assert (
        "not enough free GPUs" in notes
        and "terminat" in notes
        and "re-creat" in notes.replace("creating", "re-creat")
    )


async def test_a_pod_not_ready_by_its_deadline_is_terminated(rp: Proc, pools: list[PodBackend]) -> None:
    configure(rp, provision_polls=10_000)  # its runtime never appears
    p = pool(rp, "deadline", ready_timeout_s=0.5, retry_s=60)
    pools.append(p)
    await p.start()
    r = p.start_one()
    await until("given up", lambda: r not in p.replicas)
    assert r.lifecycle is Lifecycle.FAILED and "ready_timeout_s" in (p.last_error or "")
    assert r.pod_id is not None and mock_pods(rp)[r.pod_id]["desiredStatus"] == "TERMINATED"
    assert not p.demand()  # waits retry_s before trying again: a call is not told capacity is coming
    with pytest.raises(ValueError, match="retry_s"):
        p.start_one()


async def test_provider_errors_are_shown_not_raised(rp: Proc, pools: list[PodBackend]) -> None:
    configure(rp, html_502=1)
    p = pool(rp, "html")
    pools.append(p)
    await p.start()
    await asyncio.sleep(0.3)  # adoption's list retries once through the 502
    configure(rp, html_502=1)
    r = p.start_one()
    await until("failed", lambda: r not in p.replicas)
    assert "HTTP 502 with an HTML page" in (p.last_error or "")
    configure(rp, no_capacity=["all"])
    r = p.start_one()
    await until("failed", lambda: r not in p.replicas)
    assert "no capacity for any GPU type" in (p.last_error or "")
    assert "last error: RunPod has no capacity" in p.state  # what a 503 lists for this backend


async def test_a_new_gateway_adopts_the_pods_of_a_crashed_one(rp: Proc, pools: list[PodBackend]) -> None:
    a = pool(rp, "adopt", stop_on_shutdown=False)
    await a.start()
    r = a.start_one()
    await until("ready", lambda: a.ready)
    await a.close()  # as a crash would, it leaves its pod running
    assert mock_pods(rp)[r.pod_id or ""]["desiredStatus"] == "RUNNING"
    b = pool(rp, "adopt")
    pools.append(b)
    await b.start()
    await until("adopted and ready", lambda: b.ready)
    assert [x.pod_id for x in b.replicas] == [r.pod_id]
    assert "adopted" in b.replicas[0].transitions[0][2]


async def test_an_interrupted_spot_pod_is_replaced_and_spot_pods_are_terminated_when_idle(
    rp: Proc, pools: list[PodBackend]
) -> None:
    p = pool(rp, "spot", spot=True, min_replicas=1, idle_stop_s=600)
    pools.append(p)
    await p.start()  # min_replicas 1: the first decision launches one
    await until("ready", lambda: p.ready, 60)
    first = p.replicas[0].pod_id or ""
    mock = mock_pods(rp)[first]
    assert mock["interruptible"] and 0 < mock["costPerHr"] < 0.43  # billed at the bid, not on-demand
    interrupt(rp, first)  # RunPod takes the GPU back (outbid)
    await until("replaced", lambda: p.ready and first not in {r.pod_id for r in p.replicas}, 60)
    assert mock_pods(rp)[first]["desiredStatus"] == "TERMINATED"
    assert any("interrupted" in e and first in e for _, e in p.events)
    [second] = p.replicas
    assert second.pod_id != first and mock_pods(rp)[second.pod_id or ""]["interruptible"]
    # idle: a spot pod is terminated, not stopped (it could not be resumed)
    p.policy = p.scaler.policy = ScalePolicy(0, 1, idle_stop_s=0.5, down_delay_s=0)
    await until("terminated when idle", lambda: not p.replicas, 60)
    assert mock_pods(rp)[second.pod_id or ""]["desiredStatus"] == "TERMINATED"


async def test_scales_up_under_load_balances_and_back_to_zero(rp: Proc, pools: list[PodBackend]) -> None:
    # Scaling down is held off (down_delay_s, idle_stop_s) until the checks of the scaled-up pool are
    # done, then let go: on a loaded machine the second pod can be ready seconds after the first, and a
    # one-second idle stop used to race the check that both are up.
    p = pool(
        rp,
        "scale",
        max_replicas=2,
        target_in_flight=1,
        replica_concurrency=1,
        idle_stop_s=600,
        down_delay_s=600,
    )
    pools.append(p)
    mgr = BackendManager([p], warming_wait_s=60)
    await mgr.start()
    try:
        # Six calls at once find nothing ready: the first starts a pod, the controller's next decision
        # counts all six and asks for the second (max_replicas), not one per call.
        results = await asyncio.gather(*(mgr.complete(chat()) for _ in range(6)))
        assert all(res.backend == "scale" for res in results)
        await until("both ready", lambda: sum(r.lifecycle is Lifecycle.READY for r in p.replicas) == 2, 60)
        created = [x for x in mock_pods(rp).values() if x["name"].startswith("hg-scale-")]
        assert len(created) == 2, created  # never past max_replicas, no extra pods while the second warmed
        assert {x["id"] for x in created} == {r.pod_id for r in p.replicas}
        # least outstanding: two calls at once land on two different replicas
        before = {r.pod_id: r.busy_s for r in p.replicas}
        await asyncio.gather(mgr.complete(chat()), mgr.complete(chat()))
        assert all(r.busy_s > before[r.pod_id] for r in p.replicas)
        # idle: back to zero (stopped, resumable)
        p.policy = p.scaler.policy = ScalePolicy(0, 2, target_in_flight=1, down_delay_s=600, idle_stop_s=1)
        await until(
            "idle: back to zero", lambda: all(r.lifecycle is Lifecycle.STOPPED for r in p.replicas), 60
        )
        assert all(mock_pods(rp)[r.pod_id or ""]["desiredStatus"] == "EXITED" for r in p.replicas)
    finally:
        await mgr.close()
        pools.remove(p)


async def test_calls_queued_for_a_slot_count_as_load_until_they_get_one() -> None:
    """The controller counts calls waiting inside the pool for a slot as load for as long as they wait.

    They used to count once per retry (each retry a `demand()`, reset at every decision), so a decision
    taken the moment a second replica became ready, before the queued calls moved onto it, saw one call
    in flight, wanted one replica and drained a pod with calls queued for it (down_delay_s 0). Driven
    step by step here: two decisions, no timing."""
    p = PodBackend(
        BackendConfig(
            name="queued",
            kind="pod",
            api_key=KEY,
            models={"m": "m"},
            options={
                "provider_url": "http://127.0.0.1:9",  # never called: nothing is launched or stopped
                "gpu_types": ["NVIDIA L4"],
                "image": "img",
                "max_replicas": 2,
                "target_in_flight": 1,
                "replica_concurrency": 1,
                "down_delay_s": 0,
                "idle_stop_s": 600,
            },
        )
    )
    busy, warming = Replica(p, "pod1", "hg-queued-1"), Replica(p, "pod2", "hg-queued-2")
    busy.set(Lifecycle.READY)
    busy.backend = p  # any backend: only its presence is looked at before a call is placed
    busy.acquire()  # one call in flight: at its replica_concurrency
    warming.set(Lifecycle.WARMING)
    p.replicas = [busy, warming]
    waiters = [asyncio.create_task(p._pick()) for _ in range(3)]
    try:
        await asyncio.sleep(0)  # the three calls are queued for a slot
        assert p._queued == 3 and not any(w.done() for w in waiters)
        await p._tick()  # 1 in flight + 3 queued; 1 ready + 1 warming: steady
        assert [r.lifecycle for r in p.replicas] == [Lifecycle.READY, Lifecycle.WARMING]
        warming.set(Lifecycle.READY)  # ready; the queued calls have not moved onto it yet
        await p._tick()
        assert [r.lifecycle for r in p.replicas] == [Lifecycle.READY, Lifecycle.READY], p.replicas[
            1
        ].transitions
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        busy.release()
    assert p._queued == 0


def test_calls_waiting_for_a_cold_start_count_until_one_is_ready_or_they_gave_up() -> None:
    """Calls that found nothing ready wait in the router (up to about queue_s): each decision during the
    cold start counts them all, not only those that asked since the previous decision, so a burst during
    a five-minute cold start asks at once for what it needs (the pods_sim benchmark measured the old
    count: p99 wait 651 s against 255 s with this one)."""
    now = [100.0]
    p = PodBackend(
        BackendConfig(
            name="cold",
            kind="pod",
            api_key=KEY,
            models={"m": "m"},
            options={"gpu_types": ["NVIDIA L4"], "image": "img", "max_replicas": 4, "queue_s": 30},
        )
    )
    p.clock = lambda: now[0]
    coming = Replica(p, "pod1", "hg-cold-1")
    coming.set(Lifecycle.PROVISIONING)
    p.replicas = [coming]
    for _ in range(9):
        assert p.demand()  # capacity is on its way: nothing more is launched by demand() itself
    assert p._waiting_now(now[0], any_ready=False) == 9
    now[0] += 10
    assert p._waiting_now(now[0], any_ready=False) == 9  # the next decision still sees them waiting
    p.demand()
    now[0] += 25  # the first nine asked 35 s ago: past queue_s, they have given up (503 or a fallback)
    assert p._waiting_now(now[0], any_ready=False) == 1
    p.demand()
    assert p._waiting_now(now[0], any_ready=True) == 1  # one ready: the waiting calls move into the pool
    assert p._waiting_now(now[0], any_ready=True) == 0


class _Probed:
    """A replica's model server as its health probe sees it: answers, or raises what it is told to."""

    def __init__(self) -> None:
        self.error: BackendError | None = None

    async def check_health(self) -> None:
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        pass


async def test_a_pod_is_replaced_after_failures_to_trip_probes_and_a_busy_timeout_is_not_counted() -> None:
    p = PodBackend(
        BackendConfig(
            name="probed",
            kind="pod",
            api_key=KEY,
            models={"m": "m"},
            health={"failures_to_trip": 2, "interval_s": 5},
            options={"gpu_types": ["NVIDIA L4"], "image": "img"},
        )
    )
    r = Replica(p, None, "hg-probed-1")  # no pod id: retiring it calls no provider
    r.set(Lifecycle.READY)
    server = _Probed()
    r.backend = server  # type: ignore[assignment]
    p.replicas = [r]
    # A probe timing out while a call to it is in flight: busy, not dead; not counted.
    server.error = BackendTimeoutError("health check timed out after 2s")
    r.acquire()
    for _ in range(3):
        await p.check_health()
    assert r.lifecycle is Lifecycle.READY and r.health_failures == 0 and "busy" in (r.last_error or "")
    r.release()
    # Refused with nothing in flight: counted; one failure is not enough, a success resets the count.
    server.error = BackendConnectError("connection refused")
    with pytest.raises(BackendError, match="every ready pod failed"):
        await p.check_health()
    assert r.lifecycle is Lifecycle.READY and r.health_failures == 1
    server.error = None
    await p.check_health()
    assert r.health_failures == 0
    server.error = BackendConnectError("connection refused")
    for _ in range(2):
        with pytest.raises(BackendError):
            await p.check_health()
    assert r.lifecycle is Lifecycle.DRAINING and "2 failed health checks in a row" in r.transitions[-1][2]
    assert r.task is not None
    await r.task
    assert r.lifecycle is Lifecycle.STOPPED and r not in p.replicas
