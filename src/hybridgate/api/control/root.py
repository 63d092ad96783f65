"""GET /: what this server is and where its documentation lives, for whoever opens the bare address.

A browser (Accept: text/html) gets a short page with links; anything else gets the same as JSON. Left out
of /openapi.json, as /docs is: it describes the API rather than being part of it.
"""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from hybridgate import __version__

WHAT = "A self-hosted, OpenAI-compatible AI gateway: routing, fallback, cost accounting, cheap honest tests."


def describe(base_url: str) -> dict[str, Any]:
    """The answer of GET /, for a server reached at `base_url` (ending with a slash)."""
    return {
        "name": "hybridgate",
        "version": __version__,
        "description": WHAT,
        "openai_base_url": base_url + "v1",
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/health",
    }


def _page(info: dict[str, Any]) -> str:
    base = escape(info["openai_base_url"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hybridgate {escape(info["version"])}</title></head>
<body>
<h1>hybridgate {escape(info["version"])}</h1>
<p>{escape(WHAT)}</p>
<p>Point the official <code>openai</code> client at <code>{base}</code> with an API key.</p>
<ul>
<li><a href="/docs">/docs</a>: the API, to read and to try</li>
<li><a href="/openapi.json">/openapi.json</a>: its OpenAPI schema</li>
<li><a href="/health">/health</a> and <a href="/health/backends">/health/backends</a>: is it up, and its backends</li>
</ul>
</body></html>
"""


def router() -> APIRouter:
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        info = describe(str(request.base_url))
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(_page(info))
        return JSONResponse(info)

    return r


__all__ = ["describe", "router"]
