"""End to end with real processes: `hybridgate serve` with a local backend and a `pod` backend on
`hybridgate mock-runpod`, each pod backed by a real mock-server process; the official openai client.

The local backend is killed; the next requests start a pod and are served by it without a failure;
idle, the pod stops; its cost rows in the ledger match the mock's billed time.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

import _pods
from _pods import wait_for
from hybridgate.testing.mocks.runpod import start_mock_runpod
from hybridgate.testing.procs import Proc, start_gateway, start_mock_server

MASTER = "sk-master-pods-0123456789"
RP_KEY = "rp-test-key"

procs = _pods.procs


def test_local_killed_a_pod_starts_serves_stops_when_idle_and_its_cost_is_booked(
    procs: list[Proc], tmp_path: Path
) -> None:
    local = start_mock_server(model=["m"])
    procs.append(local)
    rp = start_mock_runpod(api_key=RP_KEY, provision_polls=2)
    procs.append(rp)
    db = tmp_path / "ledger.db"
    config = {
        "server": {"warming_wait_s": 30},
        "database": f"sqlite:///{db}",
        "backends": [
            {
                "name": "local",
                "kind": "openai",
                "base_url": local.base_url,
                "models": {"chat": "m"},
                "priority": 1,
                "health": {"interval_s": 0.5, "failures_to_trip": 1, "cooldown_s": 60},
            },
            {
                "name": "gpu",
                "kind": "pod",
                "api_key": RP_KEY,
                "models": {"chat": "m"},
                "priority": 5,
                "options": {
                    "provider_url": rp.url,
                    "gpu_types": ["NVIDIA H100 80GB HBM3", "NVIDIA L4"],  # the first is unknown: no capacity
                    "image": "vllm/vllm-openai:latest",
                    "idle_stop_s": 3,
                    "poll_s": 0.2,
                },
            },
        ],
    }
    gw = start_gateway(config, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp_path)
    procs.append(gw)
    client = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)
    admin = {"Authorization": f"Bearer {MASTER}"}

    def ask() -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        return raw.headers["x-hybridgate-backend"], raw.parse().choices[0].message.content or ""

    assert ask()[0] == "local"
    assert httpx.get(gw.url + "/v1/pods", headers=admin).json()["data"] == []  # nothing started yet

    local.kill()
    # Several at once: the first failure starts one pod; the rest wait for it; none fails.
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: ask(), range(4)))
    except Exception:
        print(gw.log()[-5000:])
        raise
    assert [b for b, _ in results] == ["gpu"] * 4
    assert all("Paris" in text for _, text in results)

    pods = httpx.get(gw.url + "/v1/pods", headers=admin).json()
    assert len(pods["data"]) == 1, pods  # one pod for the burst, not one per request
    pod = pods["data"][0]
    states = [t["state"] for t in pod["transitions"]]
    assert states == ["provisioning", "warming", "ready"], states
    times = [t["at"] for t in pod["transitions"]]
    assert times == sorted(times)
    assert pod["gpu"] == "L4" and pod["cost_per_hr"] == 0.43
    events = " ".join(e["event"] for e in pods["pools"][0]["events"])
    assert "no capacity for NVIDIA H100 80GB HBM3" in events
    health = {b["name"]: b for b in httpx.get(gw.url + "/health/backends").json()["backends"]}
    assert health["gpu"]["lifecycle"] == "ready" and health["gpu"]["routable"]
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'hybridgate_backend_lifecycle{backend="gpu",state="ready"} 1.0' in metrics
    assert f'hybridgate_pod_lifecycle{{backend="gpu",pod="{pod["id"]}",state="ready"}} 1.0' in metrics
    assert f'hybridgate_pod_billed_seconds{{backend="gpu",pod="{pod["id"]}"}}' in metrics

    # Idle for idle_stop_s: stopped (resumable), its model server gone, billing over.
    wait_for(
        "the pod stops when idle",
        lambda: httpx.get(gw.url + f"/v1/pods/{pod['id']}", headers=admin).json()["lifecycle"] == "stopped",
    )
    mock_pod = next(p for p in httpx.get(rp.url + "/_mock/pods").json()["pods"] if p["id"] == pod["id"])
    assert mock_pod["desiredStatus"] == "EXITED"

    def booked() -> tuple[float, float, float, int]:
        with sqlite3.connect(db) as c:
            row = c.execute(
                "select sum(duration_s), sum(cost_usd), sum(gpu_seconds), count(*) from ledger "
                "where operation = 'pod_uptime' and backend = 'gpu'"
            ).fetchone()
        return float(row[0] or 0.0), float(row[1] or 0.0), float(row[2] or 0.0), int(row[3])

    seconds, cost, gpu_s, _rows = wait_for(
        "the pod's cost rows are written", lambda: booked()[3] and booked()
    )
    assert abs(seconds - mock_pod["billed_s"]) < 1.0, (seconds, mock_pod["billed_s"])
    assert gpu_s == pytest.approx(seconds)
    assert cost == pytest.approx(seconds * 0.43 / 3600, rel=1e-6)

    usage = httpx.get(gw.url + "/v1/usage", params={"group_by": "operation"}, headers=admin).json()
    groups = {g["group"]: g for g in usage["data"]}
    assert groups["pod_uptime"]["cost_usd"] == pytest.approx(cost, abs=1e-8)  # pod cost beside API cost
    assert "chat" in groups

    # The next request resumes the stopped pod (no new pod) and is served by it.
    assert ask()[0] == "gpu"
    again = httpx.get(gw.url + "/v1/pods", headers=admin).json()["data"]
    assert [p["id"] for p in again] == [pod["id"]]
    assert any("resumed" in t["note"] or t["state"] == "provisioning" for t in again[0]["transitions"][3:])
