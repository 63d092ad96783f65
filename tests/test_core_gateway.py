"""The gateway as a real process in front of real mock-server processes, driven by the openai client."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from hybridgate.testing.procs import Proc, free_port, set_mock_behaviour, start_gateway, start_mock_server

CANARY = "In one word, can you provide me the capital of France?"
MSG = [{"role": "user", "content": CANARY}]


def backend(name: str, mock: Proc, priority: int, served: str, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "kind": "openai",
        "base_url": mock.base_url,
        "models": {"chat": served},
        "priority": priority,
        # answer_s: a non-streamed answer's own deadline (it defaults to total_s, since issue 12)
        "timeouts": {"connect_s": 1, "first_byte_s": 2, "answer_s": 2, "total_s": 5},
        "health": {
            "path": "/health",
            "interval_s": 0.3,
            "timeout_s": 0.5,
            "failures_to_trip": 2,
            "cooldown_s": 1,
        },
    }
    cfg.update(kw)
    return cfg


def set_mock(url: str, **changes: Any) -> dict[str, Any]:
    """Change a mock's faults; mock a requires its key on /_mock/config, mock b (no key) ignores it."""
    return set_mock_behaviour(url, api_key="key-a", **changes)


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def pair() -> Iterator[dict[str, Proc]]:
    """Two mock servers (primary, secondary) and one gateway; mocks are reset before each test."""
    a = start_mock_server(model=["served-model-a"], api_key="key-a")
    b = start_mock_server(model=["served-model-b"])
    gw = start_gateway(
        {
            "server": {"max_body_bytes": 4096},
            "backends": [
                backend(
                    "primary",
                    a,
                    1,
                    "served-model-a",
                    api_key="${PRIMARY_API_KEY}",
                    price={"input_per_mtok": 0.15, "output_per_mtok": 0.60},
                ),
                backend("secondary", b, 2, "served-model-b", price={"per_hour": 0.24}),
                {"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "priority": 9},
            ],
        },
        env={"PRIMARY_API_KEY": "key-a"},
    )
    yield {"a": a, "b": b, "gw": gw}
    for p in (gw, a, b):
        p.stop()


@pytest.fixture
def procs(pair: dict[str, Proc]) -> dict[str, Proc]:
    for m in (pair["a"], pair["b"]):
        set_mock(m.url, fail_rate=0, hang=False, drop_mid_stream=False, latency_ms=0, ttft_ms=None)
    # Both healthy again before the test starts (an earlier test may have tripped one).
    wait_until(
        lambda: all(x["routable"] for x in httpx.get(pair["gw"].url + "/health/backends").json()["backends"]),
        what="all backends routable",
    )
    return pair


def client(gw: Proc, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def test_chat_completion_through_the_openai_client(procs: dict[str, Proc]) -> None:
    raw = client(procs["gw"]).chat.completions.with_raw_response.create(model="chat", messages=MSG)
    reply = raw.parse()
    assert reply.choices[0].message.content == "Paris"
    assert reply.model == "chat" and reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    assert raw.headers["x-hybridgate-backend"] == "primary"
    assert raw.headers["x-hybridgate-attempts"] == "1"
    expected = (reply.usage.prompt_tokens * 0.15 + reply.usage.completion_tokens * 0.60) / 1e6
    assert float(raw.headers["x-hybridgate-cost-usd"]) == pytest.approx(expected, abs=1e-8)


def test_legacy_completion_and_models(procs: dict[str, Proc]) -> None:
    c = client(procs["gw"])
    out = c.completions.create(model="chat", prompt="Say something", max_tokens=5)
    assert out.object == "text_completion" and out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 5
    assert sorted(m.id for m in c.models.list()) == ["chat", "mock"]


def test_async_client_concurrent_requests(procs: dict[str, Proc]) -> None:
    async def main() -> list[str]:
        ac = openai.AsyncOpenAI(base_url=procs["gw"].base_url, api_key="x", max_retries=0)
        rs = await asyncio.gather(
            *[ac.chat.completions.create(model="chat", messages=MSG) for _ in range(20)]
        )
        await ac.close()
        return [r.choices[0].message.content or "" for r in rs]

    assert asyncio.run(main()) == ["Paris"] * 20


def test_streaming_chunk_order_and_include_usage(procs: dict[str, Proc]) -> None:
    c = client(procs["gw"])
    chunks = list(
        c.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "tell me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(text) > 20 and all(ch.model == "chat" for ch in chunks)
    plain = list(c.chat.completions.create(model="chat", messages=MSG, stream=True))
    assert all(ch.usage is None for ch in plain) and all(ch.choices for ch in plain)


def test_stream_is_flushed_chunk_by_chunk(procs: dict[str, Proc]) -> None:
    set_mock(procs["a"].url, tokens_per_s=20)  # 50 ms per token
    times = []
    with httpx.stream(
        "POST",
        procs["gw"].base_url + "/chat/completions",
        timeout=10,
        json={"model": "chat", "messages": [{"role": "user", "content": "go"}], "stream": True},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                times.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert len(times) > 8 and sorted(gaps)[len(gaps) // 2] > 0.03  # arrived spread out, not in one burst


def test_falls_back_when_primary_returns_500(procs: dict[str, Proc]) -> None:
    set_mock(procs["a"].url, fail_rate=1)
    raw = client(procs["gw"]).chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert raw.parse().choices[0].message.content == "Paris"
    assert raw.headers["x-hybridgate-backend"] == "secondary"
    assert raw.headers["x-hybridgate-attempts"] == "2"


def test_falls_back_when_primary_times_out(procs: dict[str, Proc]) -> None:
    set_mock(procs["a"].url, hang=True)
    t0 = time.monotonic()
    raw = client(procs["gw"]).chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert raw.headers["x-hybridgate-backend"] == "secondary"
    assert 1.5 < time.monotonic() - t0 < 4.5  # answer_s is 2


def test_streaming_falls_back_before_the_first_byte(procs: dict[str, Proc]) -> None:
    set_mock(procs["a"].url, fail_rate=1)
    with client(procs["gw"]).chat.completions.with_streaming_response.create(
        model="chat", messages=MSG, stream=True
    ) as r:
        assert r.headers["x-hybridgate-backend"] == "secondary"
        text = "".join(ch.choices[0].delta.content or "" for ch in r.parse() if ch.choices)
    assert text == "Paris"


def test_mid_stream_drop_ends_with_an_error_event_and_done(procs: dict[str, Proc]) -> None:
    set_mock(procs["a"].url, drop_mid_stream=True)
    events = []
    with httpx.stream(
        "POST",
        procs["gw"].base_url + "/chat/completions",
        timeout=10,
        json={"model": "chat", "messages": [{"role": "user", "content": "go on"}], "stream": True},
    ) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and "stream_interrupted" in events[-2]
    assert any('"content"' in e for e in events[:-2])
    # The openai client surfaces it as an error rather than a silent truncation.
    with pytest.raises(openai.APIError):
        for _ in client(procs["gw"]).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "more please"}], stream=True
        ):
            pass


def test_forced_and_preferred_backends(procs: dict[str, Proc]) -> None:
    c = client(procs["gw"])
    r = c.chat.completions.with_raw_response.create(
        model="chat", messages=MSG, extra_headers={"X-Hybridgate-Backend": "secondary"}
    )
    assert r.headers["x-hybridgate-backend"] == "secondary"
    r = c.chat.completions.with_raw_response.create(
        model="chat", messages=MSG, extra_headers={"X-Hybridgate-Prefer": "secondary"}
    )
    assert r.headers["x-hybridgate-backend"] == "secondary"
    set_mock(procs["b"].url, fail_rate=1)
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(
            model="chat", messages=MSG, extra_headers={"X-Hybridgate-Backend": "secondary"}
        )
    assert ei.value.status_code == 502 and "secondary" in ei.value.message
    r = c.chat.completions.with_raw_response.create(
        model="chat", messages=MSG, extra_headers={"X-Hybridgate-Prefer": "secondary"}
    )
    assert r.headers["x-hybridgate-backend"] == "primary"


def test_all_backends_failed_is_503_naming_each(procs: dict[str, Proc]) -> None:
    for m in ("a", "b"):
        set_mock(procs[m].url, fail_rate=1, fail_status=502)
    r = httpx.post(procs["gw"].base_url + "/chat/completions", json={"model": "chat", "messages": MSG})
    assert r.status_code == 503
    err = r.json()["error"]
    assert (
        err["code"] == "all_backends_failed" and "primary" in err["message"] and "secondary" in err["message"]
    )
    set_mock(procs["b"].url, fail_status=500)


def test_backend_4xx_is_returned_as_is_and_not_retried(procs: dict[str, Proc]) -> None:
    set_mock(procs["a"].url, fail_rate=1, fail_status=422)
    r = httpx.post(procs["gw"].base_url + "/chat/completions", json={"model": "chat", "messages": MSG})
    assert r.status_code == 422 and r.json()["error"]["code"] == "mock_injected_failure"
    set_mock(procs["a"].url, fail_status=500)


def test_health_endpoints_and_metrics(procs: dict[str, Proc]) -> None:
    gw = procs["gw"]
    assert httpx.get(gw.url + "/health").json()["status"] == "ok"
    bk = {b["name"]: b for b in httpx.get(gw.url + "/health/backends").json()["backends"]}
    assert set(bk) == {"primary", "secondary", "mock"}
    for field in (
        "name",
        "kind",
        "healthy",
        "consecutive_failures",
        "last_error",
        "last_check",
        "last_latency_ms",
    ):
        assert field in bk["primary"]
    assert bk["primary"]["kind"] == "openai" and bk["primary"]["last_check"] is not None
    client(gw).chat.completions.create(model="chat", messages=MSG)
    text = httpx.get(gw.url + "/metrics").text
    assert 'hybridgate_backend_attempts_total{backend="primary",outcome="ok"}' in text
    assert 'hybridgate_backend_healthy{backend="primary"} 1.0' in text
    assert "hybridgate_backend_latency_seconds_bucket" in text


BAD_INPUTS = [
    (b"{not json", 400, None),
    (b'["a list"]', 400, None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    (b'{"model": "chat"}', 400, "messages"),
    (b'{"model": "chat", "messages": []}', 400, "messages"),
    (b'{"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
    (
        b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
        400,
        "temperature",
    ),
    (
        b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
        400,
        "max_tokens",
    ),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_INPUTS)
def test_bad_input_gets_the_right_status_and_never_reaches_a_backend(
    procs: dict[str, Proc], body: bytes, status: int, param: str | None
) -> None:
    before = set_mock(procs["a"].url)["requests"] + set_mock(procs["b"].url)["requests"]
    r = httpx.post(
        procs["gw"].base_url + "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    after = set_mock(procs["a"].url)["requests"] + set_mock(procs["b"].url)["requests"]
    assert after == before


def test_body_over_the_limit_is_413(procs: dict[str, Proc]) -> None:
    big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(procs["gw"].base_url + "/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no content-length: the limit still holds while reading
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    r = httpx.post(procs["gw"].base_url + "/chat/completions", content=chunked())
    assert r.status_code == 413


def test_unknown_path_and_wrong_method(procs: dict[str, Proc]) -> None:
    assert httpx.get(procs["gw"].base_url + "/nothing").status_code == 404
    r = httpx.get(procs["gw"].base_url + "/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


# --- tests with their own gateway (they change health state or configuration) -------------------


def test_master_key_is_required_on_v1_when_set(spawn: dict[str, Callable[..., Proc]]) -> None:
    gw = spawn["gateway"](None, env={"HYBRIDGATE_MASTER_KEY": "sekret"})
    with pytest.raises(openai.AuthenticationError):
        client(gw, api_key="wrong").models.list()
    r = httpx.get(gw.base_url + "/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert "mock" in [m.id for m in client(gw, api_key="sekret").models.list()]
    assert httpx.get(gw.url + "/health").status_code == 200  # liveness stays open


def test_embedded_default_answers_the_canary(spawn: dict[str, Callable[..., Proc]], tmp_path: Any) -> None:
    gw = spawn["gateway"](None, workdir=tmp_path)
    assert (
        client(gw).chat.completions.create(model="mock", messages=MSG).choices[0].message.content == "Paris"
    )


def test_backend_killed_mid_run_loses_no_requests(spawn: dict[str, Callable[..., Proc]]) -> None:
    a, b = spawn["mock"](model=["m"], latency_ms=5), spawn["mock"](model=["m"], latency_ms=5)
    gw = spawn["gateway"]({"backends": [backend("a", a, 1, "m"), backend("b", b, 2, "m")]})
    c = client(gw)
    results: list[str] = []
    errors: list[Exception] = []

    def worker() -> None:
        for _ in range(40):
            try:
                r = c.chat.completions.with_raw_response.create(model="chat", messages=MSG)
                results.append(r.headers["x-hybridgate-backend"])
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(results) >= 20, what="some requests served")
    a.kill()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 160
    assert "a" in results and results[-1] == "b"
    bk = {x["name"]: x for x in httpx.get(gw.url + "/health/backends").json()["backends"]}
    assert bk["a"]["healthy"] is False and bk["a"]["last_error"]


def test_backend_recovers_after_its_cooldown(spawn: dict[str, Callable[..., Proc]]) -> None:
    a, b = spawn["mock"](model=["m"]), spawn["mock"](model=["m"])
    # A cooldown of 3 s, not 1: on a loaded machine the steps below took longer than 1 s, and a's passing
    # health check ended the cooldown before the test looked.
    health = {"path": "/health", "interval_s": 1.0, "timeout_s": 0.5, "failures_to_trip": 2, "cooldown_s": 3}
    gw = spawn["gateway"]({"backends": [backend("a", a, 1, "m", health=health), backend("b", b, 2, "m")]})
    set_mock(a.url, fail_rate=1)
    c = client(gw)

    def state() -> dict[str, Any]:
        return {x["name"]: x for x in httpx.get(gw.url + "/health/backends").json()["backends"]}["a"]

    # Two failed calls in a row trip the breaker; a passing health check between them (every 1 s, and
    # the mock's /health passes) starts the count again, so on a slow machine it can take a few more.
    for _ in range(10):
        c.chat.completions.create(model="chat", messages=MSG)
        if state()["healthy"] is False:
            break
    assert state()["healthy"] is False
    served_before = set_mock(a.url)["requests"]
    r = c.chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert r.headers["x-hybridgate-backend"] == "b"
    assert set_mock(a.url)["requests"] == served_before  # skipped while unhealthy
    set_mock(a.url, fail_rate=0)
    wait_until(lambda: state()["healthy"], timeout=10, what="backend a healthy after cooldown")
    r = c.chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert r.headers["x-hybridgate-backend"] == "a"


def test_priority_environment_override(spawn: dict[str, Callable[..., Proc]]) -> None:
    a, b = spawn["mock"](model=["m"]), spawn["mock"](model=["m"])
    cfg = {
        "backends": [backend("local1", a, 1, "m", group="local"), backend("cloud1", b, 2, "m", group="cloud")]
    }
    gw = spawn["gateway"](cfg, env={"HYBRIDGATE_PRIORITY": "cloud,local"})
    r = client(gw).chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert r.headers["x-hybridgate-backend"] == "cloud1"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "hybridgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("backends: []", "backends"),
        ("backends:\n  - {name: a, kind: openai, models: {x: y}}", "needs a base_url"),
        (
            "backends:\n  - {name: a, kind: mock, models: {x: y}, price: {input_per_mtok: lots}}",
            "backends[0]('a').price.input_per_mtok",
        ),
        ("backends:\n  - {name: a, kind: mock, models: {x: y}, prioriti: 1}", "prioriti"),
        ("backends:\n  - {name: a, kind: gpu, models: {x: y}}", "kind"),
        (
            "backends:\n  - {name: a, kind: openai, base_url: 'http://h/v1', api_key: '${NOPE_NOT_SET}', models: {x: y}}",
            "NOPE_NOT_SET",
        ),
        ("backends: [", "not valid YAML"),
        (
            'backends:\n  - {name: a, kind: openai, base_url: "http://h/v1", api_key: "sk-1\\n", models: {x: y}}',
            "api_key has a line break",
        ),
    ],
)
def test_bad_config_exits_3_naming_the_field(tmp_path: Any, yaml_text: str, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    r = run_cli("serve", "--config", str(p), "--port", str(free_port()))
    assert r.returncode == 3, r.stderr
    assert needle in r.stderr


def test_missing_config_file_and_bad_priority_exit_3(tmp_path: Any) -> None:
    r = run_cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 3 and "not found" in r.stderr
    r = run_cli("serve", "--port", str(free_port()), env={"HYBRIDGATE_PRIORITY": "gpu"})
    assert r.returncode == 3 and "HYBRIDGATE_PRIORITY" in r.stderr


def test_stream_that_stalls_mid_way_ends_with_an_error_not_a_hang(procs: dict[str, Proc]) -> None:
    set_mock(procs["a"].url, stall_mid_stream=True)
    t0 = time.monotonic()
    with httpx.stream(
        "POST",
        procs["gw"].base_url + "/chat/completions",
        timeout=15,
        json={"model": "chat", "messages": [{"role": "user", "content": "go on"}], "stream": True},
    ) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert time.monotonic() - t0 < 5  # first_byte_s (2 s) bounds the stall, not total_s
    assert events[-1] == "data: [DONE]" and "stalled" in events[-2]


def test_unknown_model_names_do_not_create_metric_series(procs: dict[str, Proc]) -> None:
    for i in range(3):
        httpx.post(
            procs["gw"].base_url + "/chat/completions", json={"model": f"made-up-{i}", "messages": MSG}
        )
    text = httpx.get(procs["gw"].url + "/metrics").text
    assert "made-up-" not in text
    assert 'hybridgate_requests_total{model="(unknown)",status="404"}' in text
