"""Budgets and rate limits on a running gateway: a priced backend (a real mock-server), concurrent calls."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from _accounts import gateway_config, sqlite_url
from hybridgate.testing.procs import Proc, start_gateway, start_mock_server

MASTER = "budget-master-key-0123456789"
PROMPT = [{"role": "user", "content": "Tell me something about budgets."}]
# Per token: $5 per million in, $20 per million out. A 20-token answer costs about $0.0005.
PRICE = {"input_per_mtok": 5.0, "output_per_mtok": 20.0}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("budget")
    # 300 ms per answer: concurrent calls are really in flight together when the budget is decided.
    mock = start_mock_server(model=["served"], latency_ms=300)
    backends: list[dict[str, Any]] = [
        {
            "name": "paid",
            "kind": "openai",
            "base_url": mock.base_url,
            "models": {"paid": "served", "mixed": "served"},
            "priority": 1,
            "price": PRICE,
        },
        {
            "name": "free",
            "kind": "mock",
            "models": {"free": "mock", "mixed": "mock"},
            "priority": 2,
            "price": {"free": True},
        },
        {"name": "unpriced", "kind": "mock", "models": {"unpriced": "mock"}},
    ]
    proc = start_gateway(gateway_config(sqlite_url(d), backends, d), env={"HYBRIDGATE_MASTER_KEY": MASTER})
    yield proc
    proc.stop()
    mock.stop()


def new_key(gw: Proc, name: str, **limits: Any) -> dict[str, Any]:
    r = httpx.post(
        gw.url + "/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}, json={"name": name, **limits}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def usage(gw: Proc, key: str, group_by: str = "backend") -> dict[str, Any]:
    r = httpx.get(
        gw.base_url + "/usage", params={"group_by": group_by}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def spent(gw: Proc, key_id: str) -> float:
    r = httpx.get(f"{gw.url}/admin/keys/{key_id}", headers={"Authorization": f"Bearer {MASTER}"})
    return float(r.json()["spent"])


async def _one(client: openai.AsyncOpenAI, model: str) -> tuple[str, Any]:
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=PROMPT, max_tokens=20
        )  # type: ignore[arg-type]
    except openai.APIStatusError as e:
        return "refused", e
    return "ok", raw


def test_concurrent_calls_never_push_spend_past_the_budget(gw: Proc) -> None:
    key = new_key(gw, "tight", budget_usd=0.01)

    async def burst(n: int) -> list[tuple[str, Any]]:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0) as c:
            return list(await asyncio.gather(*[_one(c, "paid") for _ in range(n)]))

    # 40 calls at once would cost about $0.02 without reservations: twice the budget.
    results = asyncio.run(burst(40))
    # Then one at a time until the gateway says no: the budget really gets used up.
    sync = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
    for _ in range(100):
        try:
            raw = sync.chat.completions.with_raw_response.create(model="paid", messages=PROMPT, max_tokens=20)  # type: ignore[arg-type]
        except openai.APIStatusError as e:
            results.append(("refused", e))
            break
        results.append(("ok", raw))
    else:
        pytest.fail("the budget never ran out")

    ok = [r for kind, r in results if kind == "ok"]
    refused = [r for kind, r in results if kind == "refused"]
    assert ok and refused
    for e in refused:
        assert e.status_code == 429
        assert e.body["code"] == "budget_exceeded"
        assert "'tight' has spent $" in e.body["message"] and "of its $0.010000 budget" in e.body["message"]
        assert "this call could cost up to $" in e.body["message"]

    report = usage(gw, key["key"])
    total = report["total_cost_usd"]
    assert 0 < total <= 0.01
    assert spent(gw, key["id"]) == pytest.approx(total, abs=1e-9) and spent(gw, key["id"]) <= 0.01
    # What the client was told each call cost adds up to what the ledger holds.
    told = sum(float(r.headers["x-hybridgate-cost-usd"]) for r in ok)
    assert told == pytest.approx(total, abs=1e-6)
    assert report["data"][0]["requests"] == len(ok)
    # The last refusal was right to refuse: this call's worst case no longer fitted.
    worst = float(re.search(r"could cost up to \$([0-9.]+)", refused[-1].body["message"]).group(1))  # type: ignore[union-attr]
    assert total + worst > 0.01


def test_free_backends_are_never_blocked_and_refusal_falls_back_to_them(gw: Proc) -> None:
    key = new_key(gw, "broke", budget_usd=0.0)
    c = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="paid", messages=PROMPT, max_tokens=20)  # type: ignore[arg-type]
    assert e.value.body["code"] == "budget_exceeded"
    assert c.chat.completions.create(model="free", messages=PROMPT, max_tokens=20).choices[0].message.content  # type: ignore[arg-type]
    # "mixed" is served by the paid backend first; over budget, the router moves on to the free one.
    raw = c.chat.completions.with_raw_response.create(model="mixed", messages=PROMPT, max_tokens=20)  # type: ignore[arg-type]
    assert raw.headers["x-hybridgate-backend"] == "free"


def test_a_budgeted_key_may_not_use_a_backend_without_a_price(gw: Proc) -> None:
    budgeted = new_key(gw, "careful", budget_usd=5.0)
    c = openai.OpenAI(base_url=gw.base_url, api_key=budgeted["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="unpriced", messages=PROMPT)  # type: ignore[arg-type]
    assert e.value.body["code"] == "unknown_cost" and "no price" in e.value.body["message"]
    unlimited = new_key(gw, "unlimited")
    c2 = openai.OpenAI(base_url=gw.base_url, api_key=unlimited["key"], max_retries=0)
    assert c2.chat.completions.create(model="unpriced", messages=PROMPT).choices  # type: ignore[arg-type]


def test_without_max_tokens_a_budgeted_call_is_capped_and_reserved_at_the_cap(gw: Proc) -> None:
    key = new_key(gw, "uncapped", budget_usd=0.05)
    c = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
    # 4096 output tokens at $20/M is $0.08: more than the budget, so the call is refused up front...
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="paid", messages=PROMPT)  # type: ignore[arg-type]
    assert "max_tokens capped at 4096" in e.value.body["message"]
    # ...while with max_tokens set it fits.
    assert c.chat.completions.create(model="paid", messages=PROMPT, max_tokens=50).choices  # type: ignore[arg-type]


def test_requests_per_minute_limit_is_429_with_retry_after(gw: Proc) -> None:
    key = new_key(gw, "slow", rpm=3)
    c = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
    for _ in range(3):
        c.chat.completions.create(model="free", messages=PROMPT)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="free", messages=PROMPT)  # type: ignore[arg-type]
    assert (
        e.value.body["code"] == "rate_limit_exceeded" and "3 requests per minute" in e.value.body["message"]
    )
    retry = int(e.value.response.headers["retry-after"])
    assert 1 <= retry <= 60
    # Another key is not affected by this one's limit.
    other = new_key(gw, "other-rpm", rpm=3)
    assert openai.OpenAI(base_url=gw.base_url, api_key=other["key"], max_retries=0).models.list()


def test_metrics_show_spend_budget_left_and_refusals(gw: Proc) -> None:
    key = new_key(gw, "metered", budget_usd=0.001)
    c = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
    c.chat.completions.create(model="paid", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="paid", messages=PROMPT, max_tokens=1000)  # type: ignore[arg-type]
    text = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {MASTER}"}).text

    def value(name: str, *pairs: str) -> float:
        want = ['key="metered"', f'key_id="{key["id"]}"', *pairs]
        for line in text.splitlines():
            if line.startswith(name + "{") and all(p in line for p in want):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {name} with {want} in /metrics")

    spend = value("hybridgate_key_spend_usd_total", 'backend="paid"')
    assert 0 < spend < 0.001
    assert value("hybridgate_key_budget_remaining_usd") == pytest.approx(0.001 - spend, abs=1e-9)
    assert value("hybridgate_rejected_calls_total", 'reason="budget"') >= 1


def test_metrics_show_no_key_series_without_the_master_key(gw: Proc) -> None:
    key = new_key(gw, "private", budget_usd=0.5)
    c = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
    c.chat.completions.create(model="paid", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
    for headers in ({}, {"Authorization": f"Bearer {key['key']}"}, {"Authorization": "Bearer wrong"}):
        text = httpx.get(gw.url + "/metrics", headers=headers).text
        assert "hybridgate_requests_total" in text  # the rest stays public
        assert "hybridgate_key_" not in text and "hybridgate_rejected_calls" not in text
        assert key["id"] not in text and 'key="private"' not in text
    full = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {MASTER}"}).text
    assert f'key_id="{key["id"]}"' in full
