"""Concurrency limits of durable jobs: per key (`jobs.max_per_key`) and per generation backend
(`concurrency.max`), held across processes.

Concurrent claimers on the real databases (a SQLite file and PostgreSQL; two engines, so two connection pools
as two processes have) pin the atomic claim; then jobs through `hybridgate serve` against `mock-fal`, whose
own record of when each request was submitted and ended says how many ran there at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _accounts import PG_SKIP, PG_URL, database, pg_database, wait_until  # noqa: F401 - fixtures
from hybridgate.backends import build_backend
from hybridgate.backends._generation import GenerationBackend
from hybridgate.config import BackendConfig, JobsConfig
from hybridgate.jobs import JobEngine
from hybridgate.store import Store, jobs
from hybridgate.testing.procs import Proc, free_port, start_gateway, start_mock_fal
from test_jobs import GW, IMAGE, MASTER, auth, fal_backend, gw_config


async def _engines(url: str, n: int, **config: Any) -> list[JobEngine]:
    out = []
    for i in range(n):
        store = Store(url)
        if i == 0:
            await store.open()  # migrations once; the others only connect
        # Only the claiming side is exercised: no router, ledger or storage needed.
        out.append(JobEngine(store, None, None, None, lambda: None, JobsConfig(**config)))  # type: ignore[arg-type]
    return out


async def _insert(engine: JobEngine, ids: list[str], key_id: str | None, **values: Any) -> None:
    now = time.time()
    async with engine.store.engine.begin() as conn:
        for job_id in ids:
            await conn.execute(
                jobs.insert().values(
                    id=job_id,
                    key_id=key_id,
                    key_name="k",
                    type="image_generation",
                    model="flux-schnell",
                    status="queued",
                    step="submit",
                    input="{}",
                    next_run_at=now,
                    created_at=now,
                    updated_at=now,
                    **values,
                )
            )


@pytest.fixture
async def two_engines(database: str) -> AsyncIterator[list[JobEngine]]:  # noqa: F811
    engines = await _engines(database, 2, max_per_key=2)
    yield engines
    for e in engines:
        await e.store.close()


async def test_concurrent_claimers_never_exceed_the_per_key_limit(two_engines: list[JobEngine]) -> None:
    a, b = two_engines
    ids = [f"job_k1_{i:02d}" for i in range(12)]
    await _insert(a, ids, "key-1")
    await _insert(a, ["job_k2_00"], "key-2")
    now = time.time()
    # Every claim at the same instant from two pools: were the count not inside the claim (and, on
    # PostgreSQL, under the key's advisory lock), several would see fewer than 2 held and all win.
    won = await asyncio.gather(
        *(e._try_claim(j, "key-1", now) for j, e in zip(ids, [a, b] * 6, strict=True)),
        b._try_claim("job_k2_00", "key-2", now),
    )
    assert sum(won[:-1]) == 2
    assert won[-1] is True  # another key is not held up by the first one's limit
    async with a.store.engine.connect() as conn:
        leased = (await conn.execute(jobs.select().where(jobs.c.lease_owner.is_not(None)))).all()
    assert sorted(r.key_id for r in leased) == ["key-1", "key-1", "key-2"]
    # A lease that ran out frees its slot: the next claim wins.
    async with a.store.engine.begin() as conn:
        first = next(r.id for r in leased if r.key_id == "key-1")
        await conn.execute(jobs.update().where(jobs.c.id == first).values(lease_expires=now - 1))
    rest = [j for j in ids if j not in {r.id for r in leased}]
    assert await a._try_claim(rest[0], "key-1", time.time()) is True
    assert await b._try_claim(rest[1], "key-1", time.time()) is False


async def test_concurrent_senders_never_exceed_a_backends_cap(two_engines: list[JobEngine]) -> None:
    a, b = two_engines
    capped = build_backend(
        BackendConfig(
            name="capped",
            kind="fal",
            base_url="http://127.0.0.1:9",
            api_key="k",
            models={"flux-schnell": "fal-ai/flux/schnell"},
            concurrency={"max": 3},  # type: ignore[arg-type]
        )
    )
    assert isinstance(capped, GenerationBackend)
    mine = {e.owner: [f"job_{n}_{i}" for i in range(5)] for n, e in (("a", a), ("b", b))}
    for e in (a, b):
        await _insert(e, mine[e.owner], None, lease_owner=e.owner, lease_expires=time.time() + 60)
    won = await asyncio.gather(
        *(e._take_slot(j, capped, "fal-ai/flux/schnell") for e in (a, b) for j in mine[e.owner])
    )
    assert sum(won) == 3
    assert await a._backend_load() == {"capped": 3}
    # A job that leaves the wait step frees its slot for the next sender.
    async with a.store.engine.begin() as conn:
        taken = (await conn.execute(jobs.select().where(jobs.c.backend == "capped"))).all()
        await conn.execute(jobs.update().where(jobs.c.id == taken[0].id).values(step="mirror"))
    waiting = [j for e in (a, b) for j in mine[e.owner] if j not in {t.id for t in taken}]
    owner_of = {j: e for e in (a, b) for j in mine[e.owner]}
    assert await owner_of[waiting[0]]._take_slot(waiting[0], capped, "fal-ai/flux/schnell") is True
    assert await owner_of[waiting[1]]._take_slot(waiting[1], capped, "fal-ai/flux/schnell") is False


# --- through the gateway ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fal() -> Iterator[Proc]:
    p = start_mock_fal(queue_s=0.2, run_s=0.6, key="mock-key", webhooks=False)
    yield p
    p.stop()


def overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant (an end at the same instant as a start does not overlap)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def spans_by_backend(fal: Proc, done: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    backend_of = {j["provider_request_id"]: j["backend"] for j in done}
    out: dict[str, list[tuple[float, float]]] = {}
    for r in httpx.get(fal.url + "/_mock/stats").json()["requests"]:
        if r["request_id"] in backend_of:
            assert r["ended_at"] is not None
            out.setdefault(backend_of[r["request_id"]], []).append((r["submitted_at"], r["ended_at"]))
    return out


def test_a_backends_cap_holds_and_a_full_backend_is_skipped_for_the_next(tmp_path: Path, fal: Proc) -> None:
    """7 jobs at once; `near` (priority 1) takes 2 at a time, `far` (priority 5) 1: jobs beyond 3 wait,
    queued, and the mock never sees more than each cap at once."""
    port = free_port()
    near = fal_backend(fal, name="near", priority=1, concurrency={"max": 2})
    far = fal_backend(fal, name="far", priority=5, concurrency={"max": 1})
    cfg = gw_config(tmp_path, [near, far], port, max_per_key=10, workers=8)
    gw = GW(start_gateway(cfg, port=port, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp_path))
    try:
        with concurrent.futures.ThreadPoolExecutor(7) as pool:
            made = list(
                pool.map(
                    lambda i: gw.job(MASTER, {**IMAGE, "input": {"prompt": f"cap {i}", "n": 1}}), range(7)
                )
            )
        ids = [m.json()["id"] for m in made]
        done = [gw.wait(MASTER, i, timeout=60) for i in ids]
        assert all(d["status"] == "succeeded" for d in done), done
        spans = spans_by_backend(fal, done)
        assert overlap(spans["near"]) == 2  # its cap, reached and never passed
        assert overlap(spans["far"]) == 1
        assert overlap(spans["near"] + spans["far"]) <= 3
        assert len(spans["near"]) + len(spans["far"]) == 7  # each job submitted once
        waited = 0
        for i in ids:
            with gw.http.stream("GET", f"/v1/jobs/{i}/events", headers=auth(MASTER)) as r:
                waited += "event: waiting" in r.read().decode()
        assert waited >= 1  # more jobs than slots: some waited, queued, for one
    finally:
        gw.proc.stop()


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason=PG_SKIP)
def test_caps_hold_across_two_processes_on_postgres(
    tmp_path: Path,
    fal: Proc,
    pg_database: str,  # noqa: F811
) -> None:
    """Two gateways on one PostgreSQL database, each claiming as fast as it can: one key's jobs never run
    two at once (max_per_key 1) and the shared backend never has more than its cap (2) of another key's."""
    backend = fal_backend(fal, name="shared", concurrency={"max": 2})
    gws = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        port = free_port()
        cfg = gw_config(tmp_path / name, [backend], port, database=pg_database, max_per_key=1)
        cfg["jobs"]["claim_interval_s"] = 0.05
        gws.append(
            GW(start_gateway(cfg, port=port, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp_path / name))
        )
    a, b = gws
    try:
        serial = a.key("serial")
        wait_until(
            lambda: b.http.get("/v1/jobs", headers=auth(serial)).status_code == 200, 20, "B to know it"
        )
        ids = [
            (a if i % 2 else b).job(serial, {**IMAGE, "input": {"prompt": f"one {i}", "n": 1}}).json()["id"]
            for i in range(4)
        ]
        ids += [
            (a if i % 2 else b).job(MASTER, {**IMAGE, "input": {"prompt": f"cap {i}", "n": 1}}).json()["id"]
            for i in range(5)
        ]
        done = [a.wait(MASTER, i, timeout=90) for i in ids]
        assert all(d["status"] == "succeeded" for d in done), done
        spans = spans_by_backend(fal, done)["shared"]
        assert overlap(spans) <= 2
        keyed = {j["provider_request_id"] for j in done[:4]}
        by_id = {
            r["request_id"]: (r["submitted_at"], r["ended_at"])
            for r in httpx.get(fal.url + "/_mock/stats").json()["requests"]
        }
        assert overlap([by_id[r] for r in keyed]) == 1
    finally:
        for g in gws:
            g.proc.stop()
