"""/v1/loras: the LoRAs a key has trained (through lora_training jobs), each with its versions and files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Path

from hybridgate.auth import Principal
from hybridgate.jobs import JobEngine
from hybridgate.protocol._control import ErrorResponse


def router(engine: Callable[[], JobEngine], principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["loras"])

    @r.get("/loras", summary="Trained LoRAs: name, number of versions, the newest version")
    async def list_loras(p: Principal = Depends(principal)) -> dict[str, Any]:
        return await engine().list_loras(p)

    @r.get(
        "/loras/{name}",
        summary="One LoRA's versions: trigger word, steps, sha256 and signed links to its files",
        responses={404: {"model": ErrorResponse, "description": "No LoRA of that name for this key"}},
    )
    async def get_lora(name: str = Path(max_length=100), p: Principal = Depends(principal)) -> dict[str, Any]:
        return await engine().get_lora(p, name)

    return r


__all__ = ["router"]
