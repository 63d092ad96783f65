"""`hybridgate mock-comfyui`: ComfyUI's HTTP API with a fake GPU: real PNGs, drawn from the workflow's prompt and
seed at its size, after a queue and a run time.

Serves `POST /prompt` (the graph is checked: known node classes, links to existing nodes, one SaveImage; 400
with `node_errors` otherwise), `GET /queue`, `POST /queue {"delete": [...]}`, `POST /interrupt`,
`GET /history/{id}` (outputs and status messages, as ComfyUI writes them), `GET /view`, `GET /system_stats`,
and the websocket `/ws?clientId=` on which a job's progress reaches the client that queued it (`status` on
connect, then `execution_start`, `executing` per node in graph order, `progress` per sampler step, `executed`
for each output node, `executing` with node null and `execution_success`, or `execution_error` /
`execution_interrupted`); plus `GET /_mock/stats` and `GET|POST /_mock/config` to watch and steer it. One job
runs at a time, the rest wait in order, as on one GPU.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from hybridgate.testing.mocks import media

KNOWN = {
    "KSampler",
    "CheckpointLoaderSimple",
    "EmptyLatentImage",
    "CLIPTextEncode",
    "VAEDecode",
    "SaveImage",
    "LoraLoader",
    "VAELoader",
    "CLIPLoader",
    "UNETLoader",
}


class ComfyMockOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0.0, ge=0, le=600_000, allow_inf_nan=False)
    run_s: float = Field(0.3, ge=0, le=86_400, allow_inf_nan=False)
    fail_rate: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    seed: int = 0


@dataclass
class _Job:
    id: str
    number: int
    graph: dict[str, Any]
    client_id: str | None
    started: float | None = None
    done: bool = False
    failed: bool = False
    interrupted: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)
    # What the websocket was told: nodes announced as executing, the last sampler step sent.
    announced: list[str] = field(default_factory=list)
    step_sent: int = 0
    ws_sent: int = 0


class ComfyMock:
    def __init__(self, options: ComfyMockOptions | None = None) -> None:
        self.options = options or ComfyMockOptions()
        self.jobs: dict[str, _Job] = {}
        self.order: list[str] = []
        self.files: dict[str, bytes] = {}
        self.submissions = 0
        self._dice = random.Random(self.options.seed)
        self._task: asyncio.Task[None] | None = None
        self.sockets: dict[str, set[WebSocket]] = {}  # clientId -> its open websockets
        self.ws_connections = 0
        self.app = Starlette(
            routes=[
                WebSocketRoute("/ws", self.ws),
                Route("/prompt", self.prompt, methods=["POST"]),
                Route("/queue", self.queue, methods=["GET", "POST"]),
                Route("/interrupt", self.interrupt, methods=["POST"]),
                Route("/history/{pid}", self.history, methods=["GET"]),
                Route("/view", self.view, methods=["GET"]),
                Route("/system_stats", self.system_stats, methods=["GET"]),
                Route("/_mock/stats", self.stats, methods=["GET"]),
                Route("/_mock/config", self.config, methods=["GET", "POST"]),
            ],
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def _lifespan(self, app: Any) -> Any:
        mock = self

        class _Ctx:
            async def __aenter__(self) -> None:
                mock._task = asyncio.create_task(mock._gpu())

            async def __aexit__(self, *exc: Any) -> None:
                if mock._task is not None:
                    mock._task.cancel()

        return _Ctx()

    def _pending(self) -> list[_Job]:
        return [self.jobs[i] for i in self.order if not self.jobs[i].done and self.jobs[i].started is None]

    def _running(self) -> _Job | None:
        return next(
            (self.jobs[i] for i in self.order if self.jobs[i].started is not None and not self.jobs[i].done),
            None,
        )

    async def _gpu(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            job = self._running()
            if job is None:
                pending = self._pending()
                if pending:
                    job = pending[0]
                    job.started = time.monotonic()
                    start = {"prompt_id": job.id, "timestamp": int(time.time() * 1000)}
                    job.messages.append(["execution_start", start])
                    await self._send(job, "execution_start", start)
                continue
            if job.interrupted:
                job.done = True
                job.messages.append(["execution_interrupted", {"prompt_id": job.id}])
                await self._send(job, "execution_interrupted", {"prompt_id": job.id, "node_id": None})
                continue
            if time.monotonic() - (job.started or 0) >= self.options.run_s:
                await self._finish(job)
            else:
                await self._progress(job)

    async def _send(self, job: _Job, kind: str, data: dict[str, Any]) -> None:
        """A message to the websockets of the client that queued the job (as ComfyUI sends them)."""
        for ws in list(self.sockets.get(job.client_id or "", ())):
            try:
                await ws.send_text(orjson.dumps({"type": kind, "data": data}).decode())
                job.ws_sent += 1
            except Exception:  # a client gone mid-send: ComfyUI drops it too
                self.sockets.get(job.client_id or "", set()).discard(ws)

    async def _executing(self, job: _Job, upto: str | None) -> None:
        """Announce, in graph order, every node not yet announced up to `upto` (all of them for None)."""
        for node_id in _order(job.graph):
            if node_id in job.announced:
                if node_id == upto:
                    return
                continue
            job.announced.append(node_id)
            await self._send(
                job, "executing", {"node": node_id, "display_node": node_id, "prompt_id": job.id}
            )
            if node_id == upto:
                return

    async def _progress(self, job: _Job) -> None:
        """While the job runs: the nodes before the sampler, then one `progress` per sampler step."""
        sampler = next((i for i, n in job.graph.items() if n.get("class_type") == "KSampler"), None)
        if sampler is None:
            return
        await self._executing(job, sampler)
        steps = max(1, int(job.graph[sampler]["inputs"].get("steps") or 1))
        run_s = self.options.run_s or 1e-3
        step = min(steps, int((time.monotonic() - (job.started or 0)) / run_s * steps))
        if step > job.step_sent:
            job.step_sent = step
            await self._send(
                job, "progress", {"value": step, "max": steps, "prompt_id": job.id, "node": sampler}
            )

    async def _finish(self, job: _Job) -> None:
        job.done = True
        if self._dice.random() < self.options.fail_rate:
            job.failed = True
            error = {
                "prompt_id": job.id,
                "node_id": "3",
                "node_type": "KSampler",
                "exception_message": "CUDA out of memory (mock)",
            }
            job.messages.append(["execution_error", error])
            await self._send(job, "execution_error", error)
            return
        self._make_outputs(job)
        for node_id in _order(job.graph):
            await self._executing(job, node_id)
            if node_id in job.outputs:
                await self._send(
                    job,
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": job.outputs[node_id],
                        "prompt_id": job.id,
                    },
                )
        await self._send(job, "executing", {"node": None, "prompt_id": job.id})
        success = {"prompt_id": job.id, "timestamp": int(time.time() * 1000)}
        job.messages.append(["execution_success", success])
        await self._send(job, "execution_success", success)

    def _make_outputs(self, job: _Job) -> None:
        g = job.graph
        sampler = next(n for n in g.values() if n["class_type"] == "KSampler")["inputs"]
        text = g[str(sampler["positive"][0])]["inputs"]["text"]
        latent = g[str(sampler["latent_image"][0])]["inputs"]
        lora = next((n["inputs"] for n in g.values() if n["class_type"] == "LoraLoader"), None)
        tag = f"|lora:{lora['lora_name']}@{lora['strength_model']}" if lora else ""
        for node_id, node in g.items():
            if node["class_type"] != "SaveImage":
                continue
            images = []
            for i in range(int(latent.get("batch_size", 1))):
                name = f"{node['inputs'].get('filename_prefix', 'ComfyUI')}_{job.number:05d}_{i}.png"
                self.files[name] = media.png(
                    str(text) + tag, int(sampler["seed"]) + i, int(latent["width"]), int(latent["height"])
                )
                images.append({"filename": name, "subfolder": "", "type": "output"})
            job.outputs[node_id] = {"images": images}

    async def _delay(self) -> None:
        if self.options.latency_ms:
            await asyncio.sleep(self.options.latency_ms / 1000)

    async def prompt(self, request: Request) -> Response:
        await self._delay()
        try:
            body = orjson.loads(await request.body())
            graph = body["prompt"]
            assert isinstance(graph, dict) and graph
        except Exception:
            return JSONResponse(
                {
                    "error": {
                        "type": "invalid_prompt",
                        "message": "Cannot parse the prompt",
                        "details": "",
                        "extra_info": {},
                    },
                    "node_errors": {},
                },
                400,
            )
        errors = _check(graph)
        if errors:
            return JSONResponse(
                {
                    "error": {
                        "type": "prompt_outputs_failed_validation",
                        "message": "Prompt outputs failed validation",
                        "details": "",
                        "extra_info": {},
                    },
                    "node_errors": errors,
                },
                400,
            )
        self.submissions += 1
        job = _Job(str(uuid.uuid4()), self.submissions, graph, body.get("client_id"))
        self.jobs[job.id] = job
        self.order.append(job.id)
        return JSONResponse({"prompt_id": job.id, "number": job.number, "node_errors": {}})

    async def ws(self, websocket: WebSocket) -> None:
        """ComfyUI's websocket: `clientId` names the client whose jobs' messages it receives."""
        client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
        await websocket.accept()
        self.ws_connections += 1
        self.sockets.setdefault(client_id, set()).add(websocket)
        try:
            remaining = len(self._pending()) + (1 if self._running() else 0)
            await websocket.send_text(
                orjson.dumps(
                    {
                        "type": "status",
                        "data": {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": client_id},
                    }
                ).decode()
            )
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            self.sockets.get(client_id, set()).discard(websocket)

    async def queue(self, request: Request) -> Response:
        await self._delay()
        if request.method == "POST":
            body = orjson.loads(await request.body() or b"{}")
            for pid in body.get("delete", []):
                job = self.jobs.get(pid)
                if job is not None and job.started is None:
                    job.done = True
                    job.interrupted = True
            if body.get("clear"):
                for job in self._pending():
                    job.done = job.interrupted = True
            return Response(b"", 200)
        running = self._running()
        return JSONResponse(
            {
                "queue_running": [[running.number, running.id, running.graph, {}, []]] if running else [],
                "queue_pending": [[j.number, j.id, j.graph, {}, []] for j in self._pending()],
            }
        )

    async def interrupt(self, request: Request) -> Response:
        running = self._running()
        if running is not None:
            running.interrupted = True
        return Response(b"", 200)

    async def history(self, request: Request) -> Response:
        await self._delay()
        job = self.jobs.get(request.path_params["pid"])
        if job is None or not job.done:
            return JSONResponse({})
        status = "error" if job.failed or job.interrupted else "success"
        return JSONResponse(
            {
                job.id: {
                    "prompt": [
                        job.number,
                        job.id,
                        job.graph,
                        {"client_id": job.client_id},
                        list(job.outputs),
                    ],
                    "outputs": job.outputs,
                    "status": {
                        "status_str": status,
                        "completed": not (job.failed or job.interrupted),
                        "messages": job.messages,
                    },
                }
            }
        )

    async def view(self, request: Request) -> Response:
        await self._delay()
        data = self.files.get(request.query_params.get("filename", ""))
        if data is None or request.query_params.get("type", "output") != "output":
            return Response(b"", 404)
        return Response(data, media_type="image/png")

    async def system_stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "system": {
                    "os": "posix",
                    "python_version": "3.11",
                    "comfyui_version": "mock",
                    "embedded_python": False,
                },
                "devices": [
                    {
                        "name": "mock-gpu",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 24 * 2**30,
                        "vram_free": 20 * 2**30,
                    }
                ],
            }
        )

    async def stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "submissions": self.submissions,
                "jobs": [
                    {
                        "prompt_id": j.id,
                        "client_id": j.client_id,
                        "done": j.done,
                        "failed": j.failed,
                        "interrupted": j.interrupted,
                        "ws_messages": j.ws_sent,
                    }
                    for j in self.jobs.values()
                ],
                "ws_connections": self.ws_connections,
            }
        )

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.body() or b"{}")
                self.options = ComfyMockOptions.model_validate({**self.options.model_dump(), **changes})
            except Exception as e:
                return JSONResponse({"error": f"invalid settings: {e}"}, 400)
        return JSONResponse(self.options.model_dump())


def _check(graph: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's validation, in short: known classes, links to nodes that exist, an output node."""
    errors: dict[str, Any] = {}
    for node_id, node in graph.items():
        if not isinstance(node, dict) or node.get("class_type") not in KNOWN:
            errors[node_id] = {
                "errors": [
                    {
                        "type": "invalid_class",
                        "message": "Node class not found",
                        "details": str(node.get("class_type") if isinstance(node, dict) else node),
                    }
                ],
                "class_type": None,
            }
            continue
        for name, v in (node.get("inputs") or {}).items():
            if isinstance(v, list) and len(v) == 2 and str(v[0]) not in graph:
                errors[node_id] = {
                    "errors": [
                        {
                            "type": "bad_link",
                            "message": f"input {name} links to a missing node",
                            "details": str(v[0]),
                        }
                    ],
                    "class_type": node["class_type"],
                }
            if isinstance(v, str) and "{{" in v:
                errors[node_id] = {
                    "errors": [
                        {
                            "type": "value_not_valid",
                            "message": f"{name} is an unfilled placeholder",
                            "details": v,
                        }
                    ],
                    "class_type": node["class_type"],
                }
    if not errors and not any(n.get("class_type") == "SaveImage" for n in graph.values()):
        errors["_"] = {"errors": [{"type": "prompt_no_outputs", "message": "Prompt has no outputs"}]}
    return errors


def _order(graph: dict[str, Any]) -> list[str]:
    """The graph's node ids in an order ComfyUI could execute them: every node after the nodes it links to."""
    out: list[str] = []

    def visit(node_id: str, seen: set[str]) -> None:
        if node_id in out or node_id in seen or node_id not in graph:
            return
        seen.add(node_id)
        for v in (graph[node_id].get("inputs") or {}).values():
            if isinstance(v, list) and len(v) == 2:
                visit(str(v[0]), seen)
        out.append(node_id)

    for node_id in sorted(graph, key=lambda k: (len(k), k)):
        visit(node_id, set())
    return out


def make_app(options: ComfyMockOptions) -> ComfyMock:
    return ComfyMock(options)


__all__ = ["ComfyMock", "ComfyMockOptions", "make_app"]
