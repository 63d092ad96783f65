"""The `comfyui` kind: a self-hosted ComfyUI server (your own GPU, or a rented one) as an image backend.

Per public model a workflow template in ComfyUI's API format (the JSON "Save (API)" writes), with placeholders
filled per job: a string that is exactly `"{{seed}}"`, `"{{width}}"`, `"{{height}}"`, `"{{steps}}"`, `"{{n}}"` or
`"{{lora_scale}}"` becomes that number; `{{prompt}}` and `{{lora_name}}` are replaced inside strings. Without a
template the built-in text-to-image graph is used (checkpoint from `options.checkpoint`), with a LoraLoader when
the job asks for a LoRA.

Submitted with `POST /prompt`, followed through `GET /queue` (position) and `GET /history/{id}` (done, outputs,
errors), outputs fetched from `GET /view`; progress from ComfyUI's websocket (`/ws?clientId=<job id>`, opened
before the submit so no message is missed, and again after a restart): `executing`, `progress` and
`execution_cached` messages give (nodes done + the sampler's step fraction) / nodes in the graph; cancel is `POST /queue {"delete": [id]}` while pending and `POST
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

import asyncio
import contextlib
import copy
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlencode

import httpx
import orjson
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

log = logging.getLogger("hybridgate.comfyui")


@dataclass
class _Progress:
    """What the websocket said about one prompt: nodes done, the node running and its step fraction."""

    done: set[str] = field(default_factory=set)
    current: str | None = None
    fraction: float = 0.0
    ended: bool = False

    def value(self, nodes: int) -> float | None:
        if not nodes or (not self.done and self.current is None):
            return None
        return min(0.99, (len(self.done) + self.fraction) / nodes)


class ComfyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str = "v1-5-pruned-emaonly.safetensors"
    # workflow name (the value in `models`) -> API-format workflow with placeholders
    workflows: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_steps: int = Field(20, ge=1, le=200)
    default_size: str = Field("512x512", pattern=r"^\d{2,5}x\d{2,5}$")
    submit_timeout_s: float = Field(30.0, gt=0)
    # Follow a job's progress on ComfyUI's websocket (off: progress only moves from queued to done).
    websocket: bool = True


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
        self._progress: dict[str, _Progress] = {}  # prompt id -> what its websocket said
        self._watchers: dict[str, asyncio.Task[None]] = {}  # client id -> its websocket reader
        self._prompt_of: dict[str, str] = {}  # client id -> the prompt it queued

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            t = self.config.timeouts
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(t.answer, connect=t.connect_s))
        return self._client

    async def close(self) -> None:
        for t in self._watchers.values():
            t.cancel()
        self._watchers.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- progress from the websocket ------------------------------------------------------------
    async def _watch(self, client_id: str, opened: asyncio.Event) -> None:
        """Read one client id's websocket until its prompts end (or it closes): progress per prompt id."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        url = "ws" + self.base.removeprefix("http") + "/ws?clientId=" + client_id
        try:
            async with connect(url, open_timeout=self.config.timeouts.connect_s, max_size=2**22) as ws:
                opened.set()
                async for raw in ws:
                    if isinstance(raw, bytes):
                        continue  # preview images
                    if self._on_message(raw, client_id):
                        return
        except (OSError, TimeoutError, WebSocketException) as e:
            log.debug("comfyui %s: websocket %s: %s", self.name, url, e)
        finally:
            opened.set()
            self._watchers.pop(client_id, None)

    def _on_message(self, raw: str, client_id: str) -> bool:
        """Apply one message; True when the prompt it is about has ended (the reader can stop)."""
        try:
            msg = orjson.loads(raw)
            kind, data = msg.get("type"), msg.get("data") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return False
        if not isinstance(data, dict):
            return False
        # Older ComfyUI sends `progress` without a prompt id: a client id here queues one prompt, so it is
        # that one's.
        pid = data.get("prompt_id") or self._prompt_of.get(client_id)
        if not isinstance(pid, str):
            return False
        p = self._progress.setdefault(pid, _Progress())
        if kind == "execution_cached":
            p.done.update(str(n) for n in data.get("nodes") or [])
        elif kind == "executing":
            if p.current is not None:
                p.done.add(p.current)
            node = data.get("node")
            p.current, p.fraction = (str(node) if node is not None else None), 0.0
            p.ended = node is None
        elif kind == "progress":
            try:
                p.fraction = max(0.0, min(1.0, float(data["value"]) / float(data["max"])))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                pass
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            p.ended = True
        return p.ended

    def _unfollow(self, ref: Submitted) -> None:
        """The prompt ended (or was cancelled): forget its progress and stop its reader."""
        self._progress.pop(ref.request_id, None)
        self._prompt_of.pop(str(ref.data.get("client_id") or ""), None)
        t = self._watchers.pop(str(ref.data.get("client_id") or ""), None)
        if t is not None:
            t.cancel()

    async def _follow(self, client_id: str, wait_s: float = 0.0) -> None:
        """Make sure a reader follows `client_id`; wait up to `wait_s` for it to connect."""
        if not self.options.websocket or not client_id:
            return
        t = self._watchers.get(client_id)
        opened = asyncio.Event()
        if t is None:
            self._watchers[client_id] = asyncio.create_task(
                self._watch(client_id, opened), name=f"comfyui:{self.name}:ws"
            )
            if wait_s:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await opened.wait()

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
        # Listening before the submit: ComfyUI sends progress only to a client connected at the time.
        await self._follow(job_id, wait_s=self.config.timeouts.connect_s)
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
        self._prompt_of[job_id] = prompt_id
        nodes = len(arguments["prompt"]) if isinstance(arguments["prompt"], dict) else 0
        return Submitted(prompt_id, {"number": r.json().get("number"), "client_id": job_id, "nodes": nodes})

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
            self._unfollow(ref)
            if st.get("completed", True):
                return ProviderStatus("completed", logs=messages)
        queue = await self._get("/queue")
        pending = [q[1] for q in queue.get("queue_pending", []) if isinstance(q, list) and len(q) > 1]
        client_id = str(ref.data.get("client_id") or "")
        if client_id:
            self._prompt_of[client_id] = ref.request_id
        await self._follow(client_id)  # again after a restart: from now on
        if ref.request_id in pending:
            return ProviderStatus("queued", queue_position=pending.index(ref.request_id))
        p = self._progress.get(ref.request_id)
        return ProviderStatus("running", progress=p.value(int(ref.data.get("nodes") or 0)) if p else None)

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
        self._unfollow(ref)
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
