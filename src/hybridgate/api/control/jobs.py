"""/v1/jobs: durable generation jobs (images, videos, LoRA training), their events, and providers' webhooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from starlette.responses import Response, StreamingResponse

from hybridgate.auth import Principal
from hybridgate.jobs import JobCreate, JobEngine
from hybridgate.jobs._models import Job, JobList
from hybridgate.protocol import BadRequestError, NotFoundError
from hybridgate.protocol._control import ErrorResponse

_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
_TYPES = ("image_generation", "video_generation", "lora_training")

_EXAMPLE = {
    "type": "image_generation",
    "model": "flux-schnell",
    "input": {"prompt": "a lighthouse at dawn, watercolour", "n": 1, "size": "1024x768", "seed": 7},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    why = {
        400: "Invalid request (the message names the field)",
        403: "Model not allowed for this key, or its cost is unknown",
        404: "No such job for this key, or unknown model",
        409: "Idempotency-Key reused for a different request",
        429: "The key's budget cannot cover the job's worst-case cost (budget_exceeded)",
    }
    return {c: {"model": ErrorResponse, "description": why[c]} for c in codes}


def parse_list_query(query: bytes) -> tuple[str | None, str | None, int, str | None]:
    params = parse_qs(query.decode("latin-1"), keep_blank_values=True)
    unknown = sorted(set(params) - {"status", "type", "limit", "after"})
    if unknown:
        raise BadRequestError(
            f"Unknown query parameter '{unknown[0]}'; /v1/jobs takes status, type, limit and after.",
            param=unknown[0],
        )

    def one(name: str) -> str | None:
        v = params.get(name)
        return v[-1] if v and v[-1] != "" else None

    status, type_, after = one("status"), one("type"), one("after")
    if status is not None and status not in _STATUSES:
        raise BadRequestError(
            f"status must be one of {', '.join(_STATUSES)}, not '{status}'.", param="status"
        )
    if type_ is not None and type_ not in _TYPES:
        raise BadRequestError(f"type must be one of {', '.join(_TYPES)}, not '{type_}'.", param="type")
    raw = one("limit")
    limit = 20
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            raise BadRequestError(
                f"limit must be a whole number from 1 to 100, not '{raw}'.", param="limit"
            ) from None
        if not 1 <= limit <= 100:
            raise BadRequestError(f"limit must be from 1 to 100, not {limit}.", param="limit")
    if after is not None and len(after) > 40:
        raise BadRequestError("after must be a job id.", param="after")
    return status, type_, limit, after


def router(engine: Callable[[], JobEngine], principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["jobs"])

    @r.post(
        "/jobs",
        response_model=Job,
        summary="Start a durable job: image_generation, video_generation or lora_training",
        description=(
            "The job is recorded before this answers and runs in the gateway's workers: routed to a generation "
            "backend by priority and health, its worst-case cost reserved against the key's budget, its "
            "results copied into the gateway's storage. With an `Idempotency-Key` header a retried request "
            "returns the job the first one made."
        ),
        responses=_errors(400, 403, 404, 409, 429),
    )
    async def create(
        body: JobCreate = Body(..., openapi_examples={"image": {"value": _EXAMPLE}}),
        idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
        p: Principal = Depends(principal),
    ) -> dict[str, Any]:
        return await engine().create(p, body, idempotency_key)

    @r.get(
        "/jobs",
        response_model=JobList,
        summary="List jobs, newest first; a key sees only its own",
        responses=_errors(400),
    )
    async def list_jobs(
        request: Request,
        status: str | None = Query(None, description=f"One of {', '.join(_STATUSES)}"),
        type: str | None = Query(None, description=f"One of {', '.join(_TYPES)}"),
        limit: int | None = Query(None, description="1 to 100 (default 20)"),
        after: str | None = Query(None, description="A job id: the page after it (next_after)"),
        p: Principal = Depends(principal),
    ) -> dict[str, Any]:
        s, t, lim, a = parse_list_query(request.scope.get("query_string", b""))
        return await engine().list_jobs(p, status=s, type_=t, limit=lim, after=a)

    @r.get(
        "/jobs/{job_id}",
        response_model=Job,
        summary="A job: status, progress, logs, cost, artifacts",
        responses=_errors(404),
    )
    async def get(job_id: str = Path(max_length=200), p: Principal = Depends(principal)) -> dict[str, Any]:
        return await engine().get(p, job_id)

    @r.post(
        "/jobs/{job_id}/cancel",
        response_model=Job,
        summary="Cancel a job (at the provider too); an ended job is returned unchanged",
        responses=_errors(404),
    )
    async def cancel(job_id: str = Path(max_length=200), p: Principal = Depends(principal)) -> dict[str, Any]:
        return await engine().cancel(p, job_id)

    @r.get(
        "/jobs/{job_id}/events",
        summary="Server-sent events as the job moves (queued, running, progress, artifact, succeeded...)",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "An event stream; the last event is the job's end (succeeded, failed or cancelled)",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_errors(400, 404),
        },
    )
    async def events(
        job_id: str = Path(max_length=200),
        last_event_id: str | None = Header(None, alias="Last-Event-ID"),
        p: Principal = Depends(principal),
    ) -> StreamingResponse:
        after = 0
        if last_event_id:
            try:
                after = int(last_event_id)
            except ValueError:
                raise BadRequestError(
                    "Last-Event-ID must be an event id (a whole number).", param="Last-Event-ID"
                ) from None
        eng = engine()
        await eng.get(p, job_id)  # 404 before the stream starts
        return StreamingResponse(
            eng.event_stream(p, job_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @r.post(
        "/jobs/webhooks/{backend}",
        summary="For providers: a signed notice that a request ended (verified, then the job looks itself)",
        status_code=200,
        responses={
            401: {"model": ErrorResponse, "description": "Signature missing or invalid"},
            404: {"model": ErrorResponse, "description": "Unknown backend"},
        },
    )
    async def provider_webhook(request: Request, backend: str = Path(max_length=200)) -> Response:
        body = await request.body()
        if len(body) > 10 * 1024 * 1024:
            raise BadRequestError("Webhook body too large.")
        job = await engine().provider_webhook(backend, dict(request.headers), body)
        return Response(b'{"ok":true,"job":"%s"}' % job.encode(), media_type="application/json")

    return r


def not_enabled() -> JobEngine:
    raise NotFoundError("Jobs are turned off on this gateway (jobs.enabled: false).", code="jobs_disabled")


__all__ = ["not_enabled", "parse_list_query", "router"]
