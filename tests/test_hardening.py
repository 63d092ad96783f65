"""Issue 12's holes, each pinned: client input never changes a backend's health, budgets are true upper
bounds of what is sent, OpenAI-valid requests are accepted, errors say who was tried, slow bodies are cut.

A real gateway process on loopback in front of a recording upstream (aiohttp, in a thread of this process)
and the in-process mock; the official openai client or httpx as the client.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from _accounts import gateway_config, sqlite_url
from hybridgate.testing.procs import Proc, start_gateway

MASTER = "hardening-master-key-0123456789"
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}  # $0.001 a token: bytes are money here


class Upstream:
    """An OpenAI-compatible server that records every body it gets; `slow_s` delays non-streamed answers."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.slow_s = 0.0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_post("/v1/completions", self._answer)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        self.loop.run_forever()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "served", "object": "model"}]})

    async def _answer(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if body.get("model") == "refuse":
            err = {
                "message": "context too long",
                "type": "invalid_request_error",
                "param": "messages",
                "code": None,
            }
            return web.json_response({"error": err}, status=400)
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if request.path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            out = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"]}
        else:
            choice = {"index": 0, "text": "ok", "finish_reason": "stop"}
            out = {"id": "c", "object": "text_completion", "created": 0, "model": body["model"]}
        return web.json_response({**out, "choices": [choice], "usage": usage})

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("hardening")
    health = {"interval_s": 0.5, "failures_to_trip": 1, "cooldown_s": 30}
    timeouts = {"first_byte_s": 0.5, "total_s": 10}
    backends: list[dict[str, Any]] = [
        {"name": "paid", "kind": "openai", "base_url": upstream.base_url, "priority": 1, "price": PRICE,
         "models": {"paid": "served", "refusing": "refuse"}, "health": health, "timeouts": timeouts},
        {"name": "second", "kind": "openai", "base_url": upstream.base_url, "priority": 2, "price": PRICE,
         "models": {"paid": "served"}, "health": health, "timeouts": timeouts},
        {"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}},
    ]  # fmt: skip
    cfg = gateway_config(sqlite_url(d), backends, d)
    text = cfg.read_text()
    cfg.write_text(text + "\nserver: {body_timeout_s: 1.0, metrics_token: metrics-token-0123456789}\n")
    proc = start_gateway(cfg, env={"HYBRIDGATE_MASTER_KEY": MASTER})
    yield proc
    proc.stop()


def new_key(gw: Proc, name: str, **limits: Any) -> str:
    r = httpx.post(
        gw.url + "/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}, json={"name": name, **limits}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def health(gw: Proc) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in httpx.get(gw.url + "/health/backends").json()["backends"]}


def post(gw: Proc, path: str, body: Any, key: str = MASTER, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        gw.base_url + path,
        content=content,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=30,
        **kw,
    )


def deep(levels: int) -> Any:
    node: Any = "x"
    for _ in range(levels):
        node = {"a": [node]}
    return node


# --- 1. no client input changes a backend's health -----------------------------------------------


@pytest.mark.parametrize("field", ["extra_field", "tools", "response_format", "metadata"])
def test_a_deeply_nested_body_is_a_400_naming_the_field_and_harms_no_backend(gw: Proc, field: str) -> None:
    budgeted = new_key(gw, f"deep-{field}", budget_usd=0.1)
    for key in (MASTER, budgeted):
        body = {"model": "paid", "messages": [{"role": "user", "content": "hi"}], field: deep(300)}
        r = post(gw, "/chat/completions", body, key)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == field and err["code"] == "too_deeply_nested"
    hb = health(gw)
    assert hb["paid"]["healthy"] and hb["paid"]["consecutive_failures"] == 0 and hb["second"]["healthy"]
    ok = post(gw, "/chat/completions", {"model": "paid", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200 and ok.headers["x-hybridgate-backend"] == "paid"


def test_a_tool_schema_of_ordinary_depth_is_accepted(gw: Proc) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": deep(20)}}]
    r = post(
        gw,
        "/chat/completions",
        {"model": "paid", "messages": [{"role": "user", "content": "hi"}], "tools": tools},
    )
    assert r.status_code == 200, r.text


# --- 2. the reservation is a true upper bound of what is sent ------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "x" * 20_000}}]},
        {"role": "user", "content": "hi", "name": "n" * 20_000},
    ],
)  # fmt: skip
def test_every_byte_sent_counts_toward_the_reservation(
    gw: Proc, upstream: Upstream, message: dict[str, Any]
) -> None:
    key = new_key(gw, f"bytes-{sorted(message)[-1]}", budget_usd=0.1)  # 100 tokens at $0.001
    before = len(upstream.bodies)
    body = {"model": "paid", "messages": [message, {"role": "user", "content": "go"}], "max_tokens": 1}
    r = post(gw, "/chat/completions", body, key)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
    assert len(upstream.bodies) == before  # refused before anything was sent


def test_completions_without_max_tokens_send_the_reserved_bound(gw: Proc, upstream: Upstream) -> None:
    key = new_key(gw, "legacy-default", budget_usd=1.0)
    r = post(gw, "/completions", {"model": "paid", "prompt": "hi"}, key)
    assert r.status_code == 200, r.text
    assert upstream.bodies[-1]["max_tokens"] == 16  # OpenAI's default, now explicit for every server


def test_with_both_limits_the_larger_is_reserved(gw: Proc, upstream: Upstream) -> None:
    key = new_key(gw, "both-limits", budget_usd=0.5)  # 500 tokens
    body = {"model": "paid", "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 10, "max_tokens": 5000}  # fmt: skip
    r = post(gw, "/chat/completions", body, key)
    assert r.status_code == 429 and "5000 output tokens" in r.json()["error"]["message"], r.text


# --- 11. what OpenAI accepts is accepted -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/chat/completions",
            {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "stream": None},
        ),
        ("/chat/completions", {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "n": 2}),
        ("/chat/completions", {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "n": 2.0}),
        ("/completions", {"model": "mock", "prompt": None}),
        ("/completions", {"model": "mock", "prompt": [1, 2, 3]}),
        ("/completions", {"model": "mock", "prompt": [[1, 2], [3]]}),
        ("/completions", {"model": "mock", "prompt": "hi", "max_tokens": 0}),
    ],
)
def test_requests_valid_by_openais_spec_are_accepted(gw: Proc, path: str, body: dict[str, Any]) -> None:
    r = post(gw, path, body)
    assert r.status_code == 200, r.text


def test_what_openai_refuses_is_still_refused(gw: Proc) -> None:
    for extra, param in (({"n": 2.5}, "n"), ({"n": 129}, "n"), ({"max_tokens": 0}, "max_tokens")):
        r = post(
            gw,
            "/chat/completions",
            {"model": "mock", "messages": [{"role": "user", "content": "hi"}], **extra},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# --- 8. errors say who was tried; 503s say when to retry -----------------------------------------


def test_a_backends_own_4xx_carries_the_attempt_headers(gw: Proc) -> None:
    r = post(gw, "/chat/completions", {"model": "refusing", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["message"] == "context too long"
    assert r.headers["x-hybridgate-backend"] == "paid" and r.headers["x-hybridgate-attempts"] == "1"


def test_all_backends_failed_carries_attempts_and_retry_after(tmp_path: Path) -> None:
    dead = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "models": {"m": "m"}, "price": {"free": True},
            "health": {"mode": "passive"}, "options": {"check_models": False}}  # fmt: skip
    proc = start_gateway(
        gateway_config(
            sqlite_url(tmp_path),
            [{"name": "a", "priority": 1, **dead}, {"name": "b", "priority": 2, **dead}],
            tmp_path,
        )
    )
    try:
        r = httpx.post(
            proc.base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 503
        assert r.headers["x-hybridgate-attempts"] == "2" and r.headers["x-hybridgate-backend"] == "b"
        assert int(r.headers["retry-after"]) >= 1
        with pytest.raises(openai.InternalServerError):
            openai.OpenAI(base_url=proc.base_url, api_key="x", max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
    finally:
        proc.stop()


# --- 6. a long non-streamed answer is not a failure ----------------------------------------------


def test_a_non_streamed_answer_slower_than_first_byte_s_is_served_once(gw: Proc, upstream: Upstream) -> None:
    before = len(upstream.bodies)
    upstream.slow_s = 1.0  # first_byte_s is 0.5 here: a stream that silent would be cut, an answer is not
    try:
        r = post(
            gw, "/chat/completions", {"model": "paid", "messages": [{"role": "user", "content": "long"}]}
        )
    finally:
        upstream.slow_s = 0.0
    assert r.status_code == 200 and r.headers["x-hybridgate-attempts"] == "1", r.text
    assert len(upstream.bodies) == before + 1  # generated once, not again on the next backend
    assert health(gw)["paid"]["consecutive_failures"] == 0


# --- 12. a body that trickles in is cut ------------------------------------------------------------


def test_a_body_that_does_not_arrive_in_time_is_a_408(gw: Proc) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {MASTER}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"model": '
        )
        t0 = time.monotonic()
        answer = s.recv(65536).decode()
        assert time.monotonic() - t0 < 5
        # The head and the body may come in separate packets (a busy machine): read until the error is in.
        while "request_timeout" not in answer and time.monotonic() - t0 < 5:
            more = s.recv(65536).decode()
            if not more:
                break
            answer += more
    assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer


# --- 5. per-key series are private ----------------------------------------------------------------


def test_the_metrics_token_shows_key_series(gw: Proc) -> None:
    key = new_key(gw, "token-visible", budget_usd=1.0)
    body = {"model": "paid", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert post(gw, "/chat/completions", body, key).status_code == 200
    public = httpx.get(gw.url + "/metrics").text
    private = httpx.get(
        gw.url + "/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}
    ).text
    assert 'key="token-visible"' not in public and 'key="token-visible"' in private


# --- 9. a WebSocket upgrade is a 404, not a crash --------------------------------------------------


def test_a_websocket_upgrade_is_a_404_in_openais_shape_and_logs_no_error(gw: Proc) -> None:
    import websockets

    async def upgrade() -> websockets.InvalidStatus:
        with pytest.raises(websockets.InvalidStatus) as caught:
            async with websockets.connect(f"ws://127.0.0.1:{gw.port}/v1/chat/completions", open_timeout=5):
                pass
        return caught.value

    refused = asyncio.run(upgrade())
    assert refused.response.status_code == 404
    assert json.loads(refused.response.body)["error"]["code"] == "not_found"
    time.sleep(0.2)
    assert "Traceback" not in gw.log() and "without completing handshake" not in gw.log()


def test_refused_requests_are_counted_too(gw: Proc) -> None:
    def count(status: str) -> float:
        for line in httpx.get(gw.url + "/metrics").text.splitlines():
            if line.startswith(f'hybridgate_requests_total{{model="(unknown)",status="{status}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = (count("400"), count("401"))
    assert post(gw, "/chat/completions", b"{not json").status_code == 400
    assert post(gw, "/chat/completions", {"model": "mock", "messages": []}, key="wrong").status_code == 401
    assert (count("400"), count("401")) == (before[0] + 1, before[1] + 1)
