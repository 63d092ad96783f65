"""`hybridgate mock-fal`: fal.ai's queue, storage and webhooks as a real HTTP server, faithful enough that the
official `fal-client` SDK runs against it unchanged (point its hosts here; see README, "mock-fal").

What it serves, as fal does (shared/research/fal-runpod-gemini-sdks.md, section 1):
- `POST /{owner}/{app}[/{path}]` (submit; `?fal_webhook=`) -> 200 `{request_id, status_url, response_url,
  cancel_url, status: IN_QUEUE, queue_position, gateway_request_id}`, the URLs absolute, pointing here;
- `GET .../requests/{id}/status?logs=` -> 202 IN_QUEUE (queue_position) / 202 IN_PROGRESS (logs) / 200
  COMPLETED (logs, metrics; error and error_type when it failed);
- `GET .../requests/{id}` -> the output, the failure's status with `{detail, error_type}`, or 404 once the
  result has expired (1 hour; 6 minutes when 10 KB or larger; both settable);
- `PUT .../requests/{id}/cancel` -> `{status: CANCELLATION_REQUESTED | ALREADY_COMPLETED | NOT_FOUND}`;
- storage: `POST /storage/auth/token?storage_type=fal-cdn-v3`, `POST /files/upload`, the legacy
  `POST /storage/upload/initiate` + `PUT`, and the files themselves under `/files/...`;
- webhooks: `POST` to the submit's `fal_webhook` when a request ends, signed with ED25519 over
  `request_id \\n user_id \\n timestamp \\n sha256(body)`; the key is published at `/.well-known/jwks.json`.

Models: text-to-image (`fal-ai/flux/schnell`, `fal-ai/flux/dev`, `fal-ai/flux-lora`: real PNGs drawn from prompt
and seed), text-to-video (`fal-ai/ltx-video`: a short real MP4) and the LoRA trainer
(`fal-ai/flux-lora-fast-training`: checks its zip, returns a real safetensors file and a config).

Faults (flags, or `POST /_mock/config` while running): latency, slow submit (the job is created before the
delay, as a real server would, so a client that times out and re-sends makes a second job), submit
failures, job failures, queue and run time, result expiry, bad or duplicated webhook signatures.
`GET /_mock/stats` says what it saw (submissions per app, each request's state and when it was submitted and
ended, webhooks sent).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import random
import secrets
import time
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hybridgate.testing.mocks import media

IMAGE_APPS = {"fal-ai/flux", "fal-ai/flux-lora", "fal-ai/fast-sdxl"}
VIDEO_APPS = {"fal-ai/ltx-video", "fal-ai/kling-video"}
TRAINER_APPS = {"fal-ai/flux-lora-fast-training"}
APPS = IMAGE_APPS | VIDEO_APPS | TRAINER_APPS
_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp")


class FalMockOptions(BaseModel):
    """Every knob of the mock; the same names as the command's flags."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0.0, ge=0, le=600_000, allow_inf_nan=False)
    submit_delay_ms: float = Field(0.0, ge=0, le=600_000, allow_inf_nan=False)
    submit_fail_rate: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    submit_fail_status: int = Field(503, ge=400, le=599)
    fail_rate: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    queue_s: float = Field(0.2, ge=0, le=86_400, allow_inf_nan=False)
    run_s: float = Field(0.5, ge=0, le=86_400, allow_inf_nan=False)
    result_ttl_s: float = Field(3600.0, gt=0, allow_inf_nan=False)
    result_ttl_large_s: float = Field(360.0, gt=0, allow_inf_nan=False)
    webhooks: bool = True
    bad_webhook_signature: bool = False
    duplicate_webhooks: bool = False
    key: str | None = None
    seed: int = 0


@dataclass
class _Req:
    id: str
    app: str
    path: str
    input: dict[str, Any]
    created: float
    queue_s: float
    run_s: float
    fail: bool
    webhook: str | None
    gateway_id: str
    cancelled: bool = False
    done_at: float | None = None
    output: dict[str, Any] | None = None
    error: tuple[int, str, str] | None = None  # status, detail, error_type
    size: int = 0
    webhooks_sent: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    created_wall: float = field(default_factory=time.time)
    # How long the result is kept (under 10 KB, and 10 KB or larger): the settings when it was submitted.
    ttl_s: float = 3600.0
    ttl_large_s: float = 360.0

    @property
    def model(self) -> str:
        return self.app + (f"/{self.path}" if self.path else "")


class FalMock:
    """The mock's state and its Starlette app."""

    def __init__(self, options: FalMockOptions | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.options = options or FalMockOptions()
        self.requests: dict[str, _Req] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # path under /files/ -> (bytes, content type)
        self.submissions = 0
        self.submissions_by_app: dict[str, int] = {}
        self.webhook_log: list[dict[str, Any]] = []
        self._key = Ed25519PrivateKey.generate()
        self._dice = random.Random(self.options.seed)
        self._tokens: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/.well-known/jwks.json", self.jwks, methods=["GET"]),
                Route("/_mock/stats", self.stats, methods=["GET"]),
                Route("/_mock/config", self.config, methods=["GET", "POST"]),
                Route("/storage/auth/token", self.cdn_token, methods=["POST"]),
                Route("/storage/upload/initiate", self.gcs_initiate, methods=["POST"]),
                Route("/_gcs/{rest:path}", self.gcs_put, methods=["PUT"]),
                Route("/files/upload", self.cdn_upload, methods=["POST"]),
                Route("/files/{rest:path}", self.file, methods=["GET"]),
                Route("/{owner}/{alias}/requests/{rid}/status", self.status, methods=["GET"]),
                Route("/{owner}/{alias}/requests/{rid}/cancel", self.cancel, methods=["PUT"]),
                Route("/{owner}/{alias}/requests/{rid}", self.response, methods=["GET"]),
                Route("/{owner}/{alias}", self.submit, methods=["POST"]),
                Route("/{owner}/{alias}/{path:path}", self.submit, methods=["POST"]),
            ],
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    # --- lifespan: the ticker that ends requests and sends webhooks -------------------------------
    def _lifespan(self, app: Any) -> Any:
        mock = self

        class _Ctx:
            async def __aenter__(self) -> None:
                mock._http = httpx.AsyncClient(timeout=10)
                mock._task = asyncio.create_task(mock._ticker())

            async def __aexit__(self, *exc: Any) -> None:
                if mock._task is not None:
                    mock._task.cancel()
                if mock._http is not None:
                    await mock._http.aclose()

        return _Ctx()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            for r in list(self.requests.values()):
                try:
                    if r.done_at is None and self._state(r) == "COMPLETED":
                        await self._complete(r)
                except Exception as e:  # a broken request must not stop the others
                    r.error = (500, f"mock error: {e}", "internal_error")
                    r.done_at = time.monotonic()

    # --- helpers ----------------------------------------------------------------------------------
    async def _delay(self) -> None:
        if self.options.latency_ms:
            await asyncio.sleep(self.options.latency_ms / 1000)

    def _authorised(self, request: Request) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme not in ("Key", "Bearer") or not token:
            return JSONResponse({"detail": "Missing authorization header"}, 401)
        if scheme == "Key" and self.options.key is not None and token != self.options.key:
            return JSONResponse({"detail": "Invalid API key"}, 401)
        if scheme == "Bearer" and token not in self._tokens:
            return JSONResponse({"detail": "Invalid token"}, 401)
        return None

    def _state(self, r: _Req) -> str:
        if r.done_at is not None or r.cancelled:
            return "COMPLETED"
        age = time.monotonic() - r.created
        if age < r.queue_s:
            return "IN_QUEUE"
        if age < r.queue_s + r.run_s:
            return "IN_PROGRESS"
        return "COMPLETED"

    def _logs(self, r: _Req) -> list[dict[str, Any]]:
        age = time.monotonic() - r.created - r.queue_s
        total = 4
        n = total if r.done_at is not None else max(0, min(total, int(age / max(r.run_s, 1e-3) * total)))
        ts = datetime.fromtimestamp(time.time(), UTC).isoformat()
        return [
            {"message": f"step {i + 1}/{total}", "level": "INFO", "source": "user", "timestamp": ts}
            for i in range(n)
        ]

    def _base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def _find(self, owner: str, alias: str, rid: str) -> _Req | None:
        r = self.requests.get(rid)
        if r is None or r.app != f"{owner}/{alias}":
            return None
        if r.done_at is not None:
            ttl = r.ttl_s if r.size < 10_000 else r.ttl_large_s
            if time.monotonic() - r.done_at > ttl:
                return None  # expired: fal forgets the request and its result
        return r

    # --- queue ------------------------------------------------------------------------------------
    async def submit(self, request: Request) -> Response:
        await self._delay()
        denied = self._authorised(request)
        if denied is not None:
            return denied
        owner, alias = request.path_params["owner"], request.path_params["alias"]
        path = request.path_params.get("path", "")
        app = f"{owner}/{alias}"
        if app not in APPS:
            return JSONResponse({"detail": f"Application '{app}' not found"}, 404)
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return JSONResponse({"detail": "Request body is not valid JSON"}, 422)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "Request body must be a JSON object"}, 422)
        problem = _check_input(app, body)
        if problem is not None:
            return JSONResponse(
                {"detail": [{"loc": ["body", problem[0]], "msg": problem[1], "type": "value_error"}]}, 422
            )
        if self.options.submit_fail_rate and self._dice.random() < self.options.submit_fail_rate:
            return JSONResponse(
                {"detail": "Service temporarily unavailable"}, self.options.submit_fail_status
            )
        rid = str(secrets.token_hex(16))
        self.submissions += 1
        self.submissions_by_app[app] = self.submissions_by_app.get(app, 0) + 1
        r = _Req(
            id=rid,
            app=app,
            path=path,
            input=body,
            created=time.monotonic(),
            queue_s=self.options.queue_s,
            run_s=self.options.run_s,
            fail=bool(self.options.fail_rate) and self._dice.random() < self.options.fail_rate,
            webhook=request.query_params.get("fal_webhook"),
            gateway_id=rid,
            ttl_s=self.options.result_ttl_s,
            ttl_large_s=self.options.result_ttl_large_s,
        )
        self.requests[rid] = r
        if self.options.submit_delay_ms:  # created already: a client that gives up leaves it running
            await asyncio.sleep(self.options.submit_delay_ms / 1000)
        base = f"{self._base(request)}/{app}/requests/{rid}"
        return JSONResponse(
            {
                "request_id": rid,
                "gateway_request_id": r.gateway_id,
                "status": "IN_QUEUE",
                "queue_position": self._position(r),
                "response_url": base,
                "status_url": base + "/status",
                "cancel_url": base + "/cancel",
            }
        )

    def _position(self, r: _Req) -> int:
        return sum(
            1 for o in self.requests.values() if o.created < r.created and self._state(o) == "IN_QUEUE"
        )

    async def status(self, request: Request) -> Response:
        await self._delay()
        denied = self._authorised(request)
        if denied is not None:
            return denied
        p = request.path_params
        r = self._find(p["owner"], p["alias"], p["rid"])
        if r is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        with_logs = request.query_params.get("logs", "0") in ("1", "true", "True")
        state = self._state(r)
        if state == "COMPLETED" and r.done_at is None:
            await self._complete(r)
        if state == "IN_QUEUE":
            return JSONResponse({"status": "IN_QUEUE", "queue_position": self._position(r)}, 202)
        if state == "IN_PROGRESS":
            return JSONResponse({"status": "IN_PROGRESS", "logs": self._logs(r) if with_logs else None}, 202)
        out: dict[str, Any] = {
            "status": "COMPLETED",
            "logs": self._logs(r) if with_logs else None,
            "metrics": {"inference_time": round(r.run_s, 3)},
        }
        if r.error is not None:
            out["error"], out["error_type"] = r.error[1], r.error[2]
        return JSONResponse(out, 200)

    async def response(self, request: Request) -> Response:
        await self._delay()
        denied = self._authorised(request)
        if denied is not None:
            return denied
        p = request.path_params
        r = self._find(p["owner"], p["alias"], p["rid"])
        if r is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        if self._state(r) != "COMPLETED":
            return JSONResponse({"detail": "Request is still in progress"}, 400)
        if r.done_at is None:
            await self._complete(r)
        if r.error is not None:
            return JSONResponse(
                {"detail": r.error[1], "error_type": r.error[2]},
                r.error[0],
                headers={"x-fal-error-type": r.error[2]},
            )
        return JSONResponse(r.output)

    async def cancel(self, request: Request) -> Response:
        await self._delay()
        denied = self._authorised(request)
        if denied is not None:
            return denied
        p = request.path_params
        r = self._find(p["owner"], p["alias"], p["rid"])
        if r is None:
            return JSONResponse({"status": "NOT_FOUND"}, 404)
        if r.done_at is not None or self._state(r) == "COMPLETED":
            return JSONResponse({"status": "ALREADY_COMPLETED"}, 400)
        r.cancelled = True
        r.error = (400, "Request was cancelled", "request_cancelled")
        r.done_at = time.monotonic()
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202)

    # --- outputs ----------------------------------------------------------------------------------
    async def _complete(self, r: _Req) -> None:
        if r.done_at is not None:
            return
        r.done_at = time.monotonic()  # first, so a concurrent poll does not complete it twice
        base = self._self_url
        if r.fail:
            r.error = (500, "Internal error while running the model", "runner_disconnected")
        else:
            try:
                r.output = await self._output(r, base)
            except _InputError as e:
                r.error = (422, str(e), "invalid_input")
        r.size = len(orjson.dumps(r.output or {}))
        if r.webhook and self.options.webhooks:
            asyncio.get_running_loop().create_task(self._send_webhook(r))

    _self_url = ""

    async def _output(self, r: _Req, base: str) -> dict[str, Any]:
        inp = r.input
        seed = int(inp.get("seed", self.options.seed))
        if r.app in IMAGE_APPS:
            w, h = _size(inp.get("image_size", "landscape_4_3"))
            images = []
            for i in range(int(inp.get("num_images", 1))):
                data = media.png(str(inp["prompt"]) + _lora_tag(inp), seed + i, w, h)
                path = f"{r.id}/{i}.png"
                self.files[path] = (data, "image/png")
                images.append(
                    {"url": f"{base}/files/{path}", "width": w, "height": h, "content_type": "image/png"}
                )
            return {
                "images": images,
                "timings": {"inference": round(r.run_s, 3)},
                "seed": seed,
                "has_nsfw_concepts": [False] * len(images),
                "prompt": inp["prompt"],
            }
        if r.app in VIDEO_APPS:
            data = await asyncio.to_thread(
                media.mp4, str(inp["prompt"]), seed, min(float(inp.get("duration", 1.0)), 4.0)
            )
            path = f"{r.id}/video.mp4"
            self.files[path] = (data, "video/mp4")
            return {
                "video": {
                    "url": f"{base}/files/{path}",
                    "content_type": "video/mp4",
                    "file_name": "video.mp4",
                    "file_size": len(data),
                },
                "seed": seed,
            }
        # the LoRA trainer: fetch and check the archive, then "train"
        archive = await self._fetch(str(inp["images_data_url"]))
        try:
            names = [
                n for n in zipfile.ZipFile(io.BytesIO(archive)).namelist() if n.lower().endswith(_IMAGE_EXT)
            ]
        except zipfile.BadZipFile:
            raise _InputError("images_data_url is not a zip archive") from None
        if len(names) < 4:
            raise _InputError(f"images_data_url holds {len(names)} images; at least 4 are needed")
        sha = hashlib.sha256(archive).hexdigest()
        weights = media.lora_file(str(inp.get("trigger_word", "")), int(inp.get("steps", 1000)), sha)
        config = orjson.dumps(
            {
                "trigger_word": inp.get("trigger_word"),
                "steps": inp.get("steps", 1000),
                "is_style": inp.get("is_style", False),
                "images": len(names),
                "data_sha256": sha,
            }
        )
        self.files[f"{r.id}/pytorch_lora_weights.safetensors"] = (weights, "application/octet-stream")
        self.files[f"{r.id}/config.json"] = (config, "application/json")
        return {
            "diffusers_lora_file": {
                "url": f"{base}/files/{r.id}/pytorch_lora_weights.safetensors",
                "content_type": "application/octet-stream",
                "file_name": "pytorch_lora_weights.safetensors",
                "file_size": len(weights),
            },
            "config_file": {
                "url": f"{base}/files/{r.id}/config.json",
                "content_type": "application/json",
                "file_name": "config.json",
                "file_size": len(config),
            },
        }

    async def _fetch(self, url: str) -> bytes:
        prefix = self._self_url + "/files/"
        if url.startswith(prefix):
            got = self.files.get(url[len(prefix) :])
            if got is None:
                raise _InputError(f"images_data_url {url} not found")
            return got[0]
        assert self._http is not None
        try:
            resp = await self._http.get(url)
        except httpx.HTTPError as e:
            raise _InputError(f"cannot download images_data_url: {e}") from None
        if resp.status_code != 200:
            raise _InputError(f"downloading images_data_url answered {resp.status_code}")
        return resp.content

    async def file(self, request: Request) -> Response:
        await self._delay()
        got = self.files.get(request.path_params["rest"])
        if got is None:
            return JSONResponse({"detail": "File not found"}, 404)
        return Response(got[0], media_type=got[1])

    # --- webhooks ---------------------------------------------------------------------------------
    def sign(self, request_id: str, user_id: str, ts: str, body: bytes) -> str:
        msg = "\n".join([request_id, user_id, ts, hashlib.sha256(body).hexdigest()]).encode()
        return self._key.sign(msg).hex()

    async def _send_webhook(self, r: _Req) -> None:
        assert self._http is not None and r.webhook is not None
        if r.error is None:
            payload: dict[str, Any] = {
                "request_id": r.id,
                "gateway_request_id": r.gateway_id,
                "status": "OK",
                "payload": r.output,
            }
        else:
            payload = {
                "request_id": r.id,
                "gateway_request_id": r.gateway_id,
                "status": "ERROR",
                "error": f"Invalid status code: {r.error[0]}",
                "payload": {"detail": r.error[1]},
            }
        body = orjson.dumps(payload)
        ts = str(int(time.time()))
        sig = self.sign(r.id, "mock-user", ts, body)
        if self.options.bad_webhook_signature:
            sig = ("0" if sig[0] != "0" else "1") + sig[1:]
        headers = {
            "content-type": "application/json",
            "x-fal-webhook-request-id": r.id,
            "x-fal-webhook-user-id": "mock-user",
            "x-fal-webhook-timestamp": ts,
            "x-fal-webhook-signature": sig,
        }
        for _ in range(2 if self.options.duplicate_webhooks else 1):
            for attempt in range(3):  # fal retries; a few quick tries here
                try:
                    resp = await self._http.post(r.webhook, content=body, headers=headers)
                    self.webhook_log.append({"request_id": r.id, "status": resp.status_code})
                    r.webhooks_sent += 1
                    if resp.status_code < 500:
                        break
                except httpx.HTTPError as e:
                    self.webhook_log.append({"request_id": r.id, "error": str(e)})
                await asyncio.sleep(0.2 * (attempt + 1))

    async def jwks(self, request: Request) -> Response:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return JSONResponse(
            {
                "keys": [
                    {
                        "kty": "OKP",
                        "crv": "Ed25519",
                        "x": x,
                        "kid": "mock-fal-1",
                        "use": "sig",
                        "alg": "EdDSA",
                    }
                ]
            }
        )

    # --- storage ----------------------------------------------------------------------------------
    async def cdn_token(self, request: Request) -> Response:
        await self._delay()
        if not request.headers.get("authorization", "").startswith("Key "):
            return JSONResponse({"detail": "Missing authorization header"}, 401)
        denied = self._authorised(request)
        if denied is not None:
            return denied
        token = secrets.token_hex(16)
        self._tokens.add(token)
        expires = datetime.now(UTC) + timedelta(hours=1)
        return JSONResponse(
            {
                "token": token,
                "token_type": "Bearer",
                "base_url": self._base(request),
                "expires_at": expires.isoformat(),
            }
        )

    async def cdn_upload(self, request: Request) -> Response:
        await self._delay()
        denied = self._authorised(request)
        if denied is not None:
            return denied
        data = await request.body()
        name = request.headers.get("x-fal-file-name") or "upload.bin"
        path = f"uploads/{secrets.token_hex(8)}/{quote(name, safe='._-')}"
        self.files[path] = (data, request.headers.get("content-type", "application/octet-stream"))
        return JSONResponse({"access_url": f"{self._base(request)}/files/{path}"})

    async def gcs_initiate(self, request: Request) -> Response:
        await self._delay()
        denied = self._authorised(request)
        if denied is not None:
            return denied
        body = orjson.loads(await request.body() or b"{}")
        name = quote(str(body.get("file_name") or "upload.bin"), safe="._-")
        path = f"uploads/{secrets.token_hex(8)}/{name}"
        return JSONResponse(
            {
                "upload_url": f"{self._base(request)}/_gcs/{path}",
                "file_url": f"{self._base(request)}/files/{path}",
            }
        )

    async def gcs_put(self, request: Request) -> Response:
        self.files[request.path_params["rest"]] = (
            await request.body(),
            request.headers.get("content-type", "application/octet-stream"),
        )
        return Response(b"", 200)

    # --- observing and steering the mock -----------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "submissions": self.submissions,
                "submissions_by_app": self.submissions_by_app,
                "requests": [
                    {
                        "request_id": r.id,
                        "app": r.app,
                        "model": r.model,
                        "state": self._state(r),
                        "cancelled": r.cancelled,
                        "failed": r.error is not None,
                        "webhooks_sent": r.webhooks_sent,
                        "input": r.input,
                        # Wall-clock times (time.time()) it was created and ended (completed, failed or
                        # cancelled; null while in the queue or running): how many ran at once.
                        "submitted_at": r.created_wall,
                        "ended_at": (
                            r.created_wall + (r.done_at - r.created) if r.done_at is not None else None
                        ),
                    }
                    for r in self.requests.values()
                ],
                "webhooks": self.webhook_log,
            }
        )

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.body() or b"{}")
                self.options = FalMockOptions.model_validate({**self.options.model_dump(), **changes})
            except Exception as e:
                return JSONResponse({"detail": f"invalid settings: {e}"}, 400)
        return JSONResponse(self.options.model_dump())


class _InputError(Exception):
    pass


def _size(v: Any) -> tuple[int, int]:
    if isinstance(v, dict):
        return int(v.get("width", 1024)), int(v.get("height", 768))
    return _PRESETS.get(str(v), (1024, 768))


def _lora_tag(inp: dict[str, Any]) -> str:
    loras = inp.get("loras") or []
    return "".join(f"|lora:{lo.get('path')}@{lo.get('scale', 1.0)}" for lo in loras if isinstance(lo, dict))


def _check_input(app: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """fal validates inputs at submit (422, pydantic-style detail); the same for what the mock's models read."""
    if app in IMAGE_APPS | VIDEO_APPS:
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return "prompt", "field required"
    if app in IMAGE_APPS:
        n = body.get("num_images", 1)
        if not isinstance(n, int) or not 1 <= n <= 4:
            return "num_images", "ensure this value is between 1 and 4"
        size = body.get("image_size", "landscape_4_3")
        if isinstance(size, dict):
            w, h = size.get("width"), size.get("height")
            if not (isinstance(w, int) and isinstance(h, int) and 64 <= w <= 4096 and 64 <= h <= 4096):
                return "image_size", "width and height must be integers from 64 to 4096"
        elif size not in _PRESETS:
            return "image_size", f"must be one of {', '.join(_PRESETS)} or {{width, height}}"
    if app in TRAINER_APPS:
        if not isinstance(body.get("images_data_url"), str):
            return "images_data_url", "field required"
        steps = body.get("steps", 1000)
        if not isinstance(steps, int) or not 1 <= steps <= 10_000:
            return "steps", "ensure this value is between 1 and 10000"
    return None


def make_app(options: FalMockOptions, public_url: str) -> FalMock:
    mock = FalMock(options)
    mock._self_url = public_url.rstrip("/")
    return mock


__all__ = ["APPS", "FalMock", "FalMockOptions", "make_app"]
