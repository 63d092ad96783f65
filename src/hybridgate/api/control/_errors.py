"""Every control-plane error in OpenAI's shape: framework validation errors, unknown paths, 405, bugs."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match, Mount

from hybridgate.protocol import GatewayError, error_body

log = logging.getLogger("hybridgate.api")


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def gateway_error_response(e: GatewayError) -> Response:
    return error_response(e.status, e.body(), e.headers or None)


def bug_response(method: str, path: str, e: Exception) -> Response:
    """A bug of ours, logged with its traceback; the client gets a 500 naming only the exception's type."""
    log.exception("unhandled error on %s %s", method, path, exc_info=e)
    body = error_body(f"Internal gateway error: {type(e).__name__}", "server_error", None, None)
    return error_response(500, body)


def _param(loc: tuple[Any, ...]) -> str:
    """`("query", "group_by")` -> "group_by"; `("body", "models", 0)` -> "models[0]"."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """Every method some route takes on this path. Starlette's 405 names only the first matching route's,
    and FastAPI makes one route per method (GET and POST /admin/keys), so every route is asked about each."""
    routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]  # a mount takes any method
    return ", ".join(
        m for m in _METHODS if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)
    )


def document(schema: dict[str, Any]) -> None:
    """Make /openapi.json say what `install` sends: a validation error is a 400 in OpenAI's shape, never
    FastAPI's default 422 `{"detail": [...]}`. Needs ErrorResponse in the components already."""
    invalid = {
        "description": "Invalid request",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", invalid)
                op["responses"] = dict(sorted(responses.items()))
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, only for the 422s just removed
        components.pop(name, None)


def install(app: FastAPI, known_paths: str) -> None:
    """Register the handlers that keep every answer in OpenAI's error shape."""

    async def on_gateway_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, GatewayError)
        return gateway_error_response(e)

    async def on_validation(request: Request, e: Exception) -> Response:
        assert isinstance(e, RequestValidationError)
        err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request", "type": "value_error"}
        param = _param(tuple(err.get("loc", ())))
        if err.get("type") == "missing":
            message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
        else:
            message, code = f"Invalid value for '{param}': {err.get('msg')}.", "invalid_value"
        return error_response(400, error_body(message, "invalid_request_error", param, code))

    async def on_http(request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        path, method = request.url.path, request.method
        headers = dict(e.headers or {})
        if e.status_code == 404:
            body = error_body(
                f"Unknown path {path}. This gateway serves {known_paths}; see /docs.",
                "invalid_request_error",
                None,
                "not_found",
            )
        elif e.status_code == 405:
            allow = _allowed(request) or headers.get("Allow", "")
            if allow:
                headers["Allow"] = allow
            body = error_body(
                f"Method {method} is not allowed on {path} (allowed: {allow}).",
                "invalid_request_error",
                None,
                "method_not_allowed",
            )
        else:
            kind = "invalid_request_error" if e.status_code < 500 else "server_error"
            body = error_body(str(e.detail), kind, None, None)
        return error_response(e.status_code, body, headers)

    async def on_bug(request: Request, e: Exception) -> Response:
        return bug_response(request.method, request.url.path, e)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_bug)


__all__ = ["bug_response", "document", "error_response", "gateway_error_response", "install"]
