"""GET /v1/models and GET /v1/models/{id}: the public model names a caller may use (OpenAI's shapes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends

from hybridgate.auth import Principal
from hybridgate.protocol import ModelNotFoundError
from hybridgate.protocol._control import ErrorResponse, ModelCard, ModelList
from hybridgate.router import BackendManager


def router(
    manager: BackendManager, started_at: Callable[[], float], principal: Callable[..., Awaitable[Principal]]
) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["models"])

    def card(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": int(started_at()), "owned_by": "hybridgate"}

    def visible(p: Principal) -> list[str]:
        allowed = p.allowed_models
        return [m for m in manager.models() if not allowed or m in allowed]

    @r.get("/models", response_model=ModelList, summary="The models this key may use")
    async def list_models(p: Principal = Depends(principal)) -> dict[str, Any]:
        return {"object": "list", "data": [card(m) for m in visible(p)]}

    @r.get(
        "/models/{model_id:path}",
        response_model=ModelCard,
        summary="One model (the openai SDK's models.retrieve)",
        responses={
            404: {"model": ErrorResponse, "description": "No such model, or not one this key may use"}
        },
    )
    async def retrieve_model(model_id: str, p: Principal = Depends(principal)) -> dict[str, Any]:
        if model_id not in visible(p):
            raise ModelNotFoundError(
                f"The model '{model_id}' does not exist on this gateway"
                + (
                    ""
                    if p.allowed_models
                    else f"; available models: {', '.join(manager.models()) or '(none)'}"
                )
                + ".",
                param="model",
            )
        return card(model_id)

    return r


__all__ = ["router"]
