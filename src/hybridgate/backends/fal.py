"""The `fal` kind: fal.ai's queue API (submit, status with logs, result, cancel, storage upload, webhooks).

Our own small httpx client, not the `fal-client` SDK, because the SDK re-sends a submit on its own: its
`_maybe_retry_request` retries every queue call, the POST that creates billed work included, on 408/409/429,
on timeouts and on transport errors (measured: a submit answered slower than the client's timeout created
two jobs at the server, and the caller only ever saw the second id). Here a submit is one POST, never
repeated: a connection that could not be opened is a clean failure (the router may fall back); a timeout or
a broken connection after the request was written is `SubmitOutcomeUnknownError` (never re-sent). Status,
result, cancel and downloads are read-only or idempotent and are retried a few times.

Config:

    - name: fal
      kind: fal
      api_key: ${FAL_KEY}
      base_url: https://queue.fal.run          # the queue host (the default)
      models: {flux-schnell: fal-ai/flux/schnell, lora-trainer: fal-ai/flux-lora-fast-training}
      price: {per_image: 0.003, per_step: 0.002}   # images; LoRA training per step
      options: {rest_url: https://rest.fal.ai, cdn_url: https://v3.fal.media,
                jwks_url: https://rest.alpha.fal.ai/.well-known/jwks.json}
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from hybridgate.backends._base import (
    BackendConnectError,
    BackendError,
    BackendHTTPError,
)
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

DEFAULT_QUEUE = "https://queue.fal.run"
_SIZES = {"square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"}


class FalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rest_url: str = "https://rest.fal.ai"
    cdn_url: str = "https://v3.fal.media"
    # fal's published ED25519 webhook keys (a JWKS); cached for jwks_ttl_s.
    jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    jwks_ttl_s: float = Field(3600.0, gt=0)
    # A webhook whose timestamp is further than this from our clock is refused (replays).
    webhook_tolerance_s: float = Field(300.0, gt=0)
    # How long a submit may take to be answered (it is never re-sent; past this its outcome is unknown).
    submit_timeout_s: float = Field(60.0, gt=0)
    # Sent as X-Fal-Store-IO: 0 keeps fal from storing inputs and outputs (we copy them anyway).
    store_io: bool = True


def _fal_error(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300] or f"HTTP {r.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail or body)[:500]


class FalBackend(GenerationBackend):
    Options: ClassVar[type[BaseModel]] = FalOptions
    free_health_checks: ClassVar[bool] = False  # a paid hosted API: health comes from real calls

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.options: FalOptions
        self.queue_url = (config.base_url or DEFAULT_QUEUE).rstrip("/")
        self.api_key = config.api_key or os.environ.get("FAL_KEY") or ""
        self._client: httpx.AsyncClient | None = None
        self._jwks: tuple[float, list[bytes]] = (0.0, [])
        self._cdn_token: tuple[float, str] | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            t = self.config.timeouts
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(t.answer, connect=t.connect_s),
                headers={"User-Agent": "hybridgate-fal"},
                follow_redirects=True,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _auth(self) -> dict[str, str]:
        if not self.api_key:
            raise BackendHTTPError(
                f"backend '{self.name}': no fal key (set api_key in its config, or FAL_KEY)", status=401
            )
        return {"Authorization": f"Key {self.api_key}"}

    async def check_health(self) -> None:
        try:
            await self.client.get(self.queue_url + "/", timeout=self.config.health.timeout_s)
        except httpx.HTTPError as e:
            raise BackendConnectError(f"fal queue {self.queue_url} unreachable: {type(e).__name__}") from None

    # --- inputs ---------------------------------------------------------------------------------
    def provider_input(self, operation: str, model: str, job_input: dict[str, Any]) -> dict[str, Any]:
        if operation == Operation.IMAGE_GENERATION:
            args: dict[str, Any] = {"prompt": job_input["prompt"], "num_images": job_input.get("n", 1)}
            size = job_input.get("size")
            if size:
                if size in _SIZES:
                    args["image_size"] = size
                elif "x" in size:
                    w, h = (int(x) for x in size.split("x"))
                    args["image_size"] = {"width": w, "height": h}
                else:
                    raise ValueError(f"size '{size}': use WIDTHxHEIGHT or one of {', '.join(sorted(_SIZES))}")
            if job_input.get("seed") is not None:
                args["seed"] = job_input["seed"]
            if job_input.get("steps") is not None:
                args["num_inference_steps"] = job_input["steps"]
            loras = job_input.get("loras") or []
            if loras:
                args["loras"] = [{"path": lo["url"], "scale": lo.get("scale", 1.0)} for lo in loras]
                triggers = [lo["trigger_word"] for lo in loras if lo.get("trigger_word")]
                missing = [t for t in triggers if t not in args["prompt"]]
                if missing:
                    args["prompt"] = " ".join([*missing, args["prompt"]])
            return args
        if operation == Operation.VIDEO_GENERATION:
            args = {"prompt": job_input["prompt"], "duration": job_input.get("duration_s", 2.0)}
            for k in ("seed", "image_url"):
                if job_input.get(k) is not None:
                    args[k] = job_input[k]
            return args
        if operation == Operation.LORA_TRAINING:
            if not job_input.get("images_data_url"):
                raise ValueError("the training archive was not prepared (images_data_url missing)")
            args = {
                "images_data_url": job_input["images_data_url"],
                "steps": job_input.get("steps", 1000),
                "is_style": job_input.get("is_style", False),
            }
            if job_input.get("trigger_word"):
                args["trigger_word"] = job_input["trigger_word"]
            return args
        raise ValueError(f"fal backends do not run {operation}")

    # --- the queue ------------------------------------------------------------------------------
    async def submit(
        self, model: str, arguments: dict[str, Any], *, job_id: str, webhook_url: str | None
    ) -> Submitted:
        url = f"{self.queue_url}/{model}"
        if webhook_url:
            url += "?fal_webhook=" + quote(webhook_url, safe="")
        headers = self._auth()
        if not self.options.store_io:
            headers["X-Fal-Store-IO"] = "0"
        timeout = httpx.Timeout(self.options.submit_timeout_s, connect=self.config.timeouts.connect_s)
        try:
            r = await self.client.post(url, json=arguments, headers=headers, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise BackendConnectError(f"cannot reach {self.queue_url}: {type(e).__name__}: {e}") from None
        except httpx.HTTPError as e:
            raise SubmitOutcomeUnknownError(
                f"the submit to {model} was sent but not answered ({type(e).__name__}); it may be running "
                "at fal, so it was not sent again"
            ) from None
        if r.status_code >= 400:
            raise BackendHTTPError(f"fal answered {r.status_code}: {_fal_error(r)}", status=r.status_code)
        try:
            body = r.json()
            request_id = str(body["request_id"])
        except (ValueError, KeyError, TypeError):
            raise SubmitOutcomeUnknownError(
                f"fal accepted the submit ({r.status_code}) but its answer has no request_id: {r.text[:200]}"
            ) from None
        data = {
            k: body[k]
            for k in ("status_url", "response_url", "cancel_url", "gateway_request_id", "queue_position")
            if body.get(k) is not None
        }
        return Submitted(request_id, data)

    def _url(self, model: str, ref: Submitted, which: str) -> str:
        given = ref.data.get(f"{which}_url")
        if given:
            return str(given)
        owner_app = "/".join(model.split("/")[:2])  # by-id URLs drop the sub-path (fal-ai/flux/schnell)
        base = f"{self.queue_url}/{owner_app}/requests/{ref.request_id}"
        return {"status": base + "/status", "response": base, "cancel": base + "/cancel"}[which]

    async def _get(self, url: str, **kw: Any) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(3):
            try:
                return await self.client.get(url, headers=self._auth(), **kw)
            except httpx.HTTPError as e:
                last = e
                await asyncio.sleep(0.2 * (attempt + 1))
        raise BackendConnectError(f"fal {url}: {type(last).__name__}: {last}")

    async def status(self, model: str, ref: Submitted, *, logs: bool = True) -> ProviderStatus:
        r = await self._get(self._url(model, ref, "status"), params={"logs": "1" if logs else "0"})
        if r.status_code == 404:
            raise ResultGoneError(f"fal does not know request {ref.request_id} (expired or never existed)")
        if r.status_code >= 400:
            raise BackendHTTPError(f"fal status {r.status_code}: {_fal_error(r)}", status=r.status_code)
        body = r.json()
        s = body.get("status")
        if s == "IN_QUEUE":
            return ProviderStatus("queued", queue_position=body.get("queue_position"))
        if s == "IN_PROGRESS":
            return ProviderStatus("running", logs=list(body.get("logs") or []))
        if s == "COMPLETED":
            return ProviderStatus(
                "completed",
                logs=list(body.get("logs") or []),
                error=body.get("error"),
                error_type=body.get("error_type"),
                metrics=dict(body.get("metrics") or {}),
            )
        raise BackendError(f"fal status answered an unknown status {s!r}")

    async def result(self, model: str, ref: Submitted) -> dict[str, Any]:
        r = await self._get(self._url(model, ref, "response"))
        if r.status_code == 404:
            raise ResultGoneError(
                f"fal no longer has the result of {ref.request_id} (fal keeps results 1 hour, 6 minutes when "
                "10 KB or larger)"
            )
        if r.status_code >= 400:
            raise BackendHTTPError(f"fal result {r.status_code}: {_fal_error(r)}", status=r.status_code)
        out = r.json()
        if not isinstance(out, dict):
            raise BackendError("fal result is not a JSON object")
        return out

    async def cancel(self, model: str, ref: Submitted) -> str:
        try:
            r = await self.client.put(self._url(model, ref, "cancel"), headers=self._auth())
        except httpx.HTTPError as e:
            raise BackendConnectError(f"fal cancel: {type(e).__name__}: {e}") from None
        try:
            return str(r.json().get("status", r.status_code))
        except ValueError:
            return str(r.status_code)

    # --- results --------------------------------------------------------------------------------
    def media(self, operation: str, result: dict[str, Any]) -> list[Media]:
        def one(role: str, f: Any) -> Media | None:
            if isinstance(f, dict) and isinstance(f.get("url"), str):
                return Media(role, f["url"], f.get("content_type"), f.get("file_name"))
            return None

        out: list[Media | None] = []
        if operation == Operation.IMAGE_GENERATION:
            out = [one("image", f) for f in result.get("images") or []]
        elif operation == Operation.VIDEO_GENERATION:
            out = [one("video", result.get("video"))]
        elif operation == Operation.LORA_TRAINING:
            out = [
                one("lora_weights", result.get("diffusers_lora_file")),
                one("lora_config", result.get("config_file")),
            ]
        return [m for m in out if m is not None]

    def usage(
        self,
        operation: str,
        job_input: dict[str, Any],
        result: dict[str, Any] | None,
        status: ProviderStatus | None,
        seconds: float,
    ) -> Usage:
        if operation == Operation.IMAGE_GENERATION and result is not None:
            return Usage(images=len(result.get("images") or []), requests=1)
        if operation == Operation.LORA_TRAINING and result is not None:
            # fal bills a training by the steps it was asked to run (sent as `steps`; 1000 by default).
            return Usage(training_steps=int(job_input.get("steps", 1000)), requests=1)
        return Usage(requests=1)

    async def download(self, url: str) -> AsyncIterator[bytes]:
        try:
            async with self.client.stream("GET", url, timeout=httpx.Timeout(300, connect=10)) as r:
                if r.status_code in (404, 410):
                    raise ResultGoneError(f"the file {url} is gone at the provider ({r.status_code})")
                if r.status_code >= 400:
                    raise BackendHTTPError(f"downloading {url}: HTTP {r.status_code}", status=r.status_code)
                async for chunk in r.aiter_bytes(256 * 1024):
                    yield chunk
        except httpx.HTTPError as e:
            raise BackendConnectError(f"downloading {url}: {type(e).__name__}: {e}") from None

    async def upload(self, data: bytes, content_type: str, file_name: str) -> str:
        """fal's storage: a CDN token (cached until it expires), then the bytes to {cdn}/files/upload."""
        now = time.time()
        if self._cdn_token is None or self._cdn_token[0] <= now + 30:
            r = await self.client.post(
                f"{self.options.rest_url}/storage/auth/token",
                params={"storage_type": "fal-cdn-v3"},
                json={},
                headers=self._auth(),
            )
            if r.status_code >= 400:
                raise BackendHTTPError(f"fal storage token: {_fal_error(r)}", status=r.status_code)
            tok = r.json()
            from datetime import datetime

            expires = datetime.fromisoformat(str(tok["expires_at"]).replace("Z", "+00:00")).timestamp()
            self._cdn_token = (expires, f"{tok.get('token_type', 'Bearer')} {tok['token']}")
        r = await self.client.post(
            f"{self.options.cdn_url}/files/upload",
            content=data,
            headers={
                "Authorization": self._cdn_token[1],
                "Content-Type": content_type,
                "X-Fal-File-Name": file_name,
            },
            timeout=httpx.Timeout(600, connect=10),
        )
        if r.status_code >= 400:
            raise BackendHTTPError(f"fal upload: {_fal_error(r)}", status=r.status_code)
        return str(r.json()["access_url"])

    # --- webhooks -------------------------------------------------------------------------------
    def _keys(self) -> list[bytes]:
        fetched, keys = self._jwks
        if keys and time.time() - fetched < self.options.jwks_ttl_s:
            return keys
        r = httpx.get(self.options.jwks_url, timeout=10)
        r.raise_for_status()
        keys = []
        for k in r.json().get("keys", []):
            if k.get("kty") == "OKP" and k.get("crv") == "Ed25519" and k.get("x"):
                x = k["x"]
                keys.append(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
        self._jwks = (time.time(), keys)
        return keys

    def verify_webhook(self, headers: dict[str, str], body: bytes) -> Any:
        """fal's signature: ED25519 over request_id, user_id, timestamp and sha256(body), one per line,
        by any key of the published JWKS. Returns the request id; ValueError saying why not."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        h = {k.lower(): v for k, v in headers.items()}
        names = (
            "x-fal-webhook-request-id",
            "x-fal-webhook-user-id",
            "x-fal-webhook-timestamp",
            "x-fal-webhook-signature",
        )
        missing = [n for n in names if not h.get(n)]
        if missing:
            raise ValueError(f"missing header(s) {', '.join(missing)}")
        request_id, user_id, ts, sig_hex = (h[n] for n in names)
        try:
            when = int(ts)
            sig = bytes.fromhex(sig_hex)
        except ValueError:
            raise ValueError("malformed timestamp or signature") from None
        if abs(time.time() - when) > self.options.webhook_tolerance_s:
            raise ValueError("timestamp outside the accepted window")
        message = "\n".join([request_id, user_id, ts, hashlib.sha256(body).hexdigest()]).encode()
        try:
            keys = self._keys()
        except httpx.HTTPError as e:
            raise ValueError(f"cannot fetch the signing keys from {self.options.jwks_url}: {e}") from None
        for raw in keys:
            try:
                Ed25519PublicKey.from_public_bytes(raw).verify(sig, message)
                return request_id
            except (InvalidSignature, ValueError):
                continue
        raise ValueError("signature does not verify against any published key")


__all__ = ["FalBackend", "FalOptions"]
