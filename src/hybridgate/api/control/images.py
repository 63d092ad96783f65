"""POST /v1/images/generations: OpenAI's image API on top of a durable image job.

The request becomes an `image_generation` job (so it is routed, budgeted, kept and survives a restart like any
job); the answer waits for it up to `jobs.images_wait_s`. Done in time: OpenAI's `{created, data: [{url} or
{b64_json}]}`, the URLs signed links to this gateway's own storage, never the provider's. Past the bound: 202
with the job (`id`, `status`), to follow at /v1/jobs/{id}.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from hybridgate.auth import Principal
from hybridgate.jobs import JobCreate, JobEngine
from hybridgate.protocol import GatewayError
from hybridgate.protocol._control import ErrorResponse


class ImageRequest(BaseModel):
    """OpenAI's body; `quality`, `style`, `user` and the like are accepted and not used."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, max_length=10_000)
    n: int = Field(1, ge=1, le=4)
    size: str | None = Field(None, pattern=r"^(auto|\d{2,5}x\d{2,5})$")
    response_format: Literal["url", "b64_json"] = "url"
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="hybridgate extension: a fixed seed")


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class JobAccepted(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: str
    message: str


class ProviderFailedError(GatewayError):
    status = 502
    type = "server_error"
    code = "generation_failed"


def router(engine: Callable[[], JobEngine], principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["images"])

    @r.post(
        "/images/generations",
        response_model=ImagesResponse,
        response_model_exclude_none=True,
        summary="OpenAI-compatible image generation (a durable job, waited for up to a bound)",
        responses={
            202: {
                "model": JobAccepted,
                "description": "Still running after jobs.images_wait_s: follow the job",
            },
            400: {"model": ErrorResponse, "description": "Invalid request"},
            404: {"model": ErrorResponse, "description": "Unknown model"},
            429: {"model": ErrorResponse, "description": "Budget exceeded"},
            502: {"model": ErrorResponse, "description": "The provider failed to generate"},
        },
    )
    async def generate(
        body: ImageRequest,
        request: Request,
        idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
        p: Principal = Depends(principal),
    ) -> Any:
        eng = engine()
        job_input: dict[str, Any] = {"prompt": body.prompt, "n": body.n}
        if body.size and body.size != "auto":
            job_input["size"] = body.size
        if body.seed is not None:
            job_input["seed"] = body.seed
        job = await eng.create(
            p, JobCreate(type="image_generation", model=body.model, input=job_input), idempotency_key
        )
        row = await eng.wait_for(job["id"], eng.config.images_wait_s)
        if row.status == "succeeded":
            base = eng.config.public_url or str(request.base_url).rstrip("/")
            data = []
            for a in [a for a in eng.artifact_list(row) if a["role"] == "image"]:
                if body.response_format == "b64_json":
                    raw = await eng.storage.get(a["key"])
                    data.append({"b64_json": base64.b64encode(raw).decode(), "revised_prompt": body.prompt})
                else:
                    data.append({"url": base + eng.signer.path(a["key"]), "revised_prompt": body.prompt})
            return {"created": int(row.finished_at or time.time()), "data": data}
        if row.status in ("failed", "cancelled"):
            err = eng.render(row)["error"] or {}
            raise ProviderFailedError(
                f"Job {row.id} {row.status}: {err.get('message', 'no reason given')}",
                extra={"job_id": row.id},
            )
        return JSONResponse(
            {
                "id": row.id,
                "object": "job",
                "status": row.status,
                "message": f"Still {row.status} after {eng.config.images_wait_s:g}s; follow GET /v1/jobs/{row.id}.",
            },
            status_code=202,
            headers={"Location": f"/v1/jobs/{row.id}"},
        )

    return r


__all__ = ["router"]
