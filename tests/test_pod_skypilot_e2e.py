"""End to end: `hybridgate serve` with a `pod` backend on the skypilot provider, the real SkyPilot SDK (in
.venv-sky) against `hybridgate mock-skypilot`, each UP cluster backed by a real mock-server; the official
openai client. A request starts a cluster (spot first), is served by it; idle, the spot cluster is torn
down (clouds cannot stop spot); its time is in the ledger; the next request launches a new one."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import _pods
from _pods import wait_for
from hybridgate.testing.mocks.skypilot import start_mock_skypilot
from hybridgate.testing.procs import Proc, start_gateway

SKY_PYTHON = Path(__file__).resolve().parents[1] / ".venv-sky" / "bin" / "python"
pytestmark = pytest.mark.skypilot
MASTER = "sk-master-sky-0123456789"

if not SKY_PYTHON.exists():
    if os.environ.get("HYBRIDGATE_REQUIRE_SKYPILOT") == "1":
        raise RuntimeError(f"{SKY_PYTHON} is missing: `make .venv-sky` creates it (make test does)")
    pytest.skip(
        f"{SKY_PYTHON} is missing: `make .venv-sky` creates it (make test does)", allow_module_level=True
    )

procs = _pods.procs


def test_a_skypilot_pod_backend_launches_serves_tears_down_and_books_its_cost(
    procs: list[Proc], tmp_path: Path
) -> None:
    fake = start_mock_skypilot(launch_s=0.5)
    procs.append(fake)
    db = tmp_path / "ledger.db"
    config = {
        "server": {"warming_wait_s": 90},
        "database": f"sqlite:///{db}",
        "backends": [
            {
                "name": "sky",
                "kind": "pod",
                "models": {"chat": "m"},
                "options": {
                    "provider": "skypilot",
                    "gpu_types": ["T4"],
                    "idle_stop_s": 3,
                    "poll_s": 0.3,
                    "price_per_hour": 0.158,
                    "replica_api_key": "replica-secret-1",
                    "skypilot": {
                        "python": str(SKY_PYTHON),
                        "api_server": fake.url,
                        "infra": "aws",
                        "deadman_minutes": 30,
                    },
                },
            }
        ],
    }
    gw = start_gateway(config, env={"HYBRIDGATE_MASTER_KEY": MASTER, "HOME": str(tmp_path)}, workdir=tmp_path)
    procs.append(gw)
    client = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0, timeout=120)
    admin = {"Authorization": f"Bearer {MASTER}"}

    def ask() -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        return raw.headers["x-hybridgate-backend"], raw.parse().choices[0].message.content or ""

    try:
        backend, text = ask()  # no cluster yet: this request launches one and waits for it
    except Exception:
        print(gw.log()[-5000:])
        raise
    assert backend == "sky" and "Paris" in text
    pods = httpx.get(gw.url + "/v1/pods", headers=admin).json()
    (pod,) = pods["data"]
    assert pod["id"].startswith("hg-sky-") and pod["gpu"] == "T4:1 spot"
    assert [t["state"] for t in pod["transitions"]] == ["provisioning", "warming", "ready"]
    assert pods["pools"][0]["provider"] == "skypilot"
    cluster = next(c for c in clusters(fake) if c["name"] == pod["id"])
    assert cluster["task"]["secrets"] == {"HYBRIDGATE_REPLICA_API_KEY": "replica-secret-1"}
    assert cluster["task"]["envs"]["MODEL"] == "m"
    assert [r["use_spot"] for r in cluster["task"]["resources"]["ordered"]] == [True, False]
    assert (cluster["autostop"], cluster["wait_for"], cluster["to_down"]) == (30, "none", True)

    # Idle for idle_stop_s: a spot cluster cannot be stopped, so it is torn down; billing over.
    wait_for(
        "the idle cluster goes",
        lambda: pod["id"] in httpx.get(fake.url + "/_mock/clusters").json()["gone"],
    )
    billed = httpx.get(fake.url + "/_mock/clusters").json()["gone"][pod["id"]]

    def booked() -> tuple[float, float, int]:
        with sqlite3.connect(db) as c:
            row = c.execute(
                "select sum(duration_s), sum(cost_usd), count(*) from ledger "
                "where operation = 'pod_uptime' and backend = 'sky'"
            ).fetchone()
        return float(row[0] or 0.0), float(row[1] or 0.0), int(row[2])

    seconds, cost, _ = wait_for("the cluster's cost rows", lambda: booked()[2] and booked())
    assert billed <= seconds + 0.5  # the gateway bills from its launch request, the mock from UP
    assert cost == pytest.approx(seconds * 0.158 / 3600, rel=1e-6)

    # The next request: the torn-down cluster cannot be resumed, so it is launched again (same name)
    # and serves.
    assert ask()[0] == "sky"
    pods = httpx.get(gw.url + "/v1/pods", headers=admin).json()
    assert [(p["id"], p["lifecycle"]) for p in pods["data"]] == [(pod["id"], "ready")]
    events = " ".join(e["event"] for e in pods["pools"][0]["events"])
    assert "no longer exists" in events and events.count("SkyPilot launch request") == 2, events
    assert [c["status"] for c in clusters(fake) if c["name"] == pod["id"]] == ["UP"]


def clusters(fake: Proc) -> list[dict[str, Any]]:
    return list(httpx.get(fake.url + "/_mock/clusters").json()["clusters"])
