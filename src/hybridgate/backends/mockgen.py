"""The `mockgen` kind: a generation backend inside the gateway, free and with no server, so the embedded default
config can make images, videos and LoRAs out of the box (`make run`).

It speaks fal's model names and argument shapes (it is the `fal` adapter with the network replaced by memory)
and makes the same real files as `hybridgate mock-fal`: PNGs drawn from prompt and seed, a short MP4, a valid
safetensors LoRA. Its queue lives in memory: a job in flight when the gateway restarts is found gone and fails
as `result_expired` (use `hybridgate mock-fal` to test restarts).
"""

from __future__ import annotations

import io
import secrets
import time
import zipfile
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from hybridgate.backends._generation import ProviderStatus, ResultGoneError, Submitted
from hybridgate.backends.fal import FalBackend
from hybridgate.config import BackendConfig

_SCHEME = "mockgen://"
_TRAINERS = ("fal-ai/flux-lora-fast-training",)
_VIDEOS = ("fal-ai/ltx-video", "fal-ai/kling-video")
_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


class MockGenOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_s: float = Field(0.0, ge=0, le=3600, allow_inf_nan=False)
    run_s: float = Field(0.2, ge=0, le=3600, allow_inf_nan=False)


class MockGenBackend(FalBackend):
    Options: ClassVar[type[BaseModel]] = MockGenOptions
    free_health_checks: ClassVar[bool] = True

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config.model_copy(update={"api_key": config.api_key or "in-process"}))
        self.options: MockGenOptions  # type: ignore[assignment]
        self._jobs: dict[str, dict[str, Any]] = {}
        self._files: dict[str, tuple[bytes, str]] = {}

    async def check_health(self) -> None:
        return None

    async def submit(
        self, model: str, arguments: dict[str, Any], *, job_id: str, webhook_url: str | None
    ) -> Submitted:
        rid = secrets.token_hex(12)
        self._jobs[rid] = {"model": model, "args": arguments, "created": time.monotonic(), "cancelled": False}
        return Submitted(rid, {})

    def _job(self, ref: Submitted) -> dict[str, Any]:
        job = self._jobs.get(ref.request_id)
        if job is None:
            raise ResultGoneError(
                f"the in-process mock has no request {ref.request_id} (the gateway restarted)"
            )
        return job

    async def status(self, model: str, ref: Submitted, *, logs: bool = True) -> ProviderStatus:
        job = self._job(ref)
        age = time.monotonic() - job["created"]
        if job["cancelled"]:
            return ProviderStatus("cancelled")
        if age < self.options.queue_s:
            return ProviderStatus("queued", queue_position=0)
        if age < self.options.queue_s + self.options.run_s:
            return ProviderStatus("running", logs=[{"message": "generating", "level": "INFO"}])
        return ProviderStatus(
            "completed",
            logs=[{"message": "done", "level": "INFO"}],
            metrics={"inference_time": self.options.run_s},
        )

    async def result(self, model: str, ref: Submitted) -> dict[str, Any]:
        from hybridgate.testing.mocks import media

        job = self._job(ref)
        if "result" in job:
            return dict(job["result"])
        args, rid = job["args"], ref.request_id
        seed = int(args.get("seed", 0))
        if model in _TRAINERS:
            archive = self._read(str(args["images_data_url"]))
            names = [
                n
                for n in zipfile.ZipFile(io.BytesIO(archive)).namelist()
                if n.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))
            ]
            import hashlib

            sha = hashlib.sha256(archive).hexdigest()
            weights = media.lora_file(str(args.get("trigger_word", "")), int(args.get("steps", 1000)), sha)
            self._files[f"{rid}/pytorch_lora_weights.safetensors"] = (weights, "application/octet-stream")
            config = (f'{{"images": {len(names)}, "steps": {int(args.get("steps", 1000))}}}').encode()
            self._files[f"{rid}/config.json"] = (config, "application/json")
            out: dict[str, Any] = {
                "diffusers_lora_file": {
                    "url": f"{_SCHEME}{rid}/pytorch_lora_weights.safetensors",
                    "file_name": "pytorch_lora_weights.safetensors",
                },
                "config_file": {
                    "url": f"{_SCHEME}{rid}/config.json",
                    "file_name": "config.json",
                    "content_type": "application/json",
                },
            }
        elif model in _VIDEOS:
            data = media.mp4(str(args["prompt"]), seed, min(float(args.get("duration", 1.0)), 4.0))
            self._files[f"{rid}/video.mp4"] = (data, "video/mp4")
            out = {"video": {"url": f"{_SCHEME}{rid}/video.mp4", "content_type": "video/mp4"}, "seed": seed}
        else:
            size = args.get("image_size", "landscape_4_3")
            w, h = (
                (size["width"], size["height"]) if isinstance(size, dict) else _PRESETS.get(size, (1024, 768))
            )
            images = []
            for i in range(int(args.get("num_images", 1))):
                tag = "".join(f"|lora:{lo.get('path')}@{lo.get('scale')}" for lo in args.get("loras") or [])
                self._files[f"{rid}/{i}.png"] = (
                    media.png(str(args["prompt"]) + tag, seed + i, w, h),
                    "image/png",
                )
                images.append(
                    {"url": f"{_SCHEME}{rid}/{i}.png", "width": w, "height": h, "content_type": "image/png"}
                )
            out = {"images": images, "seed": seed, "prompt": args["prompt"]}
        job["result"] = out
        return out

    def _read(self, url: str) -> bytes:
        got = self._files.get(url.removeprefix(_SCHEME))
        if got is None:
            raise ResultGoneError(f"the in-process mock has no file {url}")
        return got[0]

    async def cancel(self, model: str, ref: Submitted) -> str:
        self._job(ref)["cancelled"] = True
        return "CANCELLATION_REQUESTED"

    async def download(self, url: str) -> AsyncIterator[bytes]:
        if not url.startswith(_SCHEME):
            async for chunk in super().download(url):
                yield chunk
            return
        yield self._read(url)

    async def upload(self, data: bytes, content_type: str, file_name: str) -> str:
        path = f"uploads/{secrets.token_hex(8)}/{file_name}"
        self._files[path] = (data, content_type)
        return _SCHEME + path


__all__ = ["MockGenBackend", "MockGenOptions"]
