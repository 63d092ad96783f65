"""Durable jobs through real processes: `hybridgate serve` routed to `hybridgate mock-fal`, on SQLite files and
PostgreSQL; kill -9 mid-job, budgets under concurrency, cancel, fallback, provider webhooks, SSE events."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _accounts import PG_SKIP, PG_URL, wait_until
from conftest import fal_with
from hybridgate.testing.mocks import media
from hybridgate.testing.procs import Proc, free_port, start_gateway

MASTER = "master-key-for-jobs-tests"
PRICE = {"per_image": 0.01, "per_request": 0.001}


@pytest.fixture(scope="module")
def fal(fal_process: Proc) -> Proc:
    return fal_with(fal_process, queue_s=0.2, run_s=0.3)


def set_fal(fal: Proc, **changes: Any) -> None:
    assert httpx.post(fal.url + "/_mock/config", json=changes).status_code == 200


def fal_stats(fal: Proc) -> dict[str, Any]:
    return dict(httpx.get(fal.url + "/_mock/stats").json())


@pytest.fixture(autouse=True)
def _reset(fal: Proc) -> Iterator[None]:
    yield
    set_fal(
        fal,
        queue_s=0.2,
        run_s=0.3,
        fail_rate=0,
        submit_fail_rate=0,
        result_ttl_s=3600,
        webhooks=True,
        bad_webhook_signature=False,
        duplicate_webhooks=False,
    )


def fal_backend(fal: Proc, name: str = "fal", **over: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "fal",
        "base_url": fal.url,
        "api_key": "mock-key",
        "models": {
            "flux-schnell": "fal-ai/flux/schnell",
            "trainer": "fal-ai/flux-lora-fast-training",
            "video": "fal-ai/ltx-video",
        },
        "price": PRICE,
        "options": {"rest_url": fal.url, "cdn_url": fal.url, "jwks_url": fal.url + "/.well-known/jwks.json"},
        **over,
    }


def gw_config(
    tmp: Path, backends: list[dict[str, Any]], port: int, database: str | None = None, **jobs: Any
) -> dict[str, Any]:
    return {
        "database": database or f"sqlite:///{tmp}/hg.db",
        "backends": [
            {"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}},
            *backends,
        ],
        "storage": {"url": str(tmp / "files"), "signing_secret": "x" * 32},
        "jobs": {
            "lease_s": 2,
            "provider_poll_s": 0.5,
            "claim_interval_s": 0.1,
            "public_url": f"http://127.0.0.1:{port}",
            **jobs,
        },
    }


class GW:
    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.http = httpx.Client(base_url=proc.url, timeout=30)

    def key(self, name: str, **spec: Any) -> str:
        r = self.http.post("/admin/keys", json={"name": name, **spec}, headers=auth(MASTER))
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    def job(self, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return self.http.post("/v1/jobs", json=body, headers={**auth(key), **headers})

    def get(self, key: str, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}", headers=auth(key))
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(
        self,
        key: str,
        job_id: str,
        timeout: float = 20,
        status: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
    ) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (j := self.get(key, job_id))["status"] in status and j,
                timeout,
                f"job {job_id} to reach {status}",
            )
        )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    procs: list[Proc] = []

    def go(
        backends: list[dict[str, Any]],
        *,
        port: int | None = None,
        workdir: Path | None = None,
        database: str | None = None,
        **jobs: Any,
    ) -> GW:
        port = port or free_port()
        cfg = gw_config(tmp_path, backends, port, database, **jobs)
        p = start_gateway(cfg, port=port, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=workdir or tmp_path)
        procs.append(p)
        return GW(p)

    yield go
    for p in procs:
        p.stop()


IMAGE = {
    "type": "image_generation",
    "model": "flux-schnell",
    "input": {"prompt": "a lighthouse at dawn", "n": 2, "size": "256x128", "seed": 11},
}


@pytest.fixture(scope="module")
def shared(fal: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GW]:
    """One gateway for every test that needs no restart or special process: starting one costs seconds.

    Its backends: `fal` (flux-schnell, trainer, video, flux-fallback); `dead` (nothing listens) ranked first
    for flux-fallback; `near` (cap 2) and `far` (cap 1) for flux-capped. One job per key at a time, and a
    provider poll of 30 s, so a job ends quickly only through fal's webhook (mock-fal sends them)."""
    tmp = tmp_path_factory.mktemp("shared")
    port = free_port()
    main = fal_backend(fal)
    main["models"] = {**main["models"], "flux-fallback": "fal-ai/flux/schnell"}
    dead = fal_backend(fal, name="dead", base_url=f"http://127.0.0.1:{free_port()}", priority=1)
    dead["models"] = {"flux-fallback": "fal-ai/flux/schnell"}
    capped = [
        {
            **fal_backend(fal, name=name, priority=prio, concurrency={"max": cap}),
            "models": {"flux-capped": "fal-ai/flux/schnell"},
        }
        for name, prio, cap in (("near", 1, 2), ("far", 5, 1))
    ]
    p = start_gateway(
        gw_config(tmp, [main, dead, *capped], port, max_per_key=1, provider_poll_s=30, workers=8),
        port=port,
        env={"HYBRIDGATE_MASTER_KEY": MASTER},
        workdir=tmp,
    )
    g = GW(p)
    g.db = tmp / "hg.db"  # type: ignore[attr-defined]
    yield g
    p.stop()


def test_image_job_end_to_end(shared: GW, fal: Proc) -> None:
    gw = shared
    alice, bob = gw.key("alice", budget_usd=1.0), gw.key("bob")
    first = gw.job(alice, IMAGE, **{"Idempotency-Key": "abc"})
    assert first.status_code == 200, first.text
    job = first.json()
    assert job["status"] in ("queued", "running") and job["cost_reserved_usd"] == pytest.approx(0.021)
    again = gw.job(alice, IMAGE, **{"Idempotency-Key": "abc"})
    assert again.json()["id"] == job["id"]  # a retried submit returns the same job
    clash = gw.job(alice, {**IMAGE, "input": {**IMAGE["input"], "n": 1}}, **{"Idempotency-Key": "abc"})
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "idempotency_key_reused"
    done = gw.wait(alice, job["id"])
    assert done["status"] == "succeeded", done
    assert done["backend"] == "fal" and done["provider_request_id"]
    assert done["cost_usd"] == pytest.approx(0.021) and done["progress"] == 1.0
    assert [entry["message"] for entry in done["logs"]][-1] == "step 4/4"
    assert len(done["artifacts"]) == 2
    for i, a in enumerate(done["artifacts"]):
        assert a["url"].startswith(gw.proc.url + "/v1/files/jobs/" + job["id"] + "/") and "sig=" in a["url"]
        data = httpx.get(a["url"]).content  # no API key: the signature is the permission
        assert data == media.png("a lighthouse at dawn", 11 + i, 256, 128)
        assert hashlib.sha256(data).hexdigest() == a["sha256"] and a["size"] == len(data)
    # A key sees only its own jobs; the master key sees every job.
    assert gw.http.get(f"/v1/jobs/{job['id']}", headers=auth(bob)).status_code == 404
    assert gw.http.get(f"/v1/jobs/{job['id']}", headers=auth(MASTER)).status_code == 200
    assert gw.http.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(bob)).status_code == 404
    assert gw.http.get("/v1/jobs", headers=auth(bob)).json()["data"] == []
    listed = gw.http.get("/v1/jobs?status=succeeded&type=image_generation", headers=auth(alice)).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    assert gw.http.get("/v1/jobs?status=failed", headers=auth(alice)).json()["data"] == []
    # The ledger and /v1/usage show the job with its units and cost.
    usage = gw.http.get("/v1/usage?group_by=operation", headers=auth(alice)).json()
    row = next(r for r in usage["data"] if r["group"] == "image_generation")
    assert row["images"] == 2 and row["cost_usd"] == pytest.approx(0.021)
    # Events, as server-sent events, from the start, ending with the job's end.
    with gw.http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=auth(alice)) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    kinds = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "queued" and "running" in kinds and "artifact" in kinds and kinds[-1] == "succeeded"
    ids = [int(line.split(": ")[1]) for line in text.splitlines() if line.startswith("id: ")]
    with gw.http.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={**auth(alice), "Last-Event-ID": str(ids[-2])}
    ) as r:
        tail = r.read().decode()
    assert [line for line in tail.splitlines() if line.startswith("event: ")] == ["event: succeeded"]


def test_pagination(shared: GW) -> None:
    gw = shared
    k = gw.key("pager")
    ids = [gw.job(k, {**IMAGE, "input": {"prompt": f"p{i}"}}).json()["id"] for i in range(5)]
    page1 = gw.http.get("/v1/jobs?limit=2", headers=auth(k)).json()
    assert page1["has_more"] and len(page1["data"]) == 2
    page2 = gw.http.get(f"/v1/jobs?limit=2&after={page1['next_after']}", headers=auth(k)).json()
    page3 = gw.http.get(f"/v1/jobs?limit=2&after={page2['next_after']}", headers=auth(k)).json()
    assert not page3["has_more"]
    seen = [j["id"] for p in (page1, page2, page3) for j in p["data"]]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == 5


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"type": "painting", "model": "flux-schnell", "input": {}}, 400, "type"),
        ({"type": "image_generation", "model": "flux-schnell", "input": {}}, 400, "input.prompt"),
        (
            {"type": "image_generation", "model": "flux-schnell", "input": {"prompt": "x", "n": 9}},
            400,
            "input.n",
        ),
        (
            {"type": "image_generation", "model": "flux-schnell", "input": {"prompt": "x", "size": "9x9"}},
            400,
            "input.size",
        ),
        (
            {"type": "image_generation", "model": "flux-schnell", "input": {"prompt": "x", "colour": 1}},
            400,
            "input.colour",
        ),
        ({"type": "image_generation", "model": "nope", "input": {"prompt": "x"}}, 404, "model"),
        ({"type": "image_generation", "model": "mock", "input": {"prompt": "x"}}, 400, "model"),
        (
            {
                "type": "image_generation",
                "model": "flux-schnell",
                "input": {"prompt": "x"},
                "webhook_url": "ftp://x",
            },
            400,
            "webhook_url",
        ),
        ({"type": "lora_training", "model": "trainer", "input": {"name": "a"}}, 400, "input"),
        (
            {
                "type": "lora_training",
                "model": "trainer",
                "input": {"name": "Bad Name", "video_url": "http://x/v"},
            },
            400,
            "input.name",
        ),
        ({"model": "flux-schnell", "input": {"prompt": "x"}}, 400, "type"),
    ],
)
def test_bad_job_requests_are_clear(shared: GW, body: dict[str, Any], status: int, param: str) -> None:
    r = shared.job(MASTER, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_bad_queries_and_ids(shared: GW) -> None:
    gw = shared
    h = auth(MASTER)
    for q, param in (
        ("status=weird", "status"),
        ("type=x", "type"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=101", "limit"),
        ("colour=red", "colour"),
        ("after=job_nope", "after"),
    ):
        r = gw.http.get("/v1/jobs?" + q, headers=h)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (q, r.text)
    assert gw.http.get("/v1/jobs/job_nope", headers=h).status_code == 404
    assert gw.http.get("/v1/jobs/" + "x" * 300, headers=h).status_code in (400, 404)
    assert gw.http.post("/v1/jobs/job_nope/cancel", headers=h).status_code == 404
    assert gw.http.get("/v1/jobs/job_nope/events", headers=h).status_code == 404
    assert gw.http.post("/v1/jobs", content=b"{not json", headers=h).status_code == 400
    assert gw.http.get("/v1/jobs").status_code == 401
    long_key = gw.job(MASTER, IMAGE, **{"Idempotency-Key": "k" * 300})
    assert long_key.status_code == 400 and long_key.json()["error"]["param"] == "Idempotency-Key"
    # Every job route is in the OpenAPI document.
    paths = gw.http.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/files/{key}",
    ):
        assert p in paths, p


def test_cancel_at_the_provider(shared: GW, fal: Proc) -> None:
    set_fal(fal, queue_s=30)
    gw = shared
    k = gw.key("canceller")
    job = gw.job(k, {**IMAGE, "input": {"prompt": "cancel me"}}).json()
    running = gw.wait(k, job["id"], status=("running",))
    assert running["provider_request_id"]
    r = gw.http.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(k))
    assert r.status_code == 200
    done = gw.wait(k, job["id"])
    assert done["status"] == "cancelled" and done["cost_usd"] == 0
    mine = [x for x in fal_stats(fal)["requests"] if x["request_id"] == running["provider_request_id"]]
    assert mine[0]["cancelled"] is True
    # Cancelling an ended job changes nothing.
    assert gw.http.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(k)).json()["status"] == "cancelled"


def test_provider_failure_and_fallback(shared: GW, fal: Proc) -> None:
    gw = shared  # flux-fallback: `dead` (nothing listens there) first, then `fal`
    k = gw.key("fallback")
    done = gw.wait(
        k, gw.job(k, {**IMAGE, "model": "flux-fallback", "input": {"prompt": "fall back"}}).json()["id"]
    )
    assert done["status"] == "succeeded" and done["backend"] == "fal"
    with gw.http.stream("GET", f"/v1/jobs/{done['id']}/events", headers=auth(k)) as r:
        assert "event: fallback" in r.read().decode()
    set_fal(fal, fail_rate=1)
    failed = gw.wait(k, gw.job(k, {**IMAGE, "input": {"prompt": "fail"}}).json()["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "provider_failed"
    assert "runner_disconnected" in failed["error"]["message"]


def test_provider_webhooks_wake_the_job_and_forged_ones_change_nothing(shared: GW, fal: Proc) -> None:
    set_fal(fal, duplicate_webhooks=True)
    gw = shared  # provider_poll_s=30: only the webhook can make it quick
    k = gw.key("hooks")
    t0 = time.monotonic()
    done = gw.wait(k, gw.job(k, {**IMAGE, "input": {"prompt": "hooked"}}).json()["id"], timeout=15)
    assert done["status"] == "succeeded" and time.monotonic() - t0 < 10
    forged = gw.http.post(
        "/v1/jobs/webhooks/fal",
        content=b'{"request_id":"x"}',
        headers={
            "x-fal-webhook-request-id": done["provider_request_id"],
            "x-fal-webhook-user-id": "u",
            "x-fal-webhook-timestamp": str(int(time.time())),
            "x-fal-webhook-signature": "00" * 64,
        },
    )
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "invalid_signature"
    assert gw.get(k, done["id"]) == {**done, "artifacts": gw.get(k, done["id"])["artifacts"]}
    unknown = gw.http.post("/v1/jobs/webhooks/nobody", content=b"{}")
    assert unknown.status_code == 404


def test_concurrent_jobs_never_overspend_a_small_budget(shared: GW) -> None:
    gw = shared
    k = gw.key("small", budget_usd=0.05)  # worst case per job: 2 images + 1 request = $0.021
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(
                lambda i: gw.job(k, {**IMAGE, "input": {**IMAGE["input"], "prompt": f"b{i}"}}), range(10)
            )
        )
    ok = [a.json() for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(ok) == 2 and len(refused) == 8
    assert all(a.json()["error"]["code"] == "budget_exceeded" for a in refused)
    for j in ok:
        assert gw.wait(k, j["id"])["status"] == "succeeded"
    spent = gw.http.get("/admin/keys", headers=auth(MASTER)).json()
    row = next(x for x in spent["data"] if x["name"] == "small")
    assert row["spent"] == pytest.approx(0.042) and row["spent"] <= 0.05
    again = gw.job(k, IMAGE)
    assert again.status_code == 429  # $0.008 left cannot cover $0.021


def test_kill9_mid_wait_resumes_without_a_second_submission_and_an_expired_result_fails_honestly(
    start: Any, fal: Proc
) -> None:
    """kill -9 with two jobs waiting at the provider, then a restart. One finishes with the same provider
    request id, submitted once. The other's result expired while the gateway was down (the provider kept it
    0.5 s): it fails as result_expired, charged its reserved bound (the provider billed it), not re-sent."""
    port = free_port()
    gw = start([fal_backend(fal)], port=port)
    k = gw.key("survivor")
    set_fal(fal, queue_s=4, run_s=0.1, result_ttl_s=0.5)  # each request keeps the TTL set at its submit
    late = gw.job(k, {**IMAGE, "input": {**IMAGE["input"], "prompt": "expire while down"}}).json()
    late_running = gw.wait(k, late["id"], status=("running",))  # submitted: its settings are taken
    set_fal(fal, queue_s=2, run_s=0.3, result_ttl_s=3600)
    job = gw.job(k, {**IMAGE, "input": {**IMAGE["input"], "prompt": "survive kill -9"}}).json()
    running = gw.wait(k, job["id"], status=("running",))
    gw.proc.kill()  # SIGKILL, mid-wait
    status_url = f"{fal.url}/fal-ai/flux/requests/{late_running['provider_request_id']}/status"
    wait_until(
        lambda: httpx.get(status_url, headers={"Authorization": "Key mock-key"}).status_code == 404,
        20,
        "the provider to forget the late job's result",
    )
    gw2 = start([fal_backend(fal)], port=port)
    done = gw2.wait(k, job["id"], timeout=30)
    assert done["status"] == "succeeded", done
    assert done["provider_request_id"] == running["provider_request_id"]
    assert len(done["artifacts"]) == 2 and all(
        httpx.get(a["url"]).status_code == 200 for a in done["artifacts"]
    )
    expired = gw2.wait(k, late["id"], timeout=30)
    assert expired["status"] == "failed" and expired["error"]["code"] == "result_expired", expired
    assert expired["cost_usd"] == pytest.approx(expired["cost_reserved_usd"])
    for prompt in ("survive kill -9", "expire while down"):
        mine = [r for r in fal_stats(fal)["requests"] if r["input"].get("prompt") == prompt]
        assert len(mine) == 1  # the provider saw exactly one submission of each


def overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant (one ending when another starts does not overlap it)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def provider_spans(fal: Proc, done: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per backend, when mock-fal had each of these jobs' requests (submitted to ended), by its own clock."""
    backend_of = {j["provider_request_id"]: j["backend"] for j in done}
    out: dict[str, list[tuple[float, float]]] = {}
    for r in fal_stats(fal)["requests"]:
        if r["request_id"] in backend_of:
            assert r["ended_at"] is not None
            out.setdefault(backend_of[r["request_id"]], []).append((r["submitted_at"], r["ended_at"]))
    return out


def test_a_backends_cap_holds_and_a_full_backend_is_skipped_for_the_next(shared: GW, fal: Proc) -> None:
    """7 jobs at once for flux-capped: `near` (priority 1) takes 2 at a time, `far` (priority 5) 1, the rest
    wait, queued; mock-fal never has more than each cap at once, and each job is submitted once."""
    set_fal(fal, queue_s=0.2, run_s=0.6)
    gw = shared
    body = {**IMAGE, "model": "flux-capped"}
    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        made = list(pool.map(lambda i: gw.job(MASTER, {**body, "input": {"prompt": f"cap {i}"}}), range(7)))
    ids = [m.json()["id"] for m in made]
    done = [gw.wait(MASTER, i, timeout=60) for i in ids]
    assert all(d["status"] == "succeeded" for d in done), done
    spans = provider_spans(fal, done)
    assert overlap(spans["near"]) == 2  # its cap: reached, never passed
    assert overlap(spans["far"]) == 1
    assert len(spans["near"]) + len(spans["far"]) == 7
    waited = 0
    for i in ids:
        with gw.http.stream("GET", f"/v1/jobs/{i}/events", headers=auth(MASTER)) as r:
            waited += "event: waiting" in r.read().decode()
    assert waited >= 1  # more jobs than slots: some waited, queued, for one


def test_submits_cut_off_by_a_crash_give_their_slots_back(shared: GW) -> None:
    """Three jobs whose submit to `near` and `far` was cut off by a crash (sent, no answer recorded) hold
    every slot of flux-capped: they are still claimed, failed as submit_outcome_unknown, and free the slots
    for a new job."""
    import sqlite3

    now = time.time()
    with sqlite3.connect(shared.db) as db:  # type: ignore[attr-defined]
        for i, backend in enumerate(("near", "near", "far")):
            db.execute(
                "INSERT INTO jobs (id, key_id, key_name, type, model, status, step, input, backend, "
                "backend_model, submit_sent_at, cost_reserved, next_run_at, created_at, updated_at) "
                "VALUES (?, NULL, 'master', 'image_generation', 'flux-capped', 'queued', 'submit', ?, ?, "
                "'fal-ai/flux/schnell', ?, 0.011, ?, ?, ?)",
                (f"job_crashed_{i}", '{"prompt": "cut off", "n": 1}', backend, now, now, now, now),
            )
    for i in range(3):
        cut = shared.wait(MASTER, f"job_crashed_{i}", timeout=30)
        assert cut["status"] == "failed" and cut["error"]["code"] == "submit_outcome_unknown", cut
    job = shared.job(MASTER, {**IMAGE, "model": "flux-capped", "input": {"prompt": "after the crash"}})
    assert shared.wait(MASTER, job.json()["id"], timeout=30)["status"] == "succeeded"


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason=PG_SKIP)
def test_two_processes_on_postgres_limits_hold_and_one_killed(start: Any, fal: Proc, tmp_path: Path) -> None:
    """Two gateways on one PostgreSQL database. Both claiming as fast as they can: one key's jobs never run
    two at once (max_per_key 1) and the `capped` backend never has more than 2 of them at mock-fal. Then A
    is killed with jobs running: B takes them over when their leases expire, none submitted twice."""
    import asyncio

    import asyncpg

    db = f"hg_jobs_{os.getpid()}_{int(time.time())}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'CREATE DATABASE "{db}"')
        await conn.close()

    asyncio.run(create())
    url = PG_URL.rsplit("/", 1)[0] + "/" + db
    capped = {
        **fal_backend(fal, name="capped", concurrency={"max": 2}),
        "models": {"flux-capped": "fal-ai/flux/schnell"},
    }
    gws = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        gws.append(
            start(
                [fal_backend(fal), capped],
                database=url,
                workdir=tmp_path / name,
                max_per_key=1,
                claim_interval_s=0.05,
            )
        )
    a, b = gws
    k = a.key("serial")
    # B learns of the key A made from the shared database within its key reload (about 2 s).
    wait_until(lambda: b.http.get("/v1/jobs", headers=auth(k)).status_code == 200, 20, "B to know the key")
    set_fal(fal, queue_s=0.1, run_s=0.3)
    keyed = [
        (a, b)[i % 2].job(k, {**IMAGE, "input": {"prompt": f"serial {i}"}}).json()["id"] for i in range(4)
    ]
    cap = [
        (a, b)[i % 2]
        .job(MASTER, {**IMAGE, "model": "flux-capped", "input": {"prompt": f"cap {i}"}})
        .json()["id"]
        for i in range(5)
    ]
    done = [a.wait(MASTER, i, timeout=60) for i in keyed + cap]
    assert all(d["status"] == "succeeded" for d in done), done
    spans = provider_spans(fal, done)
    assert overlap(spans["fal"]) == 1  # the key's 4 jobs, one at a time across both processes
    assert overlap(spans["capped"]) <= 2 and len(spans["capped"]) == 5

    set_fal(fal, queue_s=2.5, run_s=0.2)
    ids = [a.job(MASTER, {**IMAGE, "input": {"prompt": f"pg {i}", "n": 1}}).json()["id"] for i in range(4)]
    wait_until(lambda: all(a.get(MASTER, i)["status"] == "running" for i in ids), 20, "all jobs running")
    a.proc.kill()
    for i in ids:
        done1 = b.wait(MASTER, i, timeout=40)
        assert done1["status"] == "succeeded", done1
    prompts = [
        r["input"]["prompt"]
        for r in fal_stats(fal)["requests"]
        if r["input"].get("prompt", "").startswith("pg ")
    ]
    assert sorted(prompts) == [f"pg {i}" for i in range(4)]  # each submitted exactly once


def test_a_video_job_through_fal(shared: GW) -> None:
    import io

    import av

    gw = shared
    done = gw.wait(
        MASTER,
        gw.job(
            MASTER,
            {
                "type": "video_generation",
                "model": "video",
                "input": {"prompt": "waves", "duration_s": 1, "seed": 3},
            },
        ).json()["id"],
    )
    assert done["status"] == "succeeded", done
    art = done["artifacts"][0]
    assert art["role"] == "video" and art["content_type"] == "video/mp4"
    with av.open(io.BytesIO(httpx.get(art["url"]).content)) as c:
        assert sum(1 for _ in c.decode(video=0)) >= 4


def test_per_key_concurrency_limit_holds(shared: GW, fal: Proc) -> None:
    set_fal(fal, queue_s=0.6, run_s=0.1)
    gw = shared  # max_per_key=1
    k, other = gw.key("one-at-a-time"), gw.key("someone-else")
    ids = [gw.job(k, {**IMAGE, "input": {"prompt": f"serial {i}"}}).json()["id"] for i in range(3)]
    theirs = gw.job(other, {**IMAGE, "input": {"prompt": "not held up"}}).json()["id"]
    most = 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        jobs = gw.http.get("/v1/jobs?limit=100", headers=auth(k)).json()["data"]
        most = max(most, sum(1 for j in jobs if j["status"] == "running"))
        if all(j["status"] == "succeeded" for j in jobs) and len(jobs) == 3:
            break
        time.sleep(0.05)
    assert most == 1  # never two of this key's jobs at once
    assert all(gw.get(k, i)["status"] == "succeeded" for i in ids)
    assert gw.get(other, theirs)["status"] == "succeeded"
    started = sorted(gw.get(k, i)["started_at"] for i in ids)
    finished = sorted(gw.get(k, i)["finished_at"] for i in ids)
    assert started[1] >= finished[0] and started[2] >= finished[1]  # one after the other
