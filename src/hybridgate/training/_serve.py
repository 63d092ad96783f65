"""Serve a trained LoRA adapter as a data-plane model (backend kind `lora`).

Registered at run time by `POST /v1/training/runs/{id}/serve` (sharing the training worker of the base
model, where the adapter is loaded under its own name), or from the config:

    - name: my-adapter
      kind: lora
      models: {my-adapter: my-adapter}
      price: {free: true}
      options: {base_model_path: /models/tiny, adapter: .hybridgate/training/runs/RUN/sampler_weights/NAME}

Chat is rendered with the base model's chat template; answers stream token by token from the worker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hybridgate.backends._base import Backend, BackendRequest, BackendResponse, BackendUnavailableError
from hybridgate.config import BackendConfig, PriceConfig
from hybridgate.protocol import (
    Endpoint,
    Operation,
    Usage,
    chunk_body,
    completion_id,
    response_body,
    usage_chunk,
)
from hybridgate.training._worker import Worker, WorkerError

if TYPE_CHECKING:
    from hybridgate.api.app import Gateway
    from hybridgate.auth import Principal

DEFAULT_MAX_TOKENS = 256


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model_path: str = Field(min_length=1)
    adapter: str = Field(min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0)
    data_dir: str = "./.hybridgate/training"


class AdapterBackend(Backend):
    operations = frozenset({Operation.CHAT, Operation.COMPLETIONS})
    Options = LoraOptions

    def __init__(
        self, config: BackendConfig, worker: Worker | None = None, adapter: str | None = None
    ) -> None:
        super().__init__(config)
        self.worker = worker
        self.adapter = adapter
        self._own = worker is None
        self._error: str | None = None

    @property
    def ready(self) -> bool:
        return self.worker is not None and self.worker.alive and self.adapter is not None

    @property
    def state(self) -> str:
        if self._error:
            return "failed"
        return "ready" if self.ready else "loading"

    async def start(self) -> None:
        if not self._own:
            return
        import asyncio

        o: LoraOptions = self.options
        self.worker = Worker(self.name, o.base_model_path, o.device, o.data_dir, o.threads)

        async def load() -> None:
            assert self.worker is not None
            try:
                await self.worker.start()
                await self.worker.call("load", run="served", folder=o.adapter, optimizer=False)
                self.adapter = "served"
            except WorkerError as e:
                self._error = e.message

        self._task = asyncio.ensure_future(load())

    async def close(self) -> None:
        if self._own and self.worker is not None:
            await self.worker.close()

    async def _prompt(self, req: BackendRequest) -> tuple[list[int], dict[str, Any]]:
        if not self.ready or self.worker is None:
            raise BackendUnavailableError(
                f"adapter backend '{self.name}' is not loaded ({self._error or 'loading'})"
            )
        body = req.body
        if req.endpoint == Endpoint.CHAT:
            msgs = []
            for m in body.get("messages") or []:
                c = m.get("content")
                if isinstance(c, list):
                    c = "".join(str(x.get("text", "")) for x in c if isinstance(x, dict))
                msgs.append({"role": m.get("role"), "content": c or ""})
            prompt = await self.worker.call("chat_prompt", messages=msgs, text=None)
        else:
            p = body.get("prompt")
            prompt = await self.worker.call(
                "chat_prompt", messages=None, text=p if isinstance(p, str) else ""
            )
        stop = body.get("stop")
        params = {
            "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS,
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "seed": body.get("seed"),
            "stop_strings": [stop] if isinstance(stop, str) else list(stop or []),
        }
        return prompt, params

    async def _parts(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        prompt, params = await self._prompt(req)
        assert self.worker is not None
        try:
            async for part in self.worker.stream(
                "stream_text", run=self.adapter, prompt=prompt, params=params
            ):
                yield part
        except WorkerError as e:
            raise BackendUnavailableError(f"adapter backend '{self.name}': {e.message}") from None

    async def complete(self, req: BackendRequest) -> BackendResponse:
        text, finish, usage = "", "stop", Usage()
        async for part in self._parts(req):
            if "text" in part:
                text += part["text"]
            else:
                finish = part["finish_reason"]
                usage = Usage(part["prompt_tokens"], part["completion_tokens"])
        model = str(req.body.get("model", self.name))
        return BackendResponse(
            response_body(req.endpoint, completion_id(req.endpoint), model, text, finish, usage), usage
        )

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        model = str(req.body.get("model", self.name))
        id_, created = completion_id(req.endpoint), int(time.time())
        if req.endpoint == Endpoint.CHAT:
            yield chunk_body(req.endpoint, id_, model, created, role=True)
        async for part in self._parts(req):
            if "text" in part:
                yield chunk_body(req.endpoint, id_, model, created, text=part["text"])
            else:
                yield chunk_body(req.endpoint, id_, model, created, finish_reason=part["finish_reason"])
                yield usage_chunk(
                    req.endpoint, id_, model, created, Usage(part["prompt_tokens"], part["completion_tokens"])
                )

    async def check_health(self) -> None:
        if not self.ready:
            raise BackendUnavailableError(
                f"adapter backend '{self.name}' is not loaded ({self._error or 'loading'})"
            )


async def serve_checkpoint(gw: Gateway, p: Principal, run_id: str, kind: str, name: str, model: str) -> None:
    """Load a saved adapter into its base model's training worker and add it to the router as `model`."""
    from hybridgate.protocol import BadRequestError

    svc = gw.training_service()
    if model in gw.manager.by_model:
        raise BadRequestError(
            f"A model named '{model}' is already served; choose another name.", param="model"
        )
    w, adapter, _ = await svc.load_adapter(p, run_id, kind, name)
    backend_name = "lora-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in model)[:150]
    cfg = BackendConfig(
        name=backend_name,
        kind="lora",
        models={model: model},
        price=PriceConfig(free=True),
        options={"base_model_path": w.path, "adapter": str(await svc.fetch(run_id, kind, name))},
    )
    await gw.manager.add(AdapterBackend(cfg, worker=w, adapter=adapter))
    svc.served[model] = run_id


__all__ = ["AdapterBackend", "LoraOptions", "serve_checkpoint"]
