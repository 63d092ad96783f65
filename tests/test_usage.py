"""Usage reports: GET /v1/usage per key (the master key sees all) and `hybridgate usage`, one ledger."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from _accounts import MSG, cli, gateway_config, sqlite_url
from hybridgate.testing.procs import Proc, start_gateway, start_mock_server

MASTER = "usage-master-key-0123456789"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A gateway with a priced and a free backend; alice makes 3 calls, bob 2, the master key 1."""
    d = tmp_path_factory.mktemp("usage")
    mock = start_mock_server(model=["served"])
    backends = [
        {
            "name": "paid",
            "kind": "openai",
            "base_url": mock.base_url,
            "models": {"paid": "served"},
            "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
        },
        {"name": "free", "kind": "mock", "models": {"free": "mock"}, "price": {"free": True}},
    ]
    cfg = gateway_config(sqlite_url(d), backends, d)
    gw = start_gateway(cfg, env={"HYBRIDGATE_MASTER_KEY": MASTER})
    keys = {}
    for name in ("alice", "bob"):
        r = httpx.post(
            gw.url + "/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}, json={"name": name}
        )
        keys[name] = r.json()
    calls = {"alice": ["paid", "paid", "free"], "bob": ["free", "free"], "master": ["paid"]}
    for who, models in calls.items():
        c = openai.OpenAI(
            base_url=gw.base_url, api_key=MASTER if who == "master" else keys[who]["key"], max_retries=0
        )
        for m in models:
            c.chat.completions.create(model=m, messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    yield {"gw": gw, "cfg": cfg, "keys": keys}
    gw.stop()
    mock.stop()


def get_usage(gw: Proc, key: str, **params: str) -> httpx.Response:
    return httpx.get(gw.base_url + "/usage", params=params, headers={"Authorization": f"Bearer {key}"})


def by_group(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["group"]: row for row in report["data"]}


def test_a_key_sees_only_its_own_usage(setup: dict[str, Any]) -> None:
    gw, keys = setup["gw"], setup["keys"]
    alice = get_usage(gw, keys["alice"]["key"], group_by="key").json()
    assert alice["object"] == "list"
    assert list(by_group(alice)) == ["alice"]
    assert by_group(alice)["alice"]["requests"] == 3
    bob = by_group(get_usage(gw, keys["bob"]["key"], group_by="model").json())
    assert list(bob) == ["free"] and bob["free"]["requests"] == 2 and bob["free"]["cost_usd"] == 0
    # Alice's paid calls cost money; what she sees adds up to her total.
    mine = get_usage(gw, keys["alice"]["key"], group_by="backend").json()
    assert by_group(mine)["paid"]["requests"] == 2 and by_group(mine)["paid"]["cost_usd"] > 0
    assert mine["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in mine["data"]))
    for row in mine["data"]:
        assert set(row) >= {"group", "requests", "input_tokens", "output_tokens", "cost_usd"}
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0


def test_the_master_key_sees_every_key(setup: dict[str, Any]) -> None:
    gw = setup["gw"]
    everyone = by_group(get_usage(gw, MASTER, group_by="key").json())
    assert {g: r["requests"] for g, r in everyone.items()} == {"alice": 3, "bob": 2, "master": 1}
    assert everyone["alice"]["key_id"] == setup["keys"]["alice"]["id"]
    day = get_usage(gw, MASTER, group_by="day").json()
    assert [r["group"] for r in day["data"]] == [time.strftime("%Y-%m-%d", time.gmtime())]
    assert day["data"][0]["requests"] == 6


def test_from_and_to_bound_the_report(setup: dict[str, Any]) -> None:
    gw = setup["gw"]
    assert get_usage(gw, MASTER, **{"from": "1h"}).json()["data"]  # relative: the last hour
    assert get_usage(gw, MASTER, **{"to": "2001-01-01"}).json()["data"] == []
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    later = get_usage(gw, MASTER, **{"from": future}).json()
    assert later["data"] == [] and later["total_cost_usd"] == 0


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "colour"}, "group_by"),
        ({"from": "last tuesday"}, "from"),
        ({"to": "2020-13-45"}, "to"),
        ({"from": "2024-02-01", "to": "2024-01-01"}, "to"),
        ({"since": "7d"}, "since"),
        ({"from": "inf"}, "from"),
        ({"from": "1e20"}, "from"),
        ({"to": "nan"}, "to"),
        ({"from": "99999999999d"}, "from"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    setup: dict[str, Any], params: dict[str, str], param: str
) -> None:
    r = get_usage(setup["gw"], MASTER, **params)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_usage_needs_a_key(setup: dict[str, Any]) -> None:
    assert httpx.get(setup["gw"].base_url + "/usage").status_code == 401


def test_the_cli_reports_the_same_numbers(setup: dict[str, Any]) -> None:
    cfg: Path = setup["cfg"]
    api = get_usage(setup["gw"], MASTER, group_by="backend").json()
    r = cli("usage", "--by", "backend", "--since", "7d", "--config", str(cfg), "--output", "json")
    assert r.code == 0, r.err
    assert by_group(r.json()) == by_group(api) and r.json()["total_cost_usd"] == api["total_cost_usd"]
    table = cli("usage", "--by", "key", "--config", str(cfg))
    assert table.code == 0 and "alice" in table.out and "bob" in table.out and "total" in table.out
    mine = cli("usage", "--key", setup["keys"]["bob"]["id"], "--config", str(cfg), "-o", "json").json()
    assert sum(x["requests"] for x in mine["data"]) == 2
    bad = cli("usage", "--by", "colour", "--config", str(cfg))
    assert bad.code == 3 and "--by" in bad.err


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--since", "1e20"], "--since"),
        (["--since", "inf"], "--since"),
        (["--until", "nan"], "--until"),
        (["--since", "99999999999d"], "--since"),
        (["--since", "1d", "--until", "2d"], "--until"),
    ],
)
def test_the_cli_names_a_bad_time_and_prints_no_traceback(
    setup: dict[str, Any], args: list[str], option: str
) -> None:
    r = cli("usage", *args, "--config", str(setup["cfg"]))
    assert r.code == 3, (r.code, r.err)
    assert r.err.startswith(f"error: {option}") and "Traceback" not in r.err, r.err
