"""One scaler among two real `hybridgate serve` processes sharing one database (a SQLite file, and
PostgreSQL when HYBRIDGATE_TEST_POSTGRES_URL is set) and one pod backend on one `hybridgate mock-runpod`:
load through both with the official openai client; only the holder of the pool's lease creates pods,
never past max_replicas; kill -9 the holder: the other takes the decisions over within the lease time,
and the pool still stops its pods when idle."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

import _accounts
import _pods
from _pods import wait_for
from hybridgate.testing.mocks.runpod import start_mock_runpod
from hybridgate.testing.procs import Proc, start_gateway

database = _accounts.database  # fixtures: SQLite, and PostgreSQL when configured
pg_database = _accounts.pg_database
MASTER = "sk-master-two-gateways-0123456789"
RP_KEY = "rp-test-key"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
LEASE_TTL_S = 3.0

procs = _pods.procs


def pool(gw: Proc) -> dict[str, Any]:
    out: dict[str, Any] = httpx.get(gw.url + "/v1/pods", headers=ADMIN, timeout=30).json()["pools"][0]
    return out


def mock_pods(rp: Proc) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = httpx.get(rp.url + "/_mock/pods", timeout=30).json()["pods"]
    return pods


def test_two_gateways_one_scaler_and_a_takeover_after_kill_9(
    procs: list[Proc], tmp_path: Path, database: str
) -> None:
    rp = start_mock_runpod(api_key=RP_KEY, provision_polls=1)
    procs.append(rp)
    config = {
        "server": {"warming_wait_s": 60},
        "database": database,
        "backends": [
            {
                "name": "gpu",
                "kind": "pod",
                "api_key": RP_KEY,
                "models": {"chat": "m"},
                "options": {
                    "provider_url": rp.url,
                    "gpu_types": ["NVIDIA L4"],
                    "image": "vllm/vllm-openai:latest",
                    "max_replicas": 2,
                    "target_in_flight": 1,
                    "idle_stop_s": 8,
                    "down_delay_s": 600,
                    "poll_s": 0.2,
                    "lease_ttl_s": LEASE_TTL_S,
                    "stop_on_shutdown": False,  # several processes: one stopping leaves the others' pods
                },
            }
        ],
    }
    gateways = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        gw = start_gateway(config, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=workdir)
        procs.append(gw)
        gateways.append(gw)
    wait_for("one of the two decides", lambda: sum(pool(g)["decides"] for g in gateways) == 1)
    owner, other = sorted(gateways, key=lambda g: not pool(g)["decides"])

    def ask(gw: Proc) -> str:
        client = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        assert "Paris" in (raw.parse().choices[0].message.content or "")
        return raw.headers["x-hybridgate-backend"]

    # Load through both at once: nothing is up, both ask for capacity; only the owner creates pods.
    with ThreadPoolExecutor(12) as ex:
        served = list(ex.map(ask, [owner, other] * 6))
    assert served == ["gpu"] * 12
    # the follower never held the lease (not "decides" now, which a database hiccup can drop for a tick)
    assert not any("now owns" in e["event"] for e in pool(other)["events"])
    created = mock_pods(rp)
    assert 1 <= len(created) <= 2, created  # never past max_replicas
    owner_events = " ".join(e["event"] for e in pool(owner)["events"])
    other_events = " ".join(e["event"] for e in pool(other)["events"])
    assert all(f"created pod {p['id']}" in owner_events for p in created), owner_events
    assert "created pod" not in other_events, other_events
    # The follower routes to the owner's pods (they are its replicas too).
    other_pods = httpx.get(other.url + "/v1/pods", headers=ADMIN, timeout=30).json()["data"]
    assert {p["id"] for p in other_pods} <= {p["id"] for p in created}

    # kill -9 the owner: its lease is not renewed; the other takes the decisions over within the TTL.
    owner.kill()
    killed = time.monotonic()
    wait_for("the other takes over", lambda: pool(other)["decides"], LEASE_TTL_S + 30)
    took = time.monotonic() - killed
    print(f"takeover {took:.1f}s after kill -9 (lease_ttl_s {LEASE_TTL_S:g})")
    assert any("now owns" in e["event"] for e in pool(other)["events"])
    assert any(p["desiredStatus"] == "RUNNING" for p in mock_pods(rp))  # still up: for the new owner to stop
    assert ask(other) == "gpu"  # and it still serves
    # Idle for idle_stop_s: the new owner stops every pod (resumable); nothing creates more.
    wait_for(
        "the new owner stops the pods when idle",
        lambda: all(p["desiredStatus"] == "EXITED" for p in mock_pods(rp)),
        90,
    )
    assert len(mock_pods(rp)) == len(created)
    wait_for(  # its event follows the provider's answer, which the mock shows first
        "the new owner's event",
        lambda: f"stopped pod {created[0]['id']}" in " ".join(e["event"] for e in pool(other)["events"]),
    )
