"""`hybridgate mock-fal` checked with the official `fal-client` SDK (pinned 1.0.3) as the client, and the `fal`
backend's own queue client against the same process: submit, status with logs, result, cancel, subscribe,
upload_file, a failed job, result expiry, signed webhooks, and the slow-submit case the SDK gets wrong."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client as fc
import httpx
import pytest

from conftest import fal_with
from hybridgate.backends._generation import SubmitOutcomeUnknownError, Submitted
from hybridgate.backends.fal import FalBackend
from hybridgate.config import BackendConfig
from hybridgate.testing.mocks import media
from hybridgate.testing.procs import Proc, free_port


@pytest.fixture(scope="module")
def fal(fal_process: Proc) -> Proc:
    return fal_with(fal_process, queue_s=0.3, run_s=0.4)


@pytest.fixture
def sdk(fal: Proc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> fal_client.SyncClient:
    """The SDK pointed at the mock the way its research notes found: its module-level hosts."""
    monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", fal.url + "/")
    monkeypatch.setattr(fc, "RUN_URL_FORMAT", fal.url + "/")
    monkeypatch.setattr(fc, "REST_URL", fal.url)
    monkeypatch.setattr(fc, "CDN_URL", fal.url)
    monkeypatch.setenv("FAL_HOME_DIR", str(tmp_path))
    return fal_client.SyncClient(key="mock-key")


def stats(fal: Proc) -> dict[str, Any]:
    return dict(httpx.get(fal.url + "/_mock/stats").json())


def set_config(fal: Proc, **changes: Any) -> None:
    r = httpx.post(fal.url + "/_mock/config", json=changes)
    assert r.status_code == 200, r.text


@pytest.fixture(autouse=True)
def _reset(fal: Proc) -> Iterator[None]:
    yield
    set_config(
        fal,
        fail_rate=0,
        submit_delay_ms=0,
        result_ttl_s=3600,
        result_ttl_large_s=360,
        queue_s=0.3,
        run_s=0.4,
        bad_webhook_signature=False,
        duplicate_webhooks=False,
        webhooks=True,
    )


def test_submit_status_logs_result(sdk: fal_client.SyncClient, fal: Proc) -> None:
    handle = sdk.submit(
        "fal-ai/flux/schnell",
        {"prompt": "a red fox", "seed": 3, "num_images": 2, "image_size": {"width": 320, "height": 200}},
    )
    assert handle.status_url.startswith(fal.url + "/fal-ai/flux/requests/")  # absolute, the sub-path dropped
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = handle.status(with_logs=True)
        seen.append(type(s).__name__)
        if isinstance(s, fal_client.Completed):
            break
        time.sleep(0.05)
    assert seen[0] == "Queued" and "InProgress" in seen and seen[-1] == "Completed"
    assert isinstance(s, fal_client.Completed) and s.metrics.get("inference_time") == 0.4
    assert [entry["message"] for entry in s.logs or []][-1] == "step 4/4"
    out = handle.get()
    assert len(out["images"]) == 2 and out["seed"] == 3
    png = httpx.get(out["images"][0]["url"]).content
    assert media.png_size(png) == (320, 200)
    assert png == media.png("a red fox", 3, 320, 200)  # deterministic from prompt and seed
    assert httpx.get(out["images"][1]["url"]).content != png
    # By-id calls build /{owner}/{alias}/requests/{id} themselves.
    assert sdk.result("fal-ai/flux/schnell", handle.request_id) == out
    assert isinstance(sdk.status("fal-ai/flux/schnell", handle.request_id), fal_client.Completed)


def test_subscribe_upload_and_train_a_lora(sdk: fal_client.SyncClient, tmp_path: Path) -> None:
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(4):
            z.writestr(f"img{i}.png", media.png(f"face {i}", i, 64, 64))
    url = sdk.upload_file(archive)
    assert httpx.get(url).content == archive.read_bytes()
    events: list[Any] = []
    out = sdk.subscribe(
        "fal-ai/flux-lora-fast-training",
        {"images_data_url": url, "trigger_word": "TOK", "steps": 50},
        with_logs=True,
        on_enqueue=lambda rid: events.append(("enqueue", rid)),
        on_queue_update=lambda s: events.append(type(s).__name__),
    )
    assert events[0][0] == "enqueue" and events[-1] == "Completed"
    weights = httpx.get(out["diffusers_lora_file"]["url"]).content
    header = media.read_safetensors_header(weights)
    assert header["__metadata__"]["trigger_word"] == "TOK" and header["__metadata__"]["steps"] == "50"
    assert len(weights) == out["diffusers_lora_file"]["file_size"]
    assert json.loads(httpx.get(out["config_file"]["url"]).content)["images"] == 4


def test_trainer_refuses_too_few_images(sdk: fal_client.SyncClient, tmp_path: Path) -> None:
    archive = tmp_path / "few.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("only.png", media.png("x", 0, 64, 64))
    handle = sdk.submit("fal-ai/flux-lora-fast-training", {"images_data_url": sdk.upload_file(archive)})
    with pytest.raises(fal_client.client.FalClientHTTPError) as e:
        handle.get()
    assert e.value.status_code == 422 and "at least 4" in e.value.message


def test_cancel(sdk: fal_client.SyncClient, fal: Proc) -> None:
    set_config(fal, queue_s=30)
    handle = sdk.submit("fal-ai/flux/dev", {"prompt": "slow"})
    assert isinstance(handle.status(), fal_client.Queued)
    handle.cancel()
    mine = [r for r in stats(fal)["requests"] if r["request_id"] == handle.request_id]
    assert mine[0]["cancelled"] is True
    again = httpx.put(handle.cancel_url, headers={"Authorization": "Key mock-key"})
    assert again.json() == {"status": "ALREADY_COMPLETED"}


def test_failed_job_and_unknown_request(sdk: fal_client.SyncClient, fal: Proc) -> None:
    set_config(fal, fail_rate=1)
    handle = sdk.submit("fal-ai/flux/schnell", {"prompt": "doomed"})
    with pytest.raises(fal_client.client.FalClientHTTPError) as e:
        handle.get()
    assert e.value.status_code == 500 and e.value.error_type == "runner_disconnected"
    s = handle.status()
    assert isinstance(s, fal_client.Completed) and s.error == "Internal error while running the model"
    with pytest.raises(fal_client.client.FalClientHTTPError) as nf:
        sdk.status("fal-ai/flux/schnell", "no-such-id")
    assert nf.value.status_code == 404


def test_result_expiry(sdk: fal_client.SyncClient, fal: Proc) -> None:
    set_config(fal, queue_s=0, run_s=0, result_ttl_s=0.5)
    handle = sdk.submit("fal-ai/flux/schnell", {"prompt": "short-lived"})
    assert handle.get()["images"]
    time.sleep(0.8)
    with pytest.raises(fal_client.client.FalClientHTTPError) as e:
        handle.get()
    assert e.value.status_code == 404


def test_bad_key_and_bad_input(sdk: fal_client.SyncClient, fal: Proc) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError) as e:
        fal_client.SyncClient(key="wrong").submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert e.value.status_code == 401
    with pytest.raises(fal_client.client.FalClientHTTPError) as e:
        sdk.submit("fal-ai/flux/schnell", {"prompt": "x", "num_images": 9})
    assert e.value.status_code == 422
    with pytest.raises(fal_client.client.FalClientHTTPError) as e:
        sdk.submit("someone/unknown-app", {"prompt": "x"})
    assert e.value.status_code == 404


def test_sdk_resubmits_a_slow_submit_but_the_backend_does_not(
    fal: Proc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Why the `fal` backend has its own client: the SDK re-POSTs a submit that timed out (two billed jobs);
    ours sends it once and reports the outcome as unknown."""
    monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", fal.url + "/")
    monkeypatch.setattr(fc, "MAX_ATTEMPTS", 2)  # its default of 10, with backoff, takes a minute
    monkeypatch.setenv("FAL_HOME_DIR", str(tmp_path))
    set_config(fal, submit_delay_ms=1200)
    before = stats(fal)["submissions_by_app"].get("fal-ai/fast-sdxl", 0)
    client = fal_client.SyncClient(key="mock-key", default_timeout=0.5)
    with pytest.raises(Exception):  # noqa: B017 - the SDK gives up after its retries; which error is not the point
        client.submit("fal-ai/fast-sdxl", {"prompt": "once?"})
    sdk_sent = stats(fal)["submissions_by_app"]["fal-ai/fast-sdxl"] - before
    assert sdk_sent == 2  # one call, two billed jobs

    backend = FalBackend(
        BackendConfig(
            name="fal",
            kind="fal",
            base_url=fal.url,
            api_key="mock-key",
            models={"x": "fal-ai/fast-sdxl"},
            options={"submit_timeout_s": 0.5},
        )
    )

    async def once() -> None:
        try:
            with pytest.raises(SubmitOutcomeUnknownError):
                await backend.submit("fal-ai/fast-sdxl", {"prompt": "once!"}, job_id="j", webhook_url=None)
        finally:
            await backend.close()

    mid = stats(fal)["submissions_by_app"]["fal-ai/fast-sdxl"]
    asyncio.run(once())
    time.sleep(1.5)
    assert stats(fal)["submissions_by_app"]["fal-ai/fast-sdxl"] - mid == 1


class _Hooks(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Hooks.got.append(({k: v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_signed_webhooks_verify_against_the_published_keys(fal: Proc) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_port}/hook"
    backend = FalBackend(
        BackendConfig(
            name="fal",
            kind="fal",
            base_url=fal.url,
            api_key="mock-key",
            models={"x": "fal-ai/flux/schnell"},
            options={"jwks_url": fal.url + "/.well-known/jwks.json"},
        )
    )
    try:
        _Hooks.got.clear()
        ref: Submitted = await backend.submit(
            "fal-ai/flux/schnell", {"prompt": "hooked"}, job_id="j", webhook_url=hook
        )
        for _ in range(200):  # up to 10 s for the mock's webhook
            if _Hooks.got:
                break
            await asyncio.sleep(0.05)
        headers, body = _Hooks.got[0]
        assert json.loads(body)["status"] == "OK" and json.loads(body)["request_id"] == ref.request_id
        assert backend.verify_webhook(headers, body) == ref.request_id
        with pytest.raises(ValueError, match="does not verify"):
            backend.verify_webhook(headers, body.replace(b"hooked", b"forged"))
        with pytest.raises(ValueError, match="missing header"):
            backend.verify_webhook({}, body)
        old = {**headers, "x-fal-webhook-timestamp": str(int(time.time()) - 3600)}
        with pytest.raises(ValueError, match="window"):
            backend.verify_webhook(old, body)
        # The mock can sign wrongly on purpose.
        set_config(fal, bad_webhook_signature=True)
        _Hooks.got.clear()
        await backend.submit("fal-ai/flux/schnell", {"prompt": "bad"}, job_id="j2", webhook_url=hook)
        for _ in range(200):  # up to 10 s for the mock's webhook
            if _Hooks.got:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(ValueError, match="does not verify"):
            backend.verify_webhook(*_Hooks.got[0])
    finally:
        server.shutdown()
        await backend.close()


def test_zip_bytes_helper_makes_valid_pngs() -> None:
    data = media.png("p", 1, 100, 50)
    assert media.png_size(data) == (100, 50)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", data)
    assert zipfile.ZipFile(io.BytesIO(buf.getvalue())).read("a.png") == data
