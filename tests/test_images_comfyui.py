"""The `comfyui` kind against `hybridgate mock-comfyui`, with fal as the fallback: the official `openai` client's
images.generate is served by ComfyUI (our GPU) first, and by fal when ComfyUI is down; failures, cancel, and the
GPU-seconds cost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import fal_with
from hybridgate.backends.comfyui import default_workflow, fill
from hybridgate.testing.mocks import media
from hybridgate.testing.procs import Proc, free_port, start_gateway, start_mock_comfyui
from test_jobs import GW, IMAGE, MASTER, auth, fal_backend, gw_config


@pytest.fixture(scope="module")
def fal(fal_process: Proc) -> Proc:
    return fal_with(fal_process, queue_s=0.1, run_s=0.1)


@pytest.fixture(scope="module")
def comfy() -> Iterator[Proc]:
    p = start_mock_comfyui(run_s=0.2)
    yield p
    p.stop()


def comfy_backend(url: str, name: str = "gpu", model: str = "flux-schnell") -> dict[str, Any]:
    return {
        "name": name,
        "kind": "comfyui",
        "base_url": url,
        "priority": 1,
        "models": {model: "sd15"},
        "price": {"per_gpu_hour": 3.6},
        "health": {"interval_s": 0.5, "failures_to_trip": 1, "cooldown_s": 60},
    }


@pytest.fixture(scope="module")
def gw(comfy: Proc, fal: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GW]:
    """One gateway for the file: flux-schnell on `gpu` (the ComfyUI mock) first, fal as the fallback;
    flux-down on `gpu-down` (nothing listens there) first, then fal."""
    tmp = tmp_path_factory.mktemp("comfy")
    fallback = fal_backend(fal, priority=5)
    fallback["models"] = {**fallback["models"], "flux-down": "fal-ai/flux/schnell"}
    dead = comfy_backend(f"http://127.0.0.1:{free_port()}", name="gpu-down", model="flux-down")
    port = free_port()
    cfg = gw_config(tmp, [comfy_backend(comfy.url), dead, fallback], port, time_bound_s=600)
    p = start_gateway(cfg, port=port, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp)
    yield GW(p)
    p.stop()


def test_comfyui_first_fal_when_comfyui_is_down(gw: GW, comfy: Proc) -> None:
    # The worst case on the GPU is its price per hour times the job's time bound: $3.6/h x 600 s = $0.60
    # (fal's 1 image + request is less); a key with $0.50 left is refused before ComfyUI sees anything.
    before = httpx.get(comfy.url + "/_mock/stats").json()["submissions"]
    poor = gw.key("poor", budget_usd=0.5)
    refused = gw.job(poor, {**IMAGE, "input": {"prompt": "too dear", "n": 1}})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert "0.600000" in refused.json()["error"]["message"]
    assert httpx.get(comfy.url + "/_mock/stats").json()["submissions"] == before
    client = openai.OpenAI(base_url=gw.proc.base_url, api_key=MASTER, max_retries=0)
    out = client.images.generate(
        model="flux-schnell", prompt="a castle", n=2, size="128x96", extra_body={"seed": 9}
    )
    assert out.data is not None and len(out.data) == 2
    assert httpx.get(out.data[1].url or "").content == media.png("a castle", 10, 128, 96)
    jobs = gw.http.get("/v1/jobs", headers=auth(MASTER)).json()["data"]
    assert jobs[0]["backend"] == "gpu" and jobs[0]["cost_reserved_usd"] == pytest.approx(0.6)
    # Settled from the GPU-seconds it ran (its wall time at ComfyUI, started to finished) at $3.6/h.
    ran = jobs[0]["finished_at"] - jobs[0]["started_at"]
    assert 0 < jobs[0]["cost_usd"] == pytest.approx(ran * 3.6 / 3600, rel=1e-6)
    assert httpx.get(comfy.url + "/_mock/stats").json()["jobs"][-1]["client_id"] == jobs[0]["id"]
    # ComfyUI down: the same request for a model whose GPU is unreachable is served by fal.
    out = client.images.generate(model="flux-down", prompt="a castle", size="128x96", extra_body={"seed": 9})
    assert out.data is not None and httpx.get(out.data[0].url or "").content == media.png(
        "a castle", 9, 128, 96
    )
    jobs = gw.http.get("/v1/jobs", headers=auth(MASTER)).json()["data"]
    assert jobs[0]["model"] == "flux-down" and jobs[0]["backend"] == "fal"


def test_comfyui_failure_and_cancel(gw: GW, comfy: Proc) -> None:
    try:
        httpx.post(comfy.url + "/_mock/config", json={"fail_rate": 1})
        job = gw.job(MASTER, IMAGE).json()
        failed = gw.wait(MASTER, job["id"])
        assert failed["status"] == "failed" and "CUDA out of memory" in failed["error"]["message"]
        assert failed["backend"] == "gpu"  # accepted by ComfyUI: a failure there does not go to fal
        httpx.post(comfy.url + "/_mock/config", json={"fail_rate": 0, "run_s": 30})
        slow = gw.job(MASTER, {**IMAGE, "input": {"prompt": "slow"}}).json()
        gw.wait(MASTER, slow["id"], status=("running",))
        gw.http.post(f"/v1/jobs/{slow['id']}/cancel", headers=auth(MASTER))
        assert gw.wait(MASTER, slow["id"])["status"] == "cancelled"
        mine = [
            j for j in httpx.get(comfy.url + "/_mock/stats").json()["jobs"] if j["client_id"] == slow["id"]
        ]
        assert mine[0]["interrupted"] is True
    finally:
        httpx.post(comfy.url + "/_mock/config", json={"fail_rate": 0, "run_s": 0.2})


def test_progress_from_comfyuis_websocket(gw: GW, comfy: Proc) -> None:
    """The comfyui kind listens on ComfyUI's websocket (opened before the submit): the job's progress moves
    with the nodes executed and the sampler's steps, not only from queued to done."""
    before = httpx.get(comfy.url + "/_mock/stats").json()["ws_connections"]
    httpx.post(comfy.url + "/_mock/config", json={"run_s": 2.0})
    try:
        job = gw.job(MASTER, {**IMAGE, "input": {"prompt": "watched", "n": 1, "steps": 20}}).json()
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            j = gw.get(MASTER, job["id"])
            seen.append(j["progress"])
            if j["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.1)
        assert j["status"] == "succeeded", j
    finally:
        httpx.post(comfy.url + "/_mock/config", json={"run_s": 0.2})
    # 7 nodes; during the sampler's steps: (4 nodes done + its fraction) / 7, between 4/7 and 5/7.
    mid = [p for p in seen if 0 < p < 1]
    assert mid and all(4 / 7 <= p <= 5 / 7 for p in mid), seen
    assert seen == sorted(seen)  # it only moves forward
    with gw.http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=auth(MASTER)) as r:
        text = r.read().decode()
    assert text.count("event: progress") >= 2
    stats = httpx.get(comfy.url + "/_mock/stats").json()
    mine = next(x for x in stats["jobs"] if x["client_id"] == job["id"])
    assert stats["ws_connections"] > before and mine["ws_messages"] >= 10


def test_progress_messages_as_comfyui_versions_send_them() -> None:
    """Nodes done (executing, execution_cached) plus the sampler's step fraction over the graph's nodes; a
    `progress` without a prompt id (older ComfyUI) counts for the prompt its client queued."""
    import orjson

    from hybridgate.backends import build_backend
    from hybridgate.backends.comfyui import ComfyUIBackend
    from hybridgate.config import BackendConfig

    b = build_backend(BackendConfig(name="g", kind="comfyui", base_url="http://gpu:8188", models={"m": "w"}))
    assert isinstance(b, ComfyUIBackend)
    b._prompt_of["job_1"] = "p1"

    def say(kind: str, **data: Any) -> bool:
        return b._on_message(orjson.dumps({"type": kind, "data": data}).decode(), "job_1")

    say("execution_cached", nodes=["4", "6"], prompt_id="p1")
    say("executing", node="5", prompt_id="p1")
    say("executing", node="3", prompt_id="p1")
    assert b._progress["p1"].value(8) == pytest.approx(3 / 8)
    say("progress", value=5, max=20, node="3")  # no prompt_id
    assert b._progress["p1"].value(8) == pytest.approx(3.25 / 8)
    assert b._on_message("not json", "job_1") is False and say("status", status={}) is False
    assert say("executing", node=None, prompt_id="p1") is True  # the prompt ended: the reader stops
    assert b._progress["p1"].value(8) == pytest.approx(0.5)


def test_workflow_template_filled_and_validated(comfy: Proc) -> None:
    graph = fill(
        default_workflow(True),
        {
            "prompt": "p",
            "seed": 1,
            "width": 64,
            "height": 64,
            "steps": 4,
            "n": 1,
            "checkpoint": "c.safetensors",
            "lora_name": "x-v1.safetensors",
            "lora_scale": 0.5,
        },
    )
    assert graph["3"]["inputs"]["seed"] == 1 and graph["10"]["inputs"]["strength_model"] == 0.5
    r = httpx.post(comfy.url + "/prompt", json={"prompt": graph})
    assert r.status_code == 200 and r.json()["prompt_id"]
    bad = httpx.post(
        comfy.url + "/prompt", json={"prompt": {**graph, "3": {"class_type": "Nope", "inputs": {}}}}
    )
    assert bad.status_code == 400 and "3" in bad.json()["node_errors"]
    unfilled = httpx.post(comfy.url + "/prompt", json={"prompt": default_workflow(False)})
    assert unfilled.status_code == 400


def test_bad_comfyui_config_is_refused(tmp_path: Path) -> None:
    from hybridgate.backends import build_backend
    from hybridgate.config import BackendConfig

    with pytest.raises(ValueError, match="base_url"):
        build_backend(BackendConfig(name="g", kind="comfyui", models={"m": "w"}))
    with pytest.raises(ValueError, match="workflow"):
        build_backend(
            BackendConfig(
                name="g",
                kind="comfyui",
                base_url="http://x",
                models={"m": "missing"},
                options={"workflows": {"other": {}}},
            )
        )
    with pytest.raises(ValueError, match=r"options\.colour"):
        build_backend(
            BackendConfig(
                name="g", kind="comfyui", base_url="http://x", models={"m": "w"}, options={"colour": 1}
            )
        )
