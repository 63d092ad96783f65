"""/v1/pods on a real gateway with a pod backend on `hybridgate mock-runpod`: list, start, stop, resume,
terminate, and a clear error for every wrong call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _pods import wait_for
from hybridgate.testing.mocks.runpod import start_mock_runpod
from hybridgate.testing.procs import Proc, start_gateway

MASTER = "sk-master-pods-api-0123456789"
RP_KEY = "rp-test-key"
ADMIN = {"Authorization": f"Bearer {MASTER}"}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[tuple[Proc, Proc]]:
    rp = start_mock_runpod(api_key=RP_KEY, provision_polls=1)
    config = {
        "backends": [
            {
                "name": "gpu",
                "kind": "pod",
                "api_key": RP_KEY,
                "models": {"chat": "m"},
                "options": {
                    "provider_url": rp.url,
                    "gpu_types": ["NVIDIA L4"],
                    "image": "img",
                    "poll_s": 0.2,
                    "idle_stop_s": 600,
                },
            }
        ],
    }
    gateway = start_gateway(config, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp_path)
    yield gateway, rp
    gateway.stop()
    rp.stop()


def test_operator_actions_and_their_errors(gw: tuple[Proc, Proc]) -> None:
    g, rp = gw
    url = g.url + "/v1/pods"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers=ADMIN).json() == {
        "object": "list",
        "data": [],
        "pools": [httpx.get(url, headers=ADMIN).json()["pools"][0]],
    }
    bad = httpx.post(url + "/start", params={"backend": "nope"}, headers=ADMIN)
    assert bad.status_code == 400 and "No pod backend named 'nope'" in bad.json()["error"]["message"]
    started = httpx.post(url + "/start", params={"backend": "gpu"}, headers=ADMIN)
    assert started.status_code == 202 and started.json()["lifecycle"] == "provisioning"
    again = httpx.post(url + "/start", params={"backend": "gpu"}, headers=ADMIN)
    assert again.status_code == 409 and "max_replicas" in again.json()["error"]["message"]

    def ready() -> str | None:
        data = httpx.get(url, params={"status": "ready"}, headers=ADMIN).json()["data"]
        return data[0]["id"] if data else None

    pod_id = wait_for("the pod is ready", ready)
    assert httpx.get(url, params={"status": "sleeping"}, headers=ADMIN).status_code == 400
    one = httpx.get(f"{url}/{pod_id}", headers=ADMIN).json()
    assert [t["state"] for t in one["transitions"]] == ["provisioning", "warming", "ready"]
    assert httpx.get(f"{url}/nope", headers=ADMIN).status_code == 404

    stop = httpx.post(f"{url}/{pod_id}/stop", headers=ADMIN)
    assert stop.status_code == 202 and stop.json()["lifecycle"] == "draining"
    wait_for("stopped", lambda: httpx.get(f"{url}/{pod_id}", headers=ADMIN).json()["lifecycle"] == "stopped")
    assert httpx.post(f"{url}/{pod_id}/stop", headers=ADMIN).status_code == 409
    mock = {p["id"]: p for p in httpx.get(rp.url + "/_mock/pods").json()["pods"]}
    assert mock[pod_id]["desiredStatus"] == "EXITED"

    assert httpx.post(f"{url}/{pod_id}/resume", headers=ADMIN).status_code == 202
    wait_for("ready again", ready)
    assert httpx.post(f"{url}/{pod_id}/resume", headers=ADMIN).status_code == 409

    assert httpx.post(f"{url}/{pod_id}/terminate", headers=ADMIN).status_code == 202
    wait_for("gone", lambda: httpx.get(f"{url}/{pod_id}", headers=ADMIN).status_code == 404)
    mock = {p["id"]: p for p in httpx.get(rp.url + "/_mock/pods").json()["pods"]}
    assert mock[pod_id]["desiredStatus"] == "TERMINATED"

    # the same through `hybridgate pods`, with progress for the slow steps
    env = {**os.environ, "HYBRIDGATE_MASTER_KEY": MASTER, "HYBRIDGATE_URL": g.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "hybridgate", "pods", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    started_cli = cli("start", "--backend", "gpu", "--wait", "30", "-o", "json")
    assert started_cli.returncode == 0, started_cli.stderr
    new = json.loads(started_cli.stdout)[0]
    assert new["lifecycle"] == "ready" and "warming" in started_cli.stderr  # the transitions as they came
    listed = cli("list", "--status", "ready", "-o", "json")
    assert [p["id"] for p in json.loads(listed.stdout)] == [new["id"]]
    stopped = cli("stop", new["id"], "--wait", "30", "-o", "json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout)[0]["lifecycle"] == "stopped"
    assert cli("status", "nope").returncode == 1
    assert cli("list", "--status", "sleeping").returncode == 3

    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    doc = httpx.get(g.url + "/openapi.json").json()
    assert not [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert {p: sorted(ops) for p, ops in doc["paths"].items() if p.startswith("/v1/pods")} == {
        "/v1/pods": ["get"],
        "/v1/pods/{pod_id}": ["get"],
        "/v1/pods/start": ["post"],
        "/v1/pods/{pod_id}/stop": ["post"],
        "/v1/pods/{pod_id}/resume": ["post"],
        "/v1/pods/{pod_id}/terminate": ["post"],
    }
