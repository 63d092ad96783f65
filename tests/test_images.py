"""POST /v1/images/generations with the official `openai` client against `hybridgate serve` routed to
`hybridgate mock-fal`: URLs into the gateway's own storage, b64_json, the 202 past the wait bound, errors."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import fal_with
from hybridgate.testing.mocks import media
from hybridgate.testing.procs import Proc, free_port, start_gateway
from test_jobs import MASTER, fal_backend, gw_config


@pytest.fixture(scope="module")
def fal(fal_process: Proc) -> Proc:
    return fal_with(fal_process, queue_s=0.1, run_s=0.2)


@pytest.fixture(scope="module")
def gw(fal: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("images")
    port = free_port()
    cfg: dict[str, Any] = gw_config(tmp, [fal_backend(fal)], port, images_wait_s=20)
    cfg["jobs"].pop("public_url")  # links then follow the address the client used
    p = start_gateway(cfg, port=port, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp)
    yield p
    p.stop()


@pytest.fixture
def client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)


def test_url_response_points_at_our_storage(client: openai.OpenAI, gw: Proc, fal: Proc) -> None:
    out = client.images.generate(
        model="flux-schnell",
        prompt="a blue whale",
        n=2,
        size="256x256",
        response_format="url",
        extra_body={"seed": 5},
    )
    assert out.data is not None and len(out.data) == 2
    for i, img in enumerate(out.data):
        assert img.url is not None and img.url.startswith(gw.url + "/v1/files/") and "sig=" in img.url
        assert fal.url not in img.url  # never the provider's CDN
        assert httpx.get(img.url).content == media.png("a blue whale", 5 + i, 256, 256)


def test_b64_json(client: openai.OpenAI) -> None:
    out = client.images.generate(
        model="flux-schnell",
        prompt="a green frog",
        size="128x64",
        response_format="b64_json",
        extra_body={"seed": 1},
    )
    assert out.data is not None and len(out.data) == 1 and out.data[0].b64_json
    data = base64.b64decode(out.data[0].b64_json)
    assert data == media.png("a green frog", 1, 128, 64)


def test_errors_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="flux-schnell", prompt="x", n=9)
    assert e.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="flux-schnell", prompt="x", size="huge")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="flux-schnell", prompt="x", response_format="gif")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="dall-e-9", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="mock", prompt="x")  # a chat model
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).images.generate(
            model="flux-schnell", prompt="x"
        )


def test_provider_failure_is_a_502(client: openai.OpenAI, fal: Proc) -> None:
    httpx.post(fal.url + "/_mock/config", json={"fail_rate": 1})
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client.images.generate(model="flux-schnell", prompt="doomed")
        assert e.value.status_code == 502 and e.value.body["code"] == "generation_failed"  # type: ignore[index]
    finally:
        httpx.post(fal.url + "/_mock/config", json={"fail_rate": 0})


def test_past_the_bound_answers_202_with_the_job(fal: Proc, tmp_path: Path) -> None:
    port = free_port()
    cfg = gw_config(tmp_path, [fal_backend(fal)], port, images_wait_s=0.3)
    p = start_gateway(cfg, port=port, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp_path)
    httpx.post(fal.url + "/_mock/config", json={"queue_s": 3})
    try:
        r = httpx.post(
            p.base_url + "/images/generations",
            json={"model": "flux-schnell", "prompt": "slow"},
            headers={"Authorization": f"Bearer {MASTER}"},
            timeout=30,
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/v1/jobs/{job_id}" and r.json()["status"] in ("queued", "running")
        done = httpx.get(p.url + f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {MASTER}"})
        assert done.json()["type"] == "image_generation"
    finally:
        httpx.post(fal.url + "/_mock/config", json={"queue_s": 0.1})
        p.stop()


def test_the_embedded_default_makes_images_videos_and_loras_for_free(tmp_path: Path) -> None:
    """`make run`'s config (less the local llama model, which is not needed here) serves images.generate,
    a video job and a LoRA training from its in-process generation mock."""
    import io
    import time
    from importlib import resources

    import av
    import yaml

    cfg = yaml.safe_load(resources.files("hybridgate.config").joinpath("default.yaml").read_text())
    cfg["backends"] = [b for b in cfg["backends"] if b["kind"] != "llamacpp"]
    assert any(b["kind"] == "mockgen" for b in cfg["backends"])
    p = start_gateway(cfg, workdir=tmp_path)
    try:
        client = openai.OpenAI(base_url=p.base_url, api_key="unused", max_retries=0)
        out = client.images.generate(
            model="flux-schnell", prompt="free", size="64x64", extra_body={"seed": 4}
        )
        assert out.data is not None and httpx.get(out.data[0].url or "").content == media.png(
            "free", 4, 64, 64
        )
        http = httpx.Client(base_url=p.url, timeout=30)
        video = http.post(
            "/v1/jobs",
            json={
                "type": "video_generation",
                "model": "ltx-video",
                "input": {"prompt": "waves", "duration_s": 1},
            },
        ).json()
        # Training images from URLs: here the image just made, served by the gateway's own signed link.
        train = http.post(
            "/v1/jobs",
            json={
                "type": "lora_training",
                "model": "flux-lora-trainer",
                "input": {
                    "name": "free",
                    "image_urls": [out.data[0].url] * 4,
                    "trigger_word": "FREE",
                    "steps": 10,
                },
            },
        ).json()
        for job in (video, train):
            for _ in range(200):
                done = http.get(f"/v1/jobs/{job['id']}").json()
                if done["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.1)
            assert done["status"] == "succeeded", done
        v = http.get(f"/v1/jobs/{video['id']}").json()["artifacts"][0]
        assert v["content_type"] == "video/mp4"
        with av.open(
            io.BytesIO(httpx.get(p.url + v["url"] if v["url"].startswith("/") else v["url"]).content)
        ) as c:
            assert c.streams.video and sum(1 for _ in c.decode(video=0)) >= 4
        loras = http.get("/v1/loras/free").json()["versions"]
        assert loras[0]["version"] == 1 and loras[0]["trigger_word"] == "FREE"
    finally:
        p.stop()
