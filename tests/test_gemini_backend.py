"""The gemini backend kind, end to end: the official openai client -> `hybridgate serve` -> a gemini backend
on a real `hybridgate mock-gemini` process (itself checked against the google-genai SDK in
test_gemini_mock.py). Answers, streams, finish reasons, errors, fallback, and the ledger's tokens and cost
from the shipped price catalogue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from _accounts import gateway_config, ledger_rows, sqlite_url, wait_until
from hybridgate.config import parse_config
from hybridgate.config._catalogue import CATALOGUE
from hybridgate.ledger import price_usage
from hybridgate.protocol import Usage
from hybridgate.testing.procs import (
    Proc,
    set_mock_behaviour,
    start_gateway,
    start_mock_gemini,
    start_mock_server,
)

KEY = "gemini-upstream-key"
MASTER = "gemini-master-key-0123456789"
CANARY = [{"role": "user", "content": "What is the capital of France? One word."}]
LONG = [{"role": "user", "content": "Describe how a gateway routes requests"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("gemini")
    procs: list[Proc] = []
    try:
        yield from _env(d, procs)
    finally:  # whatever started is stopped, even when a later start failed
        for p in procs:
            p.stop()


def _env(d: Path, procs: list[Proc]) -> Iterator[dict[str, Any]]:
    def started(p: Proc) -> Proc:
        procs.append(p)
        return p

    gem = started(
        start_mock_gemini(api_key=KEY, model=["gemini-2.5-flash", "gemini-2.5-pro", "gemini-exp-1206"])
    )
    # Faults are switched on this one only, so the happy-path backend's health never depends on test order.
    flaky = started(start_mock_gemini(api_key=KEY))
    bad_key = started(start_mock_gemini(api_key="another-key"))
    fallback = started(start_mock_server(model=["fallback-model"]))
    database = sqlite_url(d)
    backends = [
        # Four lines make a Gemini backend; its price comes from the catalogue.
        {
            "name": "gem",
            "kind": "gemini",
            "base_url": gem.url,
            "api_key": KEY,
            "models": {"flash": "gemini-2.5-flash", "pro": "gemini-2.5-pro", "exp": "gemini-exp-1206"},
            "priority": 1,
        },
        {
            "name": "gem-flaky",
            "kind": "gemini",
            "base_url": flaky.url,
            "api_key": KEY,
            "models": {"flaky": "gemini-2.5-flash", "flaky-pro": "gemini-2.5-pro"},
            "priority": 1,
            "health": {"cooldown_s": 0},
        },
        {
            "name": "gem-beta",
            "kind": "gemini",
            "base_url": gem.url,
            "api_key": KEY,
            "models": {"flash-beta": "gemini-2.5-flash"},
            "options": {"api_version": "v1beta"},
        },
        {
            "name": "gem-badkey",
            "kind": "gemini",
            "base_url": bad_key.url,
            "api_key": KEY,
            "models": {"keyed": "gemini-2.5-flash"},
            "priority": 1,
        },
        {
            "name": "gem-probed",
            "kind": "gemini",
            "base_url": gem.url,
            "api_key": KEY,
            "models": {"probed": "gemini-2.5-flash"},
            "health": {"mode": "active", "interval_s": 0.2},
        },
        {
            "name": "gem-probed-badkey",
            "kind": "gemini",
            "base_url": bad_key.url,
            "api_key": KEY,
            "models": {"probed-badkey": "gemini-2.5-flash"},
            "health": {"mode": "active", "interval_s": 0.2, "failures_to_trip": 1},
        },
        {
            "name": "gem-missing",
            "kind": "gemini",
            "base_url": gem.url,
            "api_key": KEY,
            "models": {"ghost": "gemini-0-nothing"},
            "priority": 1,
        },
        {
            "name": "gpu",
            "kind": "openai",
            "base_url": fallback.base_url,
            "models": {
                "flash": "fallback-model",
                "flaky": "fallback-model",
                "keyed": "fallback-model",
                "ghost": "fallback-model",
            },
            "priority": 2,
            "price": {"free": True},
        },
    ]
    cfg = gateway_config(database, backends, d)
    gw = started(start_gateway(cfg, env={"HYBRIDGATE_MASTER_KEY": MASTER}))
    client = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)
    yield {"gw": gw, "flaky": flaky, "client": client, "database": database}


@pytest.fixture
def gem(env: dict[str, Any]) -> Iterator[Proc]:
    p: Proc = env["flaky"]
    yield p
    set_mock_behaviour(p.url, api_key=KEY, gemini=True, fail_rate=0, error_mid_stream=False)


def _rows(env: dict[str, Any], request_id: str) -> list[dict[str, Any]]:
    return wait_until(
        lambda: ledger_rows(env["database"], "request_id = $1", (request_id,)), what="the ledger row"
    )


def test_chat_non_streamed_canary(env: dict[str, Any]) -> None:
    raw = env["client"].chat.completions.with_raw_response.create(model="flash", messages=CANARY)
    r = raw.parse()
    assert r.choices[0].message.content == "Paris"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "flash"
    assert r.usage.completion_tokens == 1 and r.usage.prompt_tokens > 0
    assert raw.headers["x-hybridgate-backend"] == "gem"
    # Priced from the catalogue's gemini-2.5-flash entry: the ledger row says what the answer said.
    [row] = _rows(env, raw.headers["x-request-id"])
    assert (row["backend"], row["backend_model"], row["ok"]) == ("gem", "gemini-2.5-flash", 1)
    assert row["input_tokens"] == r.usage.prompt_tokens and row["output_tokens"] == 1
    e = CATALOGUE["gemini-2.5-flash"]
    expected = (r.usage.prompt_tokens * e.input_per_mtok + 1 * e.output_per_mtok) / 1e6
    assert row["cost_usd"] == pytest.approx(expected)
    assert float(raw.headers["x-hybridgate-cost-usd"]) == pytest.approx(expected, abs=1e-8)


def test_budgets_hold_on_catalogue_prices(env: dict[str, Any]) -> None:
    def key(name: str, budget: float) -> str:
        r = httpx.post(
            env["gw"].url + "/admin/keys",
            headers={"Authorization": f"Bearer {MASTER}"},
            json={"name": name, "budget_usd": budget},
        )
        return str(r.json()["key"])

    rich = openai.OpenAI(base_url=env["gw"].base_url, api_key=key("gem-rich", 1.0), max_retries=0)
    r = rich.chat.completions.create(model="flash", messages=CANARY, max_tokens=8)
    assert r.choices[0].message.content == "Paris"
    # A model the catalogue does not list has an unknown cost: a budgeted key may not use it.
    with pytest.raises(openai.PermissionDeniedError) as e:
        rich.chat.completions.create(model="exp", messages=CANARY, max_tokens=8)
    assert e.value.body["code"] == "unknown_cost" and "gemini-exp" not in e.value.message
    # Reserved at the catalogue's Gemini 2.5 Pro prices: 1,000 output tokens at $10 per million is more
    # than a $0.000001 budget, and 1,000,000 of them more than $1. ("pro" has no free fallback here; a
    # model that has one is served by it instead, which test_budget covers.)
    poor = openai.OpenAI(base_url=env["gw"].base_url, api_key=key("gem-poor", 0.000001), max_retries=0)
    with pytest.raises(openai.RateLimitError) as e2:
        poor.chat.completions.create(model="pro", messages=CANARY, max_tokens=1000)
    assert e2.value.body["code"] == "budget_exceeded" and "$0.01" in e2.value.message
    with pytest.raises(openai.RateLimitError):
        rich.chat.completions.create(model="pro", messages=CANARY, max_tokens=1_000_000)
    assert rich.chat.completions.create(model="pro", messages=CANARY, max_tokens=1000).choices


def test_system_and_multi_turn_are_translated(env: dict[str, Any]) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
    ]
    r = env["client"].chat.completions.create(
        model="flash", messages=messages, temperature=0.3, top_p=0.9, seed=4, max_tokens=20
    )
    assert r.choices[0].message.content == "Paris"


def test_stream_with_usage_from_the_final_event_only(env: dict[str, Any]) -> None:
    client = env["client"]
    whole = client.chat.completions.create(model="flash", messages=LONG)
    chunks = list(
        client.chat.completions.create(
            model="flash", messages=LONG, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    # Not summed per event: the mock repeats the prompt count on every one of them.
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.model for c in chunks} == {"flash"}


def test_stream_without_include_usage_has_no_usage_chunk(env: dict[str, Any]) -> None:
    chunks = list(env["client"].chat.completions.create(model="flash", messages=CANARY, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Paris"


def test_n_candidates(env: dict[str, Any]) -> None:
    r = env["client"].chat.completions.create(model="flash", messages=LONG, n=2, max_tokens=4)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage.completion_tokens == 8
    chunks = list(
        env["client"].chat.completions.create(
            model="flash",
            messages=LONG,
            n=2,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {0: "", 1: ""}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == {0: r.choices[0].message.content, 1: r.choices[1].message.content}
    assert chunks[-1].usage.completion_tokens == 8


def test_stop_and_max_tokens(env: dict[str, Any]) -> None:
    client = env["client"]
    full = client.chat.completions.create(model="flash", messages=LONG).choices[0].message.content
    word = full.split()[2]
    cut = client.chat.completions.create(model="flash", messages=LONG, stop=[word]).choices[0]
    assert word not in cut.message.content and cut.finish_reason == "stop"
    short = client.chat.completions.create(model="flash", messages=LONG, max_tokens=2).choices[0]
    assert short.finish_reason == "length"
    assert short.message.content and full.startswith(short.message.content)


def test_completions_endpoint(env: dict[str, Any]) -> None:
    r = env["client"].completions.create(model="flash", prompt="The capital of France is")
    assert r.choices[0].text == "Paris" and r.choices[0].finish_reason == "stop"
    chunks = list(
        env["client"].completions.create(model="flash", prompt="The capital of France is", stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Paris"


def test_v1beta_backend(env: dict[str, Any]) -> None:
    r = env["client"].chat.completions.with_raw_response.create(model="flash-beta", messages=CANARY)
    assert r.parse().choices[0].message.content == "Paris"
    assert r.headers["x-hybridgate-backend"] == "gem-beta"


def test_safety_and_blocked_prompt_are_content_filter(env: dict[str, Any]) -> None:
    client = env["client"]
    blocked = client.chat.completions.create(
        model="flash", messages=[{"role": "user", "content": "mock:block me"}]
    )
    c = blocked.choices[0]
    assert c.finish_reason == "content_filter" and c.message.content is None
    assert "blocked the prompt" in c.message.refusal and "SAFETY" in c.message.refusal
    cut = client.chat.completions.create(
        model="flash", messages=[{"role": "user", "content": "mock:safety go on"}]
    )
    c = cut.choices[0]
    assert c.finish_reason == "content_filter"
    assert "SAFETY" in c.message.refusal and "HARM_CATEGORY_DANGEROUS_CONTENT" in c.message.refusal
    chunks = list(
        client.chat.completions.create(
            model="flash", messages=[{"role": "user", "content": "mock:block me"}], stream=True
        )
    )
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "content_filter"


def test_overload_falls_back_before_the_first_byte(env: dict[str, Any], gem: Proc) -> None:
    set_mock_behaviour(gem.url, api_key=KEY, gemini=True, fail_rate=1, fail_status=503)
    client = env["client"]
    raw = client.chat.completions.with_raw_response.create(model="flaky", messages=CANARY)
    assert raw.headers["x-hybridgate-backend"] == "gpu"
    assert raw.headers["x-hybridgate-attempts"] == "2"
    stream = client.chat.completions.with_raw_response.create(model="flaky", messages=CANARY, stream=True)
    assert stream.headers["x-hybridgate-backend"] == "gpu"
    assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices) == "Paris"
    rows = _rows(env, raw.headers["x-request-id"])
    assert [(r["backend"], r["ok"], r["status"]) for r in rows] == [("gem-flaky", 0, 503), ("gpu", 1, 200)]
    assert "overloaded" in rows[0]["error"]
    set_mock_behaviour(gem.url, api_key=KEY, gemini=True, fail_status=429)
    raw = client.chat.completions.with_raw_response.create(model="flaky", messages=CANARY)
    assert raw.headers["x-hybridgate-backend"] == "gpu"
    rows = _rows(env, raw.headers["x-request-id"])
    assert [(r["backend"], r["status"]) for r in rows] == [("gem-flaky", 429), ("gpu", 200)]
    assert "RESOURCE_EXHAUSTED" in rows[0]["error"]


def test_error_event_mid_stream_ends_with_the_terminal_error(env: dict[str, Any], gem: Proc) -> None:
    set_mock_behaviour(gem.url, api_key=KEY, gemini=True, error_mid_stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for c in env["client"].chat.completions.create(model="flaky-pro", messages=LONG, stream=True):
            got.extend(ch.delta.content or "" for ch in c.choices)
    assert "".join(got), "the chunks before the error reach the client"
    assert "failed mid-stream" in str(e.value) and "INTERNAL" in str(e.value)
    # The raw stream: the error event, then [DONE], as for every backend.
    with httpx.stream(
        "POST",
        env["gw"].base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {MASTER}"},
        json={"model": "flaky-pro", "messages": LONG, "stream": True},
    ) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "stream_interrupted"


def test_client_mistakes_are_400_in_openai_shape(env: dict[str, Any]) -> None:
    client = env["client"]
    # Valid for OpenAI, refused by Google (at most 8 candidates): its message is kept, in OpenAI's shape.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="pro", messages=CANARY, n=9)
    assert e.value.body["message"].startswith("Gemini: ") and "candidate_count" in e.value.body["message"]
    assert e.value.body["code"] == "invalid_argument"
    # What the gemini kind cannot translate is refused before anything is sent, naming the parameter.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="pro",
            messages=CANARY,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    assert e.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="pro",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
            ],
        )
    assert e.value.body["param"] == "messages[0].content[0]"
    # None of these touched the backend's health.
    health = httpx.get(env["gw"].url + "/health/backends").json()
    gem = next(b for b in health["backends"] if b["name"] == "gem")
    assert gem["healthy"] is True


def test_refused_key_and_missing_model_are_configuration_errors(env: dict[str, Any]) -> None:
    client = env["client"]
    raw = client.chat.completions.with_raw_response.create(model="keyed", messages=CANARY)
    assert raw.headers["x-hybridgate-backend"] == "gpu"  # not the client's 400: the next backend answered
    rows = _rows(env, raw.headers["x-request-id"])
    assert "key or project was refused" in rows[0]["error"] and "API key not valid" in rows[0]["error"]
    raw = client.chat.completions.with_raw_response.create(model="ghost", messages=CANARY)
    assert raw.headers["x-hybridgate-backend"] == "gpu"
    health = httpx.get(env["gw"].url + "/health/backends").json()
    missing = next(b for b in health["backends"] if b["name"] == "gem-missing")
    assert "ghost" in missing["model_errors"]


def test_health_is_passive_by_default_and_the_opt_in_probe_lists_models(env: dict[str, Any]) -> None:
    def backends() -> dict[str, Any]:
        return {b["name"]: b for b in httpx.get(env["gw"].url + "/health/backends").json()["backends"]}

    gem = backends()["gem"]
    assert gem["health_checks"] == "passive" and gem["last_check"] is None
    # The active probe is the free model listing: it passes with a good key, and a refused key benches.
    probed = wait_until(lambda: (b := backends()["gem-probed"])["last_check"] and b, what="a probe")
    assert probed["health_checks"] == "active" and probed["healthy"] is True
    bad = wait_until(
        lambda: (b := backends()["gem-probed-badkey"])["last_error"] and b, what="a failed probe"
    )
    assert bad["healthy"] is False and "API key not valid" in bad["last_error"]


# ---- configuration and prices (no processes) ------------------------------------------------------------


def _backend(**kw: Any) -> Any:
    b = {"name": "g", "kind": "gemini", "api_key": "k", "models": {"m": "gemini-2.5-pro"}, **kw}
    return parse_config({"backends": [b]}).backends[0]


def test_catalogue_prices_by_default_and_explicit_fields_win() -> None:
    b = _backend()
    p = b.price_for("gemini-2.5-pro")
    assert (p.input_per_mtok, p.output_per_mtok) == (1.25, 10.0)
    # Gemini 2.5 Pro bills prompts over 200k tokens at its long-context rates, output included.
    assert price_usage(p, Usage(200_001, 1000), 0) == pytest.approx((200_001 * 2.5 + 1000 * 15.0) / 1e6)
    assert price_usage(p, Usage(1000, 1000), 0) == pytest.approx((1000 * 1.25 + 1000 * 10.0) / 1e6)
    own = _backend(price={"catalogue": "auto", "input_per_mtok": 1.0})
    assert own.price_for("gemini-2.5-pro").input_per_mtok == 1.0
    assert own.price_for("gemini-2.5-pro").output_per_mtok == 10.0
    # A model the catalogue does not list is an unknown cost, not free.
    unknown = _backend(models={"m": "gemini-experimental"}).price_for("gemini-experimental")
    assert unknown.is_zero and not unknown.free
    # An openai backend can name an entry.
    o = parse_config(
        {
            "backends": [
                {
                    "name": "o",
                    "kind": "openai",
                    "base_url": "http://127.0.0.1:1/v1",
                    "models": {"m": "x"},
                    "price": {"catalogue": "gpt-4o-mini"},
                }
            ]
        }
    ).backends[0]
    assert (o.price_for("x").input_per_mtok, o.price_for("x").output_per_mtok) == (0.15, 0.6)


def test_bad_gemini_configs_name_the_field(tmp_path: Path) -> None:
    from hybridgate.backends import build_backend
    from hybridgate.config import ConfigError

    with pytest.raises(ConfigError, match="not in the price catalogue"):
        _backend(price={"catalogue": "gemini-9"})
    with pytest.raises(ValueError, match="needs an api_key"):
        build_backend(
            parse_config(
                {"backends": [{"name": "g", "kind": "gemini", "models": {"m": "gemini-2.5-pro"}}]}
            ).backends[0]
        )
    with pytest.raises(ValueError, match=r"options\.api_version"):
        build_backend(_backend(options={"api_version": "v2"}))
    with pytest.raises(ValueError, match="is not a Gemini model name"):
        build_backend(_backend(models={"m": "../../v1/files"}))


# ---- the real API (skipped unless REAL_API_TESTS=true and GEMINI_API_KEY are set) -----------------------


@pytest.mark.e2e
def test_real_gemini_through_the_gateway(
    gateway_factory: Any, openai_client_factory: Any, require_env: Any
) -> None:
    """One short call and one short stream to Gemini 2.5 Flash Lite, through the gateway, metered against the
    pytest plugin's spending cap (`--max-cost-usd`; a call that could cross it skips this test)."""
    key = require_env("GEMINI_API_KEY")
    master = "real-gemini-master-key-0123456789"
    backends = [
        {
            "name": "gemini",
            "kind": "gemini",
            "api_key": "${GEMINI_API_KEY}",
            "models": {"lite": "gemini-2.5-flash-lite"},
        }
    ]
    gw = gateway_factory({"backends": backends}, env={"GEMINI_API_KEY": key, "HYBRIDGATE_MASTER_KEY": master})
    client = openai_client_factory(gw)
    raw = client.chat.completions.with_raw_response.create(model="lite", messages=CANARY, max_tokens=16)
    r = raw.parse()
    assert "paris" in (r.choices[0].message.content or "").lower()
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert float(raw.headers["x-hybridgate-cost-usd"]) > 0
    chunks = list(
        client.chat.completions.create(
            model="lite",
            messages=CANARY,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).lower()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
