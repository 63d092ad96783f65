"""GET /health (liveness: no backend calls), GET /health/backends (the router's view), GET /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from hybridgate import __version__
from hybridgate.observability import Metrics
from hybridgate.protocol._control import BackendsHealth, Liveness
from hybridgate.router import BackendManager


def liveness(started_at: float) -> dict[str, Any]:
    return {"status": "ok", "version": __version__, "uptime_s": round(time.time() - started_at, 1)}


def backends(manager: BackendManager) -> dict[str, Any]:
    snaps = [s.snapshot() for s in list(manager.states.values())]
    return {"status": "ok" if any(s["routable"] for s in snaps) else "degraded", "backends": snaps}


def router(
    manager: BackendManager,
    started_at: Callable[[], float],
    metrics: Metrics,
    may_see_keys: Callable[[str | None], bool],
) -> APIRouter:
    """`may_see_keys(authorization)`: whether this caller may see the per-key series of /metrics."""
    r = APIRouter(tags=["health"])

    @r.get("/health", response_model=Liveness, summary="Liveness: the process answers (no backend is called)")
    async def health() -> dict[str, Any]:
        return liveness(started_at())

    @r.get(
        "/health/backends",
        response_model=BackendsHealth,
        summary="Each backend's lifecycle, health, load and why it is not routable",
    )
    async def health_backends() -> dict[str, Any]:
        return backends(manager)

    @r.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics (per-key series only for the master key or the metrics token)",
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus(request: Request) -> Response:
        per_key = may_see_keys(request.headers.get("authorization"))
        return Response(
            metrics.render(per_key=per_key), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return r


__all__ = ["backends", "liveness", "router"]
