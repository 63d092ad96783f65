"""A paced OpenAI-compatible upstream for the streams benchmark: long streams, as a model server sends them.

Each streamed answer sends its head at once, its first event after `--ttft-ms`, then one event every
1/`--tokens-per-s` seconds, `--events` in all (then usage when asked, then `[DONE]`): about two seconds a
stream by default, so thousands are open at once. Every event is one write, as a model server does.

As cheap per event as it can be, so that it is not what limits the run: raw asyncio protocols (uvloop,
accepting fairly: hybridgate._loop),
httptools' parser, every event framed once at start, one timer for all streams (their deadlines come in
the order they started, since every stream has the same pace, so two FIFO queues replace a heap).

`GET /_stats` answers {"connections": accepted so far, "open": open now, "requests": ..., "streams": ...}:
the benchmark reads it to count the new connections a proxy opened during a window.

Run: python benchmarks/_paced_upstream.py --port N [--ttft-ms 200] [--tokens-per-s 20] [--events 40]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from typing import Any

import httptools
import orjson

MODEL = "bench"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: Any) -> bytes:
    return _chunked(b"data: " + orjson.dumps(obj) + b"\n\n")


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-paced",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


class Stats:
    connections = 0
    open = 0
    requests = 0
    streams = 0


class Paced:
    """Every stream's events, and the one timer task that writes them when due."""

    def __init__(self, ttft_s: float, tokens_per_s: float, events: int) -> None:
        self.ttft_s = ttft_s
        self.gap_s = 1.0 / tokens_per_s
        words = [f" w{i}" for i in range(events - 2)]
        self.events = [
            _event(_chunk({"role": "assistant", "content": ""})),
            *(_event(_chunk({"content": w})) for w in words),
            _event(_chunk({}, "stop")),
        ]
        usage = {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)}
        self.usage = _event({**_chunk({}), "choices": [], "usage": usage})
        self.done = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.completion = orjson.dumps(
            {
                "id": "chatcmpl-paced",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
        # [due, conn, next event index, include_usage]: due times grow along each queue.
        self.first: deque[list[Any]] = deque()
        self.running: deque[list[Any]] = deque()
        self.wake = asyncio.Event()

    def add(self, conn: Conn, include_usage: bool, now: float) -> None:
        self.first.append([now + self.ttft_s, conn, 0, include_usage])
        self.wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.first and not self.running:
                self.wake.clear()
                await self.wake.wait()
            now = loop.time()
            for q in (self.first, self.running):
                while q and q[0][0] <= now:
                    s = q.popleft()
                    conn = s[1]
                    if conn.closed:
                        continue
                    i = s[2]
                    if i < len(self.events):
                        conn.write(self.events[i])
                        s[0] += self.gap_s
                        s[2] = i + 1
                        self.running.append(s)
                    else:
                        conn.write((self.usage if s[3] else b"") + self.done)
                        Stats.streams += 1
                        conn.busy = False
            nxt = min((q[0][0] for q in (self.first, self.running) if q), default=now + 0.05)
            # Events due within 5 ms go out together: fewer wake-ups, as a server batching its tokens.
            await asyncio.sleep(max(0.005, nxt - loop.time()))


class Conn(asyncio.Protocol):
    def __init__(self, paced: Paced) -> None:
        self.paced = paced
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.busy = False
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        Stats.connections += 1
        Stats.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        Stats.open -= 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        Stats.requests += 1
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"GET":
            if path == b"/_stats":
                payload = orjson.dumps(
                    {
                        "connections": Stats.connections,
                        "open": Stats.open,
                        "requests": Stats.requests,
                        "streams": Stats.streams,
                    }
                )
            elif path.endswith(b"/models"):
                payload = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
            else:
                payload = b'{"status":"ok"}'
            self._json(payload)
            return
        try:
            body = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict) or not body.get("stream"):
            self._json(self.paced.completion)
            return
        opts = body.get("stream_options")
        include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        self.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self.busy = True
        self.paced.add(self, include_usage, asyncio.get_running_loop().time())

    def _json(self, payload: bytes) -> None:
        self.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )


async def serve(port: int, ttft_s: float, tokens_per_s: float, events: int) -> None:
    paced = Paced(ttft_s, tokens_per_s, events)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(paced), "127.0.0.1", port, backlog=8192)
    task = asyncio.create_task(paced.run())
    try:
        await server.serve_forever()
    finally:
        task.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--tokens-per-s", type=float, default=20.0)
    ap.add_argument("--events", type=int, default=40)
    args = ap.parse_args()
    # hybridgate's serving loop: uvloop, accepting a batch of waiting connections per turn (uvloop's own
    # server takes one per turn, and a busy upstream would then starve the proxies' new connections).
    from hybridgate._loop import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(args.port, args.ttft_ms / 1000, args.tokens_per_s, max(3, args.events)))


if __name__ == "__main__":
    main()
