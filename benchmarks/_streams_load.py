"""Closed-loop clients for the streams benchmark, in a process of their own (its CPU is not the target's).

N clients, each on its own keep-alive connection, each sending a streamed chat request, reading it to its
end, and sending the next at once. They start spread over `--ramp-s`; once every client has had its first
answer and `--warmup-s` has passed, the measured window runs `--window-s`. The parent is told, on stdout,
one line each: `ready`, `window_start`, `window_end`, then the results as one JSON line.

Per client: the time from its start (connect) to the first event of its first answer ("first wait": a
client that arrives at a busy server waits in its accept queue); per stream: time to first event (TTFT),
and whether it ended well (status 200, `[DONE]`, no error event). Raw asyncio protocols and httptools, so
thousands of clients cost the load generator little.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import httptools
import orjson

STALL_S = 60.0  # a stream with no byte for this long is an error (and its connection is closed)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Gen:
    def __init__(self, host: str, port: int, request: bytes, clients: int) -> None:
        self.host, self.port, self.request = host, port, request
        self.clients = clients
        self.running = True
        self.window: tuple[float, float] | None = None
        self.ttft: list[float] = []  # streams started in the window
        self.ended_ok = 0  # streams ended in the window
        self.errors: dict[str, int] = {}  # in the window
        self.errors_all: dict[str, int] = {}  # over the whole run, ramp included
        self.first_wait: list[float] = []  # per client, from its start to its first event
        self.connects = 0
        self.all: list[Client] = []

    def in_window(self, t: float) -> bool:
        w = self.window
        return w is not None and w[0] <= t < w[1]

    def error(self, kind: str, t: float) -> None:
        self.errors_all[kind] = self.errors_all.get(kind, 0) + 1
        if self.in_window(t):
            self.errors[kind] = self.errors.get(kind, 0) + 1


class Client(asyncio.Protocol):
    def __init__(self, gen: Gen, started: float) -> None:
        self.gen = gen
        self.started = started
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.sent = 0.0
        self.last = 0.0
        self.first_at = 0.0
        self.status = 0
        self.got_event = False
        self.error_event = False
        self.in_request = False
        self.first_done = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        if not self.gen.running or self.transport is None:
            return
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.got_event = self.error_event = False
        self.in_request = True
        self.sent = self.last = time.monotonic()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail("bad http")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.got_event and b"data:" in body:
            now = time.monotonic()
            self.got_event = True
            if self.gen.in_window(self.sent):
                self.gen.ttft.append(now - self.sent)
            if not self.first_done:
                self.first_done = True
                self.gen.first_wait.append(now - self.started)
        if b'"error"' in body:
            self.error_event = True

    def on_message_complete(self) -> None:
        now = time.monotonic()
        self.in_request = False
        g = self.gen
        if self.status != 200:
            g.error(f"HTTP {self.status}", now)
        elif self.error_event:
            g.error("error event", now)
        elif g.in_window(now):
            g.ended_ok += 1
        if not self.first_done:  # an answer without events (an error) still ends the first wait
            self.first_done = True
            g.first_wait.append(now - self.started)
        asyncio.get_running_loop().call_soon(self.send)

    def fail(self, kind: str) -> None:
        self.gen.error(kind, time.monotonic())
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.in_request and self.gen.running:
            self.gen.error("connection dropped", time.monotonic())
        if self.gen.running:
            asyncio.get_running_loop().create_task(connect(self.gen, self.started, self.first_done, 0.5))


async def connect(gen: Gen, started: float, first_done: bool = False, delay: float = 0.0) -> None:
    if delay:
        await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    while gen.running:
        c = Client(gen, started)
        c.first_done = first_done
        try:
            async with asyncio.timeout(60):
                await loop.create_connection(lambda c=c: c, gen.host, gen.port)  # type: ignore[misc]
            gen.connects += 1
            gen.all.append(c)
            return
        except (OSError, TimeoutError) as e:
            gen.error(f"connect: {type(e).__name__}", time.monotonic())
            await asyncio.sleep(1.0)


async def watch_stalls(gen: Gen) -> None:
    while gen.running:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for c in gen.all:
            if c.in_request and not c.closed and now - c.last > STALL_S:
                c.fail("stalled")
        gen.all = [c for c in gen.all if not c.closed]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    body = orjson.dumps(
        {
            "model": args.model,
            "messages": [{"role": "user", "content": "Tell me a long story about foxes."}],
            "stream": True,
            "max_tokens": 64,
        }
    )
    head = f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nContent-Type: application/json\r\n"
    for h in args.header:
        head += h + "\r\n"
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    gen = Gen(args.host, args.port, request, args.clients)
    t0 = time.monotonic()
    watcher = asyncio.create_task(watch_stalls(gen))
    tasks = []
    for i in range(args.clients):
        at = t0 + args.ramp_s * i / max(1, args.clients)
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(connect(gen, time.monotonic())))
    # Ready once every client has had its first event (or the ramp's own deadline passed).
    deadline = time.monotonic() + args.ready_timeout_s
    while len(gen.first_wait) < args.clients and time.monotonic() < deadline:  # noqa: ASYNC110 - polled
        await asyncio.sleep(0.1)
    ramp_s = time.monotonic() - t0
    _say("ready")
    await asyncio.sleep(args.warmup_s)
    ws = time.monotonic()
    gen.window = (ws, ws + args.window_s)
    _say("window_start")
    await asyncio.sleep(args.window_s)
    _say("window_end")
    gen.running = False
    watcher.cancel()
    for c in gen.all:
        if c.transport is not None:
            c.transport.abort()
    await asyncio.sleep(0.2)
    ttft = sorted(gen.ttft)
    waits = sorted(gen.first_wait)

    def pct(xs: list[float], q: float) -> float | None:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None

    return {
        "clients": args.clients,
        "window_s": args.window_s,
        "streams_ok": gen.ended_ok,
        "errors": gen.errors,
        "errors_total": sum(gen.errors.values()),
        "errors_ramp_and_window": gen.errors_all,
        "ttft_p50_s": pct(ttft, 0.50),
        "ttft_p99_s": pct(ttft, 0.99),
        "ttft_samples": len(ttft),
        "first_wait_max_s": waits[-1] if waits else None,
        "first_wait_p99_s": pct(waits, 0.99),
        "first_waits_over_30s": sum(1 for w in waits if w > 30.0),
        "clients_without_first_answer": args.clients - len(waits),
        "ramp_to_ready_s": ramp_s,
        "connects": gen.connects,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--ramp-s", type=float, default=2.5)
    ap.add_argument("--ready-timeout-s", type=float, default=60.0)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--window-s", type=float, default=10.0)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    _say(orjson.dumps(asyncio.run(run(args))).decode())


if __name__ == "__main__":
    main()
