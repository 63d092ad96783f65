"""The LoRA pipeline end to end, from a real short video made here: frames extracted (PyAV), archive uploaded to
the provider's storage, the trainer submitted, both files copied into storage under loras/{key}/{name}/v{n}/ with
their sha256, version 1 then 2 recorded, a version used in an image job. Against local files and a real
S3-compatible server (moto, a process on loopback)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import fal_with
from hybridgate.testing.mocks import media
from hybridgate.testing.procs import Proc, free_port, start_gateway
from test_jobs import GW, MASTER, auth, fal_backend, gw_config
from test_storage import make_bucket

FILES: dict[str, tuple[bytes, str]] = {}


class _Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        got = FILES.get(self.path)
        if got is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", got[1])
        self.send_header("content-length", str(len(got[0])))
        self.end_headers()
        self.wfile.write(got[0])

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    """A plain web server for the user's inputs (a video, images)."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def fal(fal_process: Proc) -> Proc:
    return fal_with(fal_process, queue_s=0.1, run_s=0.3)


# Images per image, LoRA training per step (as fal bills its trainer), both plus the request.
PRICE = {"per_image": 0.01, "per_step": 0.002, "per_request": 0.001}


def backend(fal: Proc) -> dict[str, Any]:
    b = fal_backend(fal, price=PRICE)
    b["models"] = {**b["models"], "flux-lora": "fal-ai/flux-lora"}
    return b


@pytest.fixture(params=["local", "s3"])
def gw(request: pytest.FixtureRequest, fal: Proc, tmp_path: Path) -> Iterator[GW]:
    port = free_port()
    cfg = gw_config(tmp_path, [backend(fal)], port)
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_server")
        bucket = f"loras-{port}"
        make_bucket(endpoint, bucket)
        cfg["storage"] = {
            "url": f"s3://{bucket}/gw",
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "access_key_id": "test",
            "secret_access_key": "test",
            "signing_secret": "x" * 32,
        }
    p = start_gateway(cfg, port=port, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp_path)
    g = GW(p)
    g.scheme = request.param  # type: ignore[attr-defined]
    yield g
    p.stop()


def test_lora_from_a_video_then_from_images_then_used(gw: GW, fal: Proc, files: str) -> None:
    FILES["/clip.mp4"] = (media.mp4("holiday", 3, seconds=2.0, fps=8), "video/mp4")
    for i in range(4):
        FILES[f"/img{i}.png"] = (media.png(f"portrait {i}", i, 96, 96), "image/png")
    FILES["/notes.txt"] = (b"not a video", "text/plain")
    alice, bob = gw.key("alice"), gw.key("bob")
    key_id = gw.http.get("/admin/keys", headers=auth(MASTER)).json()["data"]
    alice_id = next(k["id"] for k in key_id if k["name"] == "alice")

    v1 = gw.job(
        alice,
        {
            "type": "lora_training",
            "model": "trainer",
            "input": {
                "name": "holiday",
                "video_url": files + "/clip.mp4",
                "frames": 6,
                "trigger_word": "HLDY",
                "steps": 100,
            },
        },
    ).json()
    # Reserved before it was sent: 100 steps x $0.002 + the request; settled the same from the steps run.
    assert v1["cost_reserved_usd"] == pytest.approx(0.201)
    done = gw.wait(alice, v1["id"], timeout=40)
    assert done["status"] == "succeeded", done
    assert done["cost_usd"] == pytest.approx(0.201)
    by_role = {a["role"]: a for a in done["artifacts"]}
    prefix = f"loras/{alice_id}/holiday/v1/"
    assert by_role["lora_weights"]["key"] == prefix + "pytorch_lora_weights.safetensors"
    assert by_role["lora_config"]["key"] == prefix + "config.json"
    weights = httpx.get(by_role["lora_weights"]["url"]).content
    assert hashlib.sha256(weights).hexdigest() == by_role["lora_weights"]["sha256"]
    assert media.read_safetensors_header(weights)["__metadata__"]["trigger_word"] == "HLDY"
    config = httpx.get(by_role["lora_config"]["url"]).json()
    assert config["images"] == 6 and config["steps"] == 100  # six frames reached the trainer
    trainer_inputs = [
        r["input"]
        for r in httpx.get(fal.url + "/_mock/stats").json()["requests"]
        if r["app"] == "fal-ai/flux-lora-fast-training"
    ]
    assert trainer_inputs[-1]["images_data_url"].startswith(fal.url + "/files/uploads/")  # fal's storage

    v2 = gw.job(
        alice,
        {
            "type": "lora_training",
            "model": "trainer",
            "input": {
                "name": "holiday",
                "image_urls": [f"{files}/img{i}.png" for i in range(4)],
                "trigger_word": "HLDY",
                "steps": 200,
            },
        },
    ).json()
    assert gw.wait(alice, v2["id"], timeout=40)["status"] == "succeeded"

    listed = gw.http.get("/v1/loras", headers=auth(alice)).json()["data"]
    assert [(x["name"], x["versions"], x["latest"]["version"]) for x in listed] == [("holiday", 2, 2)]
    versions = gw.http.get("/v1/loras/holiday", headers=auth(alice)).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2] and [v["steps"] for v in versions] == [100, 200]
    assert [v["cost_usd"] for v in versions] == [pytest.approx(0.201), pytest.approx(0.401)]
    usage = gw.http.get("/v1/usage?group_by=operation", headers=auth(alice)).json()["data"]
    assert next(r for r in usage if r["group"] == "lora_training")["cost_usd"] == pytest.approx(0.602)
    # A training that does not fit the key's budget is refused before anything reaches the provider.
    seen = httpx.get(fal.url + "/_mock/stats").json()
    carol = gw.key("carol", budget_usd=0.5)
    refused = gw.job(
        carol,
        {
            "type": "lora_training",
            "model": "trainer",
            "input": {
                "name": "pricey",
                "image_urls": [f"{files}/img{i}.png" for i in range(4)],
                "steps": 250,
            },
        },
    )
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert "0.501" in refused.json()["error"]["message"]  # 250 x $0.002 + $0.001
    after = httpx.get(fal.url + "/_mock/stats").json()
    assert after["submissions"] == seen["submissions"] and len(after["requests"]) == len(seen["requests"])
    assert versions[0]["weights"]["sha256"] == by_role["lora_weights"]["sha256"]
    scheme = "s3://" if gw.scheme == "s3" else "file://"  # type: ignore[attr-defined]
    assert (
        versions[1]["weights"]["uri"].startswith(scheme) and "/holiday/v2/" in versions[1]["weights"]["uri"]
    )
    v2_weights = httpx.get(versions[1]["weights"]["url"]).content
    assert (
        hashlib.sha256(v2_weights).hexdigest()
        == versions[1]["weights"]["sha256"]
        != versions[0]["weights"]["sha256"]
    )
    # Another key sees none of it.
    assert gw.http.get("/v1/loras", headers=auth(bob)).json()["data"] == []
    assert gw.http.get("/v1/loras/holiday", headers=auth(bob)).status_code == 404

    # A version used in an image job: the provider gets a signed link to our copy of the weights.
    plain = gw.wait(
        alice,
        gw.job(
            alice,
            {
                "type": "image_generation",
                "model": "flux-lora",
                "input": {"prompt": "a beach", "seed": 2, "size": "64x64"},
            },
        ).json()["id"],
    )
    styled = gw.wait(
        alice,
        gw.job(
            alice,
            {
                "type": "image_generation",
                "model": "flux-lora",
                "input": {
                    "prompt": "a beach",
                    "seed": 2,
                    "size": "64x64",
                    "loras": [{"name": "holiday", "version": 1, "scale": 0.8}],
                },
            },
        ).json()["id"],
    )
    assert plain["status"] == styled["status"] == "succeeded"
    assert plain["artifacts"][0]["sha256"] != styled["artifacts"][0]["sha256"]
    image_inputs = [
        r["input"]
        for r in httpx.get(fal.url + "/_mock/stats").json()["requests"]
        if r["app"] == "fal-ai/flux-lora"
    ]
    lora_arg = image_inputs[-1]["loras"][0]
    assert lora_arg["scale"] == 0.8 and "/v1/files/" + prefix in lora_arg["path"]
    assert image_inputs[-1]["prompt"].startswith("HLDY ")  # the trigger word, added
    assert (
        hashlib.sha256(httpx.get(lora_arg["path"]).content).hexdigest() == by_role["lora_weights"]["sha256"]
    )
    unknown = gw.job(
        bob,
        {
            "type": "image_generation",
            "model": "flux-lora",
            "input": {"prompt": "x", "loras": [{"name": "holiday"}]},
        },
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "lora_not_found"

    bad = gw.wait(
        alice,
        gw.job(
            alice,
            {
                "type": "lora_training",
                "model": "trainer",
                "input": {"name": "broken", "video_url": files + "/notes.txt"},
            },
        ).json()["id"],
    )
    assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_input"
    assert "video" in bad["error"]["message"]
