"""The `comfyui` kind: a self-hosted ComfyUI server (your own GPU, or a rented one) as an image backend.

Per public model a workflow template in ComfyUI's API format (the JSON "Save (API)" writes), with placeholders
filled per job: a string that is exactly `"{{seed}}"`, `"{{width}}"`, `"{{height}}"`, `"{{steps}}"`, `"{{n}}"` or
`"{{lora_scale}}"` becomes that number; `{{prompt}}` and `{{lora_name}}` are replaced inside strings. Without a
template the built-in text-to-image graph is used (checkpoint from `options.checkpoint`), with a LoraLoader when
the job asks for a LoRA.

Submitted with `POST /prompt`, followed through `GET /queue` (position) and `GET /history/{id}` (done, outputs,
errors), outputs fetched from `GET /view`; cancel is `POST /queue {"delete": [id]}` while pending and `POST
/interrupt` while running; health is `GET /system_stats`. Cost: GPU-seconds of the job's wall time, priced with
`price.per_gpu_hour` (the GPU's hourly price), plus `per_image`/`per_request` when set.

    - name: my-gpu
      kind: comfyui
      base_url: http://gpu-box:8188
      models: {flux-schnell: sd15}          # public name -> workflow name
      priority: 1
      price: {per_gpu_hour: 0.79}
      options: {checkpoint: v1-5-pruned-emaonly.safetensors, workflows: {sd15: {...API-format JSON...}}}
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, ConfigDict, Field

from hybridgate.backends._base import BackendConnectError, BackendError, BackendHTTPError
from hybridgate.backends._generation import (
    GenerationBackend,
    Media,
    ProviderStatus,
    ResultGoneError,
    SubmitOutcomeUnknownError,
    Submitted,
)
from hybridgate.config import BackendConfig
from hybridgate.protocol import Operation, Usage


class ComfyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str = "v1-5-pruned-emaonly.safetensors"
    # workflow name (the value in `models`) -> API-format workflow with placeholders
    workflows: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_steps: int = Field(20, ge=1, le=200)
    default_size: str = Field("512x512", pattern=r"^\d{2,5}x\d{2,5}$")
    submit_timeout_s: float = Field(30.0, gt=0)


def default_workflow(with_lora: bool) -> dict[str, Any]:
    """ComfyUI's stock text-to-image graph, in API format, with placeholders."""
    model_src = ["10", 0] if with_lora else ["4", 0]
    clip_src = ["10", 1] if with_lora else ["4", 1]
    graph: dict[str, Any] = {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": "{{seed}}",
                "steps": "{{steps}}",
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": model_src,
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{checkpoint}}"}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": "{{n}}"},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": clip_src}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip_src}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "hybridgate", "images": ["8", 0]}},
    }
    if with_lora:
        graph["10"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "lora_name": "{{lora_name}}",
                "strength_model": "{{lora_scale}}",
                "strength_clip": "{{lora_scale}}",
                "model": ["4", 0],
                "clip": ["4", 1],
            },
        }
    return graph


_NUMBERS = ("seed", "width", "height", "steps", "n", "lora_scale")


def fill(node: Any, values: dict[str, Any]) -> Any:
    """The template with its placeholders replaced (numbers stay numbers)."""
    if isinstance(node, dict):
        return {k: fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, values) for v in node]
    if isinstance(node, str) and "{{" in node:
        for name in _NUMBERS:
            if node == "{{" + name + "}}":
                return values[name]
        out = node
        for name, v in values.items():
            out = out.replace("{{" + name + "}}", str(v))
        return out
    return node


class ComfyUIBackend(GenerationBackend):
    Options: ClassVar[type[BaseModel]] = ComfyOptions
    operations: ClassVar[frozenset[Operation]] = frozenset({Operation.IMAGE_GENERATION})

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.options: ComfyOptions
        if not config.base_url:
            raise ValueError(f"backend '{config.name}' (kind comfyui) needs base_url (its ComfyUI server)")
        self.base = config.base_url
        unknown = [
            w for w in config.models.values() if self.options.workflows and w not in self.options.workflows
        ]
        if unknown:
            raise ValueError(
                f"backend '{config.name}': models name workflow(s) {', '.join(unknown)} that options.workflows "
                f"does not define (it defines {', '.join(self.options.workflows)})"
            )
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            t = self.config.timeouts
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(t.answer, connect=t.connect_s))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check_health(self) -> None:
        try:
            r = await self.client.get(self.base + "/system_stats", timeout=self.config.health.timeout_s)
        except httpx.HTTPError as e:
            raise BackendConnectError(f"ComfyUI at {self.base} unreachable: {type(e).__name__}") from None
        if r.status_code != 200:
            raise BackendHTTPError(f"ComfyUI /system_stats answered {r.status_code}", status=r.status_code)

    def provider_input(self, operation: str, model: str, job_input: dict[str, Any]) -> dict[str, Any]:
        if operation != Operation.IMAGE_GENERATION:
            raise ValueError("comfyui backends run image_generation only")
        loras = job_input.get("loras") or []
        if len(loras) > 1:
            raise ValueError("this ComfyUI workflow applies one LoRA at a time")
        size = job_input.get("size") or self.options.default_size
        if "x" not in size:
            raise ValueError(f"size '{size}': ComfyUI needs WIDTHxHEIGHT")
        w, h = (int(x) for x in size.split("x"))
        prompt = job_input["prompt"]
        if loras and loras[0].get("trigger_word") and loras[0]["trigger_word"] not in prompt:
            prompt = f"{loras[0]['trigger_word']} {prompt}"
        values = {
            "prompt": prompt,
            "seed": job_input.get("seed", secrets.randbelow(2**32)),
            "width": w,
            "height": h,
            "steps": job_input.get("steps", self.options.default_steps),
            "n": job_input.get("n", 1),
            "checkpoint": self.options.checkpoint,
            "lora_name": f"{loras[0]['name']}-v{loras[0]['version']}.safetensors" if loras else "",
            "lora_scale": loras[0].get("scale", 1.0) if loras else 1.0,
        }
        template = self.options.workflows.get(model) or default_workflow(bool(loras))
        return {"prompt": fill(copy.deepcopy(template), values)}

    async def submit(
        self, model: str, arguments: dict[str, Any], *, job_id: str, webhook_url: str | None
    ) -> Submitted:
        body = {"prompt": arguments["prompt"], "client_id": job_id}
        timeout = httpx.Timeout(self.options.submit_timeout_s, connect=self.config.timeouts.connect_s)
        try:
            r = await self.client.post(self.base + "/prompt", json=body, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise BackendConnectError(f"cannot reach ComfyUI at {self.base}: {type(e).__name__}") from None
        except httpx.HTTPError as e:
            raise SubmitOutcomeUnknownError(
                f"the workflow was sent to ComfyUI but not answered ({type(e).__name__})"
            ) from None
        if r.status_code >= 400:
            raise BackendHTTPError(
                f"ComfyUI refused the workflow ({r.status_code}): {r.text[:400]}", status=r.status_code
            )
        try:
            prompt_id = str(r.json()["prompt_id"])
        except (ValueError, KeyError, TypeError):
            raise SubmitOutcomeUnknownError(f"ComfyUI's answer has no prompt_id: {r.text[:200]}") from None
        return Submitted(prompt_id, {"number": r.json().get("number")})

    async def _get(self, path: str) -> Any:
        try:
            r = await self.client.get(self.base + path)
        except httpx.HTTPError as e:
            raise BackendConnectError(f"ComfyUI {path}: {type(e).__name__}") from None
        if r.status_code >= 400:
            raise BackendHTTPError(f"ComfyUI {path} answered {r.status_code}", status=r.status_code)
        return r.json()

    async def status(self, model: str, ref: Submitted, *, logs: bool = True) -> ProviderStatus:
        history = await self._get(f"/history/{ref.request_id}")
        entry = history.get(ref.request_id) if isinstance(history, dict) else None
        if entry is not None:
            st = entry.get("status") or {}
            messages = [
                {"message": m[0], "level": "INFO", "source": "comfyui", "data": m[1] if len(m) > 1 else None}
                for m in st.get("messages") or []
                if isinstance(m, list) and m
            ]
            if st.get("status_str") == "error":
                why = next(
                    (
                        m["data"].get("exception_message")
                        for m in messages
                        if m["message"] == "execution_error" and isinstance(m["data"], dict)
                    ),
                    None,
                )
                return ProviderStatus(
                    "completed", logs=messages, error=why or "workflow failed", error_type="execution_error"
                )
            if st.get("completed", True):
                return ProviderStatus("completed", logs=messages)
        queue = await self._get("/queue")
        pending = [q[1] for q in queue.get("queue_pending", []) if isinstance(q, list) and len(q) > 1]
        if ref.request_id in pending:
            return ProviderStatus("queued", queue_position=pending.index(ref.request_id))
        return ProviderStatus("running")

    async def result(self, model: str, ref: Submitted) -> dict[str, Any]:
        history = await self._get(f"/history/{ref.request_id}")
        entry = history.get(ref.request_id) if isinstance(history, dict) else None
        if entry is None:
            raise ResultGoneError(f"ComfyUI has no history for {ref.request_id} (restarted, or cleared)")
        images = []
        for node_id, out in sorted((entry.get("outputs") or {}).items()):
            for img in out.get("images") or []:
                q = urlencode(
                    {
                        "filename": img["filename"],
                        "subfolder": img.get("subfolder", ""),
                        "type": img.get("type", "output"),
                    }
                )
                images.append(
                    {
                        "url": f"{self.base}/view?{q}",
                        "file_name": img["filename"],
                        "content_type": "image/png",
                        "node": node_id,
                    }
                )
        return {"images": images, "prompt_id": ref.request_id}

    async def cancel(self, model: str, ref: Submitted) -> str:
        try:
            queue = await self._get("/queue")
            pending = [q[1] for q in queue.get("queue_pending", []) if isinstance(q, list) and len(q) > 1]
            if ref.request_id in pending:
                await self.client.post(self.base + "/queue", json={"delete": [ref.request_id]})
                return "deleted from the queue"
            await self.client.post(self.base + "/interrupt", json={"prompt_id": ref.request_id})
            return "interrupted"
        except httpx.HTTPError as e:
            raise BackendConnectError(f"ComfyUI cancel: {type(e).__name__}") from None

    def media(self, operation: str, result: dict[str, Any]) -> list[Media]:
        return [
            Media("image", i["url"], i.get("content_type"), i.get("file_name"))
            for i in result.get("images", [])
        ]

    def usage(
        self,
        operation: str,
        job_input: dict[str, Any],
        result: dict[str, Any] | None,
        status: ProviderStatus | None,
        seconds: float,
    ) -> Usage:
        images = len((result or {}).get("images") or [])
        return Usage(images=images, gpu_seconds=max(0.0, seconds), requests=1)

    async def download(self, url: str) -> AsyncIterator[bytes]:
        try:
            async with self.client.stream("GET", url) as r:
                if r.status_code == 404:
                    raise ResultGoneError(f"ComfyUI no longer has {url}")
                if r.status_code >= 400:
                    raise BackendHTTPError(f"downloading {url}: HTTP {r.status_code}", status=r.status_code)
                async for chunk in r.aiter_bytes(256 * 1024):
                    yield chunk
        except httpx.HTTPError as e:
            raise BackendConnectError(f"downloading {url}: {type(e).__name__}") from None

    async def upload(self, data: bytes, content_type: str, file_name: str) -> str:
        raise BackendError("comfyui backends take no uploads (they do not train)")


__all__ = ["ComfyOptions", "ComfyUIBackend", "default_workflow", "fill"]
