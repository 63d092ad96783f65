"""End to end against the real fal.ai (paid): skipped unless REAL_API_TESTS=true and FAL_KEY are set.

One image through the gateway, metered by the pytest plugin's spending cap (run with e.g.
`--max-cost-usd 0.05`; with the default cap of 0 the call is skipped before it leaves the machine). The LoRA
training costs dollars, so it also needs HYBRIDGATE_REAL_LORA=true.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import httpx
import pytest

FAL_IMAGE = {"flux-schnell": "fal-ai/flux/schnell", "trainer": "fal-ai/flux-lora-fast-training"}


def _config(tmp: Any) -> dict[str, Any]:
    return {
        "database": f"sqlite:///{tmp}/hg.db",
        "backends": [
            {
                "name": "fal",
                "kind": "fal",
                "api_key": os.environ.get("FAL_KEY", ""),
                "models": FAL_IMAGE,
                # fal's list prices as read when written (check the model pages): images per image, the
                # LoRA trainer per step (reserved as steps x per_step before it is sent)
                "price": {"per_image": 0.003, "per_step": 0.002, "per_request": 0.0},
                "health": {"mode": "passive"},
            },
        ],
        "jobs": {"provider_poll_s": 2, "time_bound_s": 1800},
    }


@pytest.mark.e2e
def test_one_real_image(
    require_env: Any, gateway_factory: Any, openai_client_factory: Any, tmp_path: Any
) -> None:
    require_env("FAL_KEY")
    gw = gateway_factory(_config(tmp_path))
    client = openai_client_factory(gw)  # metered at the config's per_image price
    out = client.images.generate(model="flux-schnell", prompt="a red bicycle, studio photo", size="512x512")
    assert out.data and out.data[0].url and out.data[0].url.startswith(gw.url)
    png = httpx.get(out.data[0].url, timeout=60).content
    assert png[:8] == b"\x89PNG\r\n\x1a\n" or png[:3] == b"\xff\xd8\xff"  # fal may answer JPEG


@pytest.mark.e2e
def test_real_lora_training(require_env: Any, gateway_factory: Any, tmp_path: Any) -> None:
    require_env("FAL_KEY")
    if os.environ.get("HYBRIDGATE_REAL_LORA") != "true":
        pytest.skip("a real LoRA training costs dollars: set HYBRIDGATE_REAL_LORA=true to run it")
    urls = os.environ.get("HYBRIDGATE_REAL_LORA_IMAGES", "").split()
    if len(urls) < 4:
        pytest.skip("HYBRIDGATE_REAL_LORA_IMAGES: four or more image URLs, space-separated")
    gw = gateway_factory(_config(tmp_path))
    job = httpx.post(
        gw.base_url + "/jobs",
        json={
            "type": "lora_training",
            "model": "trainer",
            "input": {"name": "e2e", "image_urls": urls, "trigger_word": "E2ETOK", "steps": 100},
        },
        timeout=60,
    ).json()
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        done = httpx.get(gw.base_url + f"/jobs/{job['id']}", timeout=30).json()
        if done["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(10)
    assert done["status"] == "succeeded", done
    weights = next(a for a in done["artifacts"] if a["role"] == "lora_weights")
    assert hashlib.sha256(httpx.get(weights["url"], timeout=120).content).hexdigest() == weights["sha256"]
