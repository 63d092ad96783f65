"""A fixed-answer OpenAI-compatible upstream for the overhead benchmark: as little work per request as can be.

Every answer is built once at start; a request costs one small JSON parse (to see `stream`) and a few writes.
Two implementations, picked by measurement (see benchmarks/README.md): raw ASGI under uvicorn (uvloop,
httptools) and aiohttp.web. Run: python benchmarks/_upstream.py --port N [--impl asgi|aiohttp].
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

MODEL = "bench-upstream"
WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
USAGE = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}
JSON_CT = [(b"content-type", b"application/json")]
SSE_CT = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(WORDS), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "system_fingerprint": None,
    }
)
# One event per write, as a model server would send them: role, one per word, finish, (usage), [DONE].
STREAM_EVENTS = [
    _event(_chunk({"role": "assistant", "content": ""})),
    *(_event(_chunk({"content": w})) for w in WORDS),
    _event(_chunk({}, "stop")),
]
USAGE_EVENT = _event({**_chunk({}), "choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"


def wants(raw: bytes) -> tuple[bool, bool]:
    """(stream, include_usage) of a request body; a bad body is answered as non-streamed."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False, False
    if not isinstance(body, dict) or not body.get("stream"):
        return False, False
    opts = body.get("stream_options")
    return True, bool(isinstance(opts, dict) and opts.get("include_usage"))


class AsgiUpstream:
    """Raw ASGI: no framework between uvicorn's parser and the canned bytes."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                kind = msg["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        raw = b""
        more = scope["method"] == "POST"
        while more:
            msg = await receive()
            raw += msg.get("body", b"")
            more = msg.get("more_body", False)
        if scope["method"] == "GET":  # /health, /v1/models: anything answers 200
            await send({"type": "http.response.start", "status": 200, "headers": JSON_CT})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        stream, usage = wants(raw)
        if not stream:
            await send({"type": "http.response.start", "status": 200, "headers": JSON_CT})
            await send({"type": "http.response.body", "body": COMPLETION})
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_CT})
        for ev in STREAM_EVENTS:
            await send({"type": "http.response.body", "body": ev, "more_body": True})
        if usage:
            await send({"type": "http.response.body", "body": USAGE_EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": False})


def run_aiohttp(port: int) -> None:
    """The same answers from aiohttp.web (measured against the ASGI one)."""
    from aiohttp import web

    async def health(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def complete(request: web.Request) -> web.StreamResponse:
        stream, usage = wants(await request.read())
        if not stream:
            return web.Response(body=COMPLETION, content_type="application/json")
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        for ev in STREAM_EVENTS:
            await resp.write(ev)
        if usage:
            await resp.write(USAGE_EVENT)
        await resp.write(DONE)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", health)
    app.router.add_post("/v1/chat/completions", complete)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--impl", choices=["asgi", "aiohttp"], default="asgi")
    args = ap.parse_args()
    if args.impl == "aiohttp":
        run_aiohttp(args.port)
        return
    import uvicorn

    uvicorn.run(
        AsgiUpstream(),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
