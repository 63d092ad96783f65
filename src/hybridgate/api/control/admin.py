"""/admin/keys: list, create and revoke API keys over HTTP, with the master key only.

GET /admin/keys, POST /admin/keys, GET /admin/keys/{id}, DELETE /admin/keys/{id} (revokes; the row stays
for the ledger), POST /admin/keys/{id}/revoke. Changes take effect in this process at once and in other
processes sharing the database within the key cache's TTL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request

from hybridgate.auth import KeyCache, KeyNameTaken, KeySpec, KeySpecError, KeyStore, parse_spec
from hybridgate.protocol import BadRequestError, GatewayError, NotFoundError, PayloadTooLargeError
from hybridgate.protocol._control import ApiKey, ApiKeyList, ErrorResponse, NewApiKey

_MAX_BODY = 64 * 1024
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No or a wrong master key"},
    403: {
        "model": ErrorResponse,
        "description": "An API key instead of the master key, or no master key set",
    },
}


class NameTakenError(GatewayError):
    """409: an active key already has the name asked for."""

    status = 409
    type = "invalid_request_error"
    code = "key_name_taken"


def _no_key(key_id: str) -> NotFoundError:
    return NotFoundError(f"No API key with id '{key_id}'; GET /admin/keys lists them.", param="id")


def router(
    keys: KeyStore, cache: KeyCache, models: Callable[[], list[str]], master: Callable[..., Awaitable[None]]
) -> APIRouter:
    r = APIRouter(prefix="/admin/keys", tags=["admin"], dependencies=[Depends(master)], responses=_ERRORS)
    not_found: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}

    @r.get("", response_model=ApiKeyList, summary="Every API key (never the secrets)")
    async def list_keys() -> dict[str, Any]:
        return {"object": "list", "data": [k.public() for k in await keys.all()]}

    @r.post(
        "",
        status_code=201,
        response_model=NewApiKey,
        summary="Create an API key; the answer holds its secret, shown this once",
        responses={
            400: {"model": ErrorResponse},
            409: {"model": ErrorResponse, "description": "An active key already has this name"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": KeySpec.model_json_schema(by_alias=False)}},
            }
        },
    )
    async def create_key(request: Request) -> dict[str, Any]:
        # Read and validated here, not by FastAPI, so every bad field is a 400 naming it, as the CLI says it.
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            raise PayloadTooLargeError(f"Request body exceeds the limit of {_MAX_BODY} bytes.")
        try:
            data = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as e:
            raise BadRequestError(f"The body is not valid JSON: {e}.") from None
        try:
            spec = parse_spec(data)
            spec.check_models(models())
            spec.expiry()
        except KeySpecError as e:
            raise BadRequestError(e.message, param=e.field) from None
        try:
            new = await keys.create_spec(spec)
        except KeyNameTaken as e:
            raise NameTakenError(e.message, param=e.field) from None
        cache.put(new.record)  # usable on this gateway at once
        return {**new.record.public(), "key": new.secret}

    @r.get("/{key_id}", response_model=ApiKey, summary="One API key", responses=not_found)
    async def get_key(key_id: str) -> dict[str, Any]:
        rec = await keys.get(key_id)
        if rec is None:
            raise _no_key(key_id)
        return rec.public()

    async def revoke(key_id: str) -> dict[str, Any]:
        rec = await keys.revoke(key_id)
        if rec is None:
            raise _no_key(key_id)
        cache.put(rec)
        return rec.public()

    r.add_api_route(
        "/{key_id}",
        revoke,
        methods=["DELETE"],
        response_model=ApiKey,
        summary="Revoke an API key (its ledger rows stay)",
        responses=not_found,
    )
    r.add_api_route(
        "/{key_id}/revoke",
        revoke,
        methods=["POST"],
        response_model=ApiKey,
        summary="Revoke an API key (the same as DELETE)",
        responses=not_found,
        operation_id="revoke_key_post",
    )
    return r


__all__ = ["router"]
