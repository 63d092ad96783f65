"""One owner of a pod pool's decisions across gateway processes: the lease row (SQLite and PostgreSQL),
and two pools sharing one database and one mock-runpod: one pod for both, followed by the other, and a
takeover when the owner stops renewing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import _accounts
from hybridgate.backends import Lifecycle
from hybridgate.backends.pod import PodBackend
from hybridgate.cloud._lease import Lease
from hybridgate.config import BackendConfig
from hybridgate.store import Store
from hybridgate.testing.mocks.runpod import start_mock_runpod
from hybridgate.testing.procs import Proc

database = _accounts.database  # fixtures: SQLite, and PostgreSQL when configured
pg_database = _accounts.pg_database
KEY = "rp-test-key"


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    s = Store(database)
    await s.open()
    yield s
    await s.close()


async def test_one_holder_renewals_and_takeover_after_the_ttl(store: Store) -> None:
    now = [1000.0]
    a = Lease(lambda: store.engine, "gpu", "a", ttl_s=10, clock=lambda: now[0])
    b = Lease(lambda: store.engine, "gpu", "b", ttl_s=10, clock=lambda: now[0])
    other = Lease(lambda: store.engine, "other-pool", "b", ttl_s=10, clock=lambda: now[0])
    assert await a.acquire() and not await b.acquire()
    assert await other.acquire()  # one lease per pool
    now[0] += 9
    assert await a.acquire() and not await b.acquire()  # renewed
    await b.signal(wanted=True, active=False)
    assert await a.acquire() and a.wanted_at == now[0]  # the holder reads the follower's demand
    now[0] += 11  # a stopped renewing: its lease expired
    assert await b.acquire() and not await a.acquire()
    await b.release()
    assert await a.acquire()


@pytest.fixture
def rp() -> Iterator[Proc]:
    proc = start_mock_runpod(api_key=KEY, provision_polls=1)
    yield proc
    proc.stop()


def mock_pods(rp: Proc) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = httpx.get(rp.url + "/_mock/pods").json()["pods"]
    return pods


def pool(rp: Proc, store: Store, **options: Any) -> PodBackend:
    opts = {
        "provider_url": rp.url,
        "gpu_types": ["NVIDIA L4"],
        "image": "img",
        "poll_s": 0.1,
        # Long enough that a live owner's renewal is never late on a loaded machine (a tick every 0.1 s).
        "lease_ttl_s": 3.0,
        "stop_on_shutdown": False,
        **options,
    }
    p = PodBackend(BackendConfig(name="shared", kind="pod", api_key=KEY, models={"m": "m"}, options=opts))
    p.attach_store(lambda: store.engine)
    return p


async def until(what: str, check: Any, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s}s")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_two_processes_one_decision_one_pod_and_a_takeover(rp: Proc, store: Store) -> None:
    a, b = pool(rp, store), pool(rp, store)
    await a.start()
    await until("a owns the pool", lambda: a.owner)
    await b.start()
    try:
        await asyncio.sleep(0.3)
        assert a.owner and not b.owner
        # Both see demand at once; only the owner launches, the follower waits for the owner's pod.
        assert a.demand() and b.demand()
        assert b.lifecycle.coming  # told capacity is on its way, though it launches nothing itself
        await until("both ready", lambda: a.ready and b.ready, 60)
        pods = mock_pods(rp)
        assert len(pods) == 1
        assert [r.pod_id for r in a.replicas] == [r.pod_id for r in b.replicas] == [pods[0]["id"]]
        # The owner crashes (its loop stops, the lease is not renewed): b takes over within the TTL.
        assert a._loop_task is not None
        a._loop_task.cancel()
        await until("b owns the pool", lambda: b.owner, 30)
        assert any("now owns" in e for _, e in b.events)
        assert b.replicas[0].segment_start is not None  # the new owner bills the pod from now
        # and decides: idle -> stopped
        b.policy = b.scaler.policy = type(b.policy)(0, 1, idle_stop_s=0.2, down_delay_s=0)
        await until("stopped by the new owner", lambda: b.replicas[0].lifecycle is Lifecycle.STOPPED, 10)
        assert mock_pods(rp)[0]["desiredStatus"] == "EXITED"
    finally:
        await b.close()
        a._owner = False
        await a.close()
