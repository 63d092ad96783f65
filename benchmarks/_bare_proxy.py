"""The yardstick: the least a Python reverse proxy can do (raw ASGI under uvicorn, pooled aiohttp client).

No auth, no parsing, no routing, no accounting: the request body goes to the upstream as is, and the
answer (JSON, or SSE passed through chunk by chunk) comes back as is. `--client httpx` swaps in a pooled
httpx.AsyncClient, and `--client hybridgate` the gateway's own upstream client
(hybridgate.transport), to measure the clients against each other.
Run: python benchmarks/_bare_proxy.py --port N --upstream http://127.0.0.1:M [--workers N] [--client K]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

UPSTREAM_ENV = "BENCH_BARE_UPSTREAM"
CLIENT_ENV = "BENCH_BARE_CLIENT"
JSON_CT = [(b"content-type", b"application/json")]


class BareProxy:
    """POST anything to the upstream's same path; GET /health answers locally."""

    def __init__(self, upstream: str, client: str = "aiohttp") -> None:
        self.upstream = upstream.rstrip("/")
        self.client_kind = client
        self._client: Any = None

    async def _start(self) -> None:
        if self.client_kind == "hybridgate":
            from hybridgate import transport as _http

            self._client = _http.HTTPClient()
            self._origin, self._base = _http.Origin.split(self.upstream)
            self._timeouts = _http.Timeouts(connect_s=30.0, read_s=300.0, total_s=300.0)
        elif self.client_kind == "httpx":
            import httpx

            limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
            self._client = httpx.AsyncClient(limits=limits, timeout=60.0)
        else:
            import aiohttp

            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                skip_auto_headers=("User-Agent",),
            )

    async def _stop(self) -> None:
        if self._client is not None:
            await self._client.aclose() if self.client_kind == "httpx" else await self._client.close()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await self._start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self._stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200, "headers": JSON_CT})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        url = self.upstream + scope["path"]
        body = b"".join(chunks)
        headers = {"Content-Type": "application/json"}
        if self.client_kind == "httpx":
            await self._via_httpx(url, body, headers, send)
        elif self.client_kind == "hybridgate":
            await self._via_hybridgate(scope["path"], body, send)
        else:
            await self._via_aiohttp(url, body, headers, send)

    async def _via_aiohttp(self, url: str, body: bytes, headers: dict[str, str], send: Any) -> None:
        async with self._client.post(url, data=body, headers=headers) as resp:
            ct = resp.headers.get("Content-Type", "application/json").encode()
            await send(
                {"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", ct)]}
            )
            if ct.startswith(b"text/event-stream"):
                async for part in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send({"type": "http.response.body", "body": await resp.read()})

    async def _via_hybridgate(self, path: str, body: bytes, send: Any) -> None:
        target = self._base.rstrip("/") + path
        resp = await self._client.request(
            self._origin, "POST", target, b"Content-Type: application/json\r\n", body, timeouts=self._timeouts
        )
        try:
            ct = resp.headers.get(b"content-type", b"application/json")
            await send(
                {"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", ct)]}
            )
            if ct.startswith(b"text/event-stream"):
                while part := await resp.readany():
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send({"type": "http.response.body", "body": await resp.read()})
        finally:
            resp.release()

    async def _via_httpx(self, url: str, body: bytes, headers: dict[str, str], send: Any) -> None:
        req = self._client.build_request("POST", url, content=body, headers=headers)
        resp = await self._client.send(req, stream=True)
        try:
            ct = resp.headers.get("content-type", "application/json").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status_code,
                    "headers": [(b"content-type", ct)],
                }
            )
            if ct.startswith(b"text/event-stream"):
                async for part in resp.aiter_raw():
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send({"type": "http.response.body", "body": await resp.aread()})
        finally:
            await resp.aclose()


def factory() -> BareProxy:
    """For uvicorn's multi-worker mode, which imports the app by name in each worker."""
    return BareProxy(os.environ[UPSTREAM_ENV], os.environ.get(CLIENT_ENV, "aiohttp"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--client", choices=["aiohttp", "httpx", "hybridgate"], default="aiohttp")
    args = ap.parse_args()
    import uvicorn

    os.environ[UPSTREAM_ENV] = args.upstream
    os.environ[CLIENT_ENV] = args.client
    kw: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": args.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        "access_log": False,
    }
    if args.workers == 1:
        uvicorn.run(factory(), **kw)
    else:
        uvicorn.run("_bare_proxy:factory", factory=True, workers=args.workers, **kw)


if __name__ == "__main__":
    main()
