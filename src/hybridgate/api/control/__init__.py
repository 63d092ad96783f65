"""The control plane: one FastAPI app for every route but the two hot ones, documented at /docs.

The hot dispatcher (`api/app.py`) answers POST /v1/chat/completions and /v1/completions itself and hands
every other request here, so /v1/* paths stay where the OpenAI SDK expects them. One router module per
group; each gets the components it needs, nothing global.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.routing import Route

from hybridgate import __version__
from hybridgate._asgi import Receive, Scope, Send
from hybridgate.api.control import (
    _deps,
    _docs,
    _errors,
    admin,
    files,
    health,
    images,
    jobs,
    loras,
    models,
    pods,
    root,
    tinker,
    training,
    usage,
)
from hybridgate.auth import KeyStore
from hybridgate.protocol import ChatCompletionRequest, CompletionRequest
from hybridgate.protocol._control import ErrorResponse

if TYPE_CHECKING:
    from hybridgate.api.app import Gateway

DESCRIPTION = """\
A self-hosted, OpenAI-compatible AI gateway. Point the official `openai` client at `/v1` with an API key.

The two inference routes (`POST /v1/chat/completions`, `POST /v1/completions`) take OpenAI's request
bodies; their answers carry `x-hybridgate-backend`, `x-hybridgate-attempts` and `x-hybridgate-cost-usd`.
Every error, on every route, is `{"error": {"message", "type", "param", "code"}}`.
"""

# One server-sent event of a streamed answer. OpenAPI 3.1 has no `itemSchema` (3.2 has), so tools such as
# schemathesis read an event stream's `schema` as each event's, parsed into these fields.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One event: `data` is a JSON chunk; the last event's is `[DONE]`",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}

# The hot routes: answered by the raw-ASGI dispatcher before this app; listed here for 405s and the docs.
HOT: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


class _HotAnchor:
    """Routes the hot paths in this app too, so another method on them is a 405 with Allow: POST.

    A POST never gets here (the dispatcher takes it first); if one did, it is handed to the hot handler.
    """

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gw.hot(scope, receive, send)


def build(gw: Gateway) -> FastAPI:
    """The control-plane app for one gateway."""
    app = FastAPI(
        title="hybridgate",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # served by _docs, from local files: no CDN
        redoc_url=None,
        redirect_slashes=False,  # the dispatcher strips a trailing slash before routing
    )
    known = (
        "/v1/chat/completions, /v1/completions, /v1/models, /v1/usage, /v1/jobs, /v1/images/generations, "
        "/v1/loras, /v1/files, /v1/training/runs, /tinker/api/v1, /health, /admin/keys"
    )
    _errors.install(app, known)
    principal = _deps.caller(gw.auth)
    master = _deps.master(gw.auth, gw.keys)
    app.include_router(health.router(gw.manager, lambda: gw.started_at, gw.metrics, gw.may_see_keys))
    app.include_router(
        models.router(gw.manager, lambda: gw.started_at, principal), responses=_deps.UNAUTHENTICATED
    )
    app.include_router(usage.router(gw.ledger, principal), responses=_deps.UNAUTHENTICATED)
    app.include_router(admin.router(KeyStore(gw.store), gw.keys, gw.manager.models, master))
    if pods.attach(gw.manager, gw.ledger.recorder.add, lambda: gw.store.engine, gw.metrics.registry):
        app.include_router(pods.router(gw.manager, master))  # only on a gateway with pod backends
    app.include_router(root.router())
    app.include_router(files.router(lambda: gw.storage, lambda: gw.signer))
    app.include_router(
        jobs.router(lambda: gw.jobs or jobs.not_enabled(), principal), responses=_deps.UNAUTHENTICATED
    )
    app.include_router(
        images.router(lambda: gw.jobs or jobs.not_enabled(), principal), responses=_deps.UNAUTHENTICATED
    )
    app.include_router(
        loras.router(lambda: gw.jobs or jobs.not_enabled(), principal), responses=_deps.UNAUTHENTICATED
    )
    app.include_router(tinker.router(gw.auth, gw.training_service, gw.fast_routes))
    app.include_router(training.router(gw, principal), responses=_deps.UNAUTHENTICATED)
    anchor = _HotAnchor(gw)
    for path in HOT:
        app.router.routes.append(Route(path, anchor, methods=["POST"], include_in_schema=False))
    _docs.install(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _add_hot_routes(schema)
            _errors.document(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _add_hot_routes(schema: dict[str, Any]) -> None:
    """Describe the two raw-ASGI routes in the OpenAPI document, with OpenAI's request models."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps.setdefault(
        "ErrorResponse", ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for sub, sub_schema in (
        ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}).items()
    ):
        comps.setdefault(sub, sub_schema)
    comps["ErrorResponse"].pop("$defs", None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, model in HOT.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in body.pop("$defs", {}).items():
            comps.setdefault(name, sub)
        comps[model.__name__] = body
        answer = "chat.completion" if model is ChatCompletionRequest else "text_completion"
        schema["paths"][path] = {
            "post": {
                "tags": ["inference"],
                "summary": f"OpenAI-compatible {answer}: routed, with fallback, costed (stream: SSE)",
                "operationId": "chat_completions" if model is ChatCompletionRequest else "completions",
                "security": [{"HTTPBearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": f"A {answer} object, or with `stream: true` server-sent events ending "
                        "with `data: [DONE]`",
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    **{
                        str(code): {"description": why, "content": error}
                        for code, why in (
                            (400, "Invalid request"),
                            (401, "Missing or invalid API key"),
                            (403, "Model not allowed for this key"),
                            (404, "Unknown model"),
                            (413, "Body too large"),
                            (429, "Rate limit or budget"),
                            (502, "The forced backend failed"),
                            (503, "Every backend failed, or all are still starting (Retry-After)"),
                        )
                    },
                },
            }
        }


__all__ = ["build"]
