"""Concurrency limits of durable jobs: per key (`jobs.max_per_key`) and per generation backend
(`concurrency.max`), checked inside one conditional UPDATE so they hold across processes.

Concurrent claimers on the real databases (a SQLite file and PostgreSQL; two engines, so two connection pools
as two processes have). Through real gateways and mock-fal: tests/test_jobs.py (`test_a_backends_cap_...`,
`test_two_processes_on_postgres_limits_hold_and_one_killed`). Also the worst case a job reserves, per type."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from _accounts import database, pg_database  # noqa: F401 - fixtures
from hybridgate.backends import build_backend
from hybridgate.backends._generation import GenerationBackend
from hybridgate.config import BackendConfig, JobsConfig
from hybridgate.jobs import JobEngine
from hybridgate.store import Store, jobs


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


def test_the_worst_case_reserved_per_job_type() -> None:
    """Images: per_image x n; a LoRA training: per_step x steps; a GPU priced by the hour: per_gpu_hour x
    jobs.time_bound_s; each plus the request; the dearest candidate backend counts."""
    from hybridgate.config import PriceConfig
    from hybridgate.jobs._engine import _prices_job

    e = JobEngine(None, None, None, None, lambda: None, JobsConfig(time_bound_s=600))  # type: ignore[arg-type]
    fal = BackendConfig(
        name="fal",
        kind="fal",
        models={"trainer": "fal-ai/flux-lora-fast-training", "img": "fal-ai/flux/schnell"},
        price=PriceConfig(per_image=0.003, per_step=0.002, per_request=0.001),
    )
    gpu = BackendConfig(
        name="gpu",
        kind="comfyui",
        base_url="http://gpu:8188",
        models={"img": "sd15"},
        price=PriceConfig(per_gpu_hour=3.6),
    )
    assert e.worst_case([fal], "lora_training", {"steps": 500}, "trainer") == pytest.approx(1.001)
    assert e.worst_case([fal], "image_generation", {"n": 3, "steps": 50}, "img") == pytest.approx(0.01)
    assert e.worst_case([fal, gpu], "image_generation", {"n": 1}, "img") == pytest.approx(0.6)
    # A price that says nothing about a job type is an unknown cost for a budgeted key (403 unknown_cost).
    assert not _prices_job(PriceConfig(per_image=0.01), "lora_training")
    assert not _prices_job(PriceConfig(per_step=0.01), "image_generation")
    assert _prices_job(PriceConfig(per_step=0.01), "lora_training")
    assert _prices_job(PriceConfig(per_gpu_hour=1.0), "video_generation")
