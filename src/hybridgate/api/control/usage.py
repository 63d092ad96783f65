"""GET /v1/usage: what a key has spent (the master key, or an open gateway, sees every key)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request

from hybridgate.auth import Principal
from hybridgate.ledger import GROUPS, Ledger, usage_report
from hybridgate.protocol import BadRequestError
from hybridgate.protocol._control import ErrorResponse, UsageReport
from hybridgate.store import parse_time


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def parse_params(query: bytes) -> tuple[str, float | None, float | None]:
    """group_by, from and to from the query string; a bad one is a 400 naming it."""
    params = parse_qs(query.decode("latin-1"), keep_blank_values=True)
    unknown = sorted(set(params) - {"from", "to", "group_by"})
    if unknown:
        raise BadRequestError(
            f"Unknown query parameter '{unknown[0]}'; /v1/usage takes from, to and group_by.",
            param=unknown[0],
        )
    group_by = _one(params, "group_by") or "model"
    if group_by not in GROUPS:
        raise BadRequestError(
            f"group_by must be one of {', '.join(GROUPS)}, not '{group_by}'.", param="group_by"
        )
    bounds: list[float | None] = []
    for name in ("from", "to"):
        raw = _one(params, name)
        if raw is None or raw == "":
            bounds.append(None)
            continue
        try:
            bounds.append(parse_time(raw))
        except ValueError as e:
            raise BadRequestError(f"{name}: {e}.", param=name) from None
    since, until = bounds
    if since is not None and until is not None and until <= since:
        raise BadRequestError("to must be later than from.", param="to")
    return group_by, since, until


def router(ledger: Ledger, principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["usage"])

    @r.get(
        "/usage",
        response_model=UsageReport,
        response_model_exclude_unset=True,
        summary="Requests, usage units and cost, grouped; a key sees only its own",
        responses={400: {"model": ErrorResponse}},
    )
    async def usage(
        request: Request,
        p: Principal = Depends(principal),
        group_by: str | None = Query(None, description=f"One of {', '.join(GROUPS)} (default: model)"),
        from_: str | None = Query(
            None, alias="from", description="Start: a date, datetime, epoch seconds, or a duration ago (7d)"
        ),
        to: str | None = Query(None, description="End (exclusive), in the same forms"),
    ) -> dict[str, Any]:
        # The declared parameters document the route; the raw query is parsed once, strictly, here.
        group, since, until = parse_params(request.scope.get("query_string", b""))
        # A key sees only its own rows; the master key and the anonymous caller of an open gateway see all.
        await ledger.flush()  # so the report includes calls that finished a moment ago
        return await usage_report(ledger.store, group_by=group, since=since, until=until, key_id=p.key_id)

    return r


__all__ = ["parse_params", "router"]
