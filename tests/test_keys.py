"""API keys end to end: the CLI and the admin API against a running gateway, driven by the openai client."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from _accounts import MSG, cli, gateway_config, sqlite_url, wait_until
from hybridgate.auth import KeyCache
from hybridgate.testing.procs import Proc, start_gateway

MASTER = "master-" + "x" * 24
BACKENDS: list[dict[str, Any]] = [
    {"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}},
    {"name": "other", "kind": "mock", "models": {"other": "mock"}, "price": {"free": True}},
]


def client(gw: Proc, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def chat(gw: Proc, key: str, model: str = "mock") -> Any:
    return client(gw, key).chat.completions.create(model=model, messages=MSG, max_tokens=8)  # type: ignore[arg-type]


def status_of(gw: Proc, key: str, model: str = "mock") -> tuple[int, str]:
    """(HTTP status, error message or '') of one chat call with `key`."""
    try:
        chat(gw, key, model)
    except openai.APIStatusError as e:
        return e.status_code, str(e.body.get("message") if isinstance(e.body, dict) else e.body)
    return 200, ""


@pytest.fixture(scope="module")
def cli_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Path]]:
    """A gateway without a master key; keys are managed with the CLI on the same database."""
    d = tmp_path_factory.mktemp("keys-cli")
    cfg = gateway_config(sqlite_url(d), BACKENDS, d)
    gw = start_gateway(cfg)
    yield gw, cfg
    gw.stop()


@pytest.fixture(scope="module")
def admin_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("keys-admin")
    gw = start_gateway(gateway_config(sqlite_url(d), BACKENDS, d), env={"HYBRIDGATE_MASTER_KEY": MASTER})
    yield gw
    gw.stop()


def create(cfg: Path, *args: str) -> str:
    r = cli("keys", "create", "--config", str(cfg), *args)
    assert r.code == 0, r.err
    return r.out.strip()


def key_id(cfg: Path, name: str) -> str:
    r = cli("keys", "list", "--config", str(cfg), "--output", "json")
    assert r.code == 0, r.err
    return str(next(k["id"] for k in r.json() if k["name"] == name))


def test_key_lifecycle_through_the_cli(cli_gw: tuple[Proc, Path]) -> None:
    gw, cfg = cli_gw
    secret = create(cfg, "--name", "alice", "--budget-usd", "2.5", "--rpm", "100")
    assert re.fullmatch(r"hg-[A-Za-z0-9_-]{43}", secret), secret  # 32 random bytes, base64url

    # Created by another process: the running gateway takes it within the key cache's TTL, no restart.
    # Until it has, the gateway is still open and any key works, so what is waited for is the refusal of
    # a made-up key (the reload happened), then the new key must work.
    t0 = time.monotonic()
    wait_until(
        lambda: status_of(gw, "hg-" + "B" * 43)[0] == 401,
        timeout=KeyCache.ttl_s + 5,
        what="the gateway to load the new key and require one",
    )
    assert time.monotonic() - t0 <= KeyCache.ttl_s + 2.0
    assert status_of(gw, secret) == (200, "")

    listed = cli("keys", "list", "--config", str(cfg), "--output", "json")
    assert listed.code == 0
    [alice] = [k for k in listed.json() if k["name"] == "alice"]
    assert {"name", "id", "prefix", "budget", "spent", "status"} <= set(alice)
    assert (
        alice["status"] == "active" and alice["budget"] == 2.5 and alice["spent"] == 0 and alice["rpm"] == 100
    )
    assert secret.startswith(alice["prefix"]) and len(alice["prefix"]) < 16
    assert secret not in listed.out
    table = cli("keys", "list", "--config", str(cfg))
    assert table.code == 0 and "alice" in table.out and secret not in table.out

    # Once a key exists the gateway is authenticated: no key, or a made-up one, is 401.
    no_key = httpx.post(gw.base_url + "/chat/completions", json={"model": "mock", "messages": MSG})
    assert no_key.status_code == 401 and "Missing API key" in no_key.json()["error"]["message"]
    assert status_of(gw, "nothing")[0] == 401
    code, msg = status_of(gw, "hg-" + "A" * 43)
    assert code == 401 and "Invalid API key" in msg

    r = cli("keys", "revoke", alice["id"], "--config", str(cfg))
    assert r.code == 0, r.err
    code, msg = wait_until(
        lambda: (s := status_of(gw, secret))[0] == 401 and s, timeout=KeyCache.ttl_s + 5, what="revocation"
    )
    assert "revoked" in msg and "alice" in msg
    after = next(
        k for k in cli("keys", "list", "--config", str(cfg), "-o", "json").json() if k["id"] == alice["id"]
    )
    assert after["status"] == "revoked"
    assert cli("keys", "revoke", "key_doesnotexist", "--config", str(cfg)).code == 3


def test_only_a_hash_of_the_key_is_stored(cli_gw: tuple[Proc, Path]) -> None:
    _, cfg = cli_gw
    secret = create(cfg, "--name", "hashed")
    files = list(cfg.parent.glob("hybridgate.db*"))
    assert files
    for f in files:
        data = f.read_bytes()
        assert secret.encode() not in data and secret[3:].encode() not in data, f


def test_model_restriction_is_403_and_filters_the_model_list(cli_gw: tuple[Proc, Path]) -> None:
    gw, cfg = cli_gw
    secret = create(cfg, "--name", "only-mock", "--models", "mock")
    wait_until(
        lambda: status_of(gw, secret)[0] == 200, timeout=KeyCache.ttl_s + 5, what="the new key to work"
    )
    code, msg = status_of(gw, secret, "other")
    assert code == 403 and "may not use model 'other'" in msg
    assert [m.id for m in client(gw, secret).models.list()] == ["mock"]
    bad = cli("keys", "create", "--config", str(cfg), "--name", "typo", "--models", "mokc")
    assert bad.code == 3 and "'mokc' is not a model of this gateway" in bad.err


def test_an_expired_key_is_refused_saying_so(cli_gw: tuple[Proc, Path]) -> None:
    gw, cfg = cli_gw
    # Counted from the CLI's clock: long enough to see the key work first, even on a slow machine.
    secret = create(cfg, "--name", "short-lived", "--expires", "6s")
    wait_until(
        lambda: status_of(gw, secret)[0] == 200, timeout=KeyCache.ttl_s + 5, what="the new key to work"
    )
    _, msg = wait_until(lambda: (s := status_of(gw, secret))[0] == 401 and s, timeout=15, what="expiry")
    assert "expired" in msg and "short-lived" in msg
    past = cli("keys", "create", "--config", str(cfg), "--name", "x", "--expires", "2001-01-01")
    assert past.code == 3 and "in the past" in past.err


def test_admin_api_manages_keys_with_the_master_key_only(admin_gw: Proc) -> None:
    url = admin_gw.url + "/admin/keys"
    master = {"Authorization": f"Bearer {MASTER}"}
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401

    r = httpx.post(url, headers=master, json={"name": "bob", "budget": 1, "rpm": 50, "models": ["mock"]})
    assert r.status_code == 201, r.text
    bob = r.json()
    assert bob["key"].startswith("hg-") and bob["name"] == "bob" and bob["status"] == "active"
    assert (bob["budget"], bob["spent"], bob["rpm"], bob["models"]) == (1, 0, 50, ["mock"])
    # Created through this gateway: usable at once, no TTL to wait for.
    assert status_of(admin_gw, bob["key"]) == (200, "")
    # A user key is a key, not the master key.
    r = httpx.get(url, headers={"Authorization": f"Bearer {bob['key']}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_master"

    listed = httpx.get(url, headers=master).json()
    assert [k["name"] for k in listed["data"]] == ["bob"]
    assert bob["key"] not in httpx.get(url, headers=master).text
    assert httpx.get(f"{url}/{bob['id']}", headers=master).json()["prefix"] == bob["prefix"]

    r = httpx.delete(f"{url}/{bob['id']}", headers=master)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    code, msg = status_of(admin_gw, bob["key"])
    assert code == 401 and "revoked" in msg
    assert httpx.post(f"{url}/key_nope/revoke", headers=master).status_code == 404
    assert httpx.put(url, headers=master).status_code == 405

    # The master key itself still works on /v1 and sees every model.
    assert status_of(admin_gw, MASTER, "other") == (200, "")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"budget_usd": 1}, "name"),
        ({"name": "x", "budget_usd": -1}, "budget_usd"),
        ({"name": "x", "budget_usd": 1e300}, "budget_usd"),
        ({"name": "x", "budget": True}, "budget"),
        ({"name": "x", "budget": "5"}, "budget"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "rpm": True}, "rpm"),
        ({"name": "x", "rpm": 2**40}, "rpm"),
        ({"name": "x", "models": ["nope"]}, "models"),
        ({"name": "x", "expires_at": "yesterday-ish"}, "expires_at"),
        ({"name": "x", "expires_at": 1e20}, "expires_at"),
        ({"name": "x", "expires_at": "inf"}, "expires_at"),
        ({"name": "x", "expires_at": "nan"}, "expires_at"),
        ({"name": "x", "expires_at": 253_402_300_800}, "expires_at"),  # 10000-01-01
        ({"name": "x", "expires_at": "99999999999d"}, "expires_at"),
        ({"name": "x", "expires_at": True}, "expires_at"),
        ({"name": "x", "colour": "red"}, "colour"),
    ],
)
def test_admin_api_rejects_a_bad_key_request_naming_the_field_and_stores_nothing(
    admin_gw: Proc, body: dict[str, Any], param: str
) -> None:
    master = {"Authorization": f"Bearer {MASTER}"}
    r = httpx.post(admin_gw.url + "/admin/keys", headers=master, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    listed = httpx.get(admin_gw.url + "/admin/keys", headers=master)
    assert listed.status_code == 200, listed.text
    assert "x" not in [k["name"] for k in listed.json()["data"]]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--expires", "1e20"], "--expires"),
        (["--expires", "nan"], "--expires"),
        (["--expires", "inf"], "--expires"),
        (["--expires", "99999999999d"], "--expires"),
        (["--budget-usd", "inf"], "--budget-usd"),
        (["--budget-usd", "nan"], "--budget-usd"),
        (["--budget-usd", "1e300"], "--budget-usd"),
        (["--rpm", str(2**40)], "--rpm"),
    ],
)
def test_the_cli_refuses_a_number_or_date_out_of_range_before_writing_anything(
    tmp_path: Path, args: list[str], option: str
) -> None:
    cfg = gateway_config(sqlite_url(tmp_path), BACKENDS, tmp_path)
    r = cli("keys", "create", "--config", str(cfg), "--name", "far", *args)
    assert r.code == 3, (r.code, r.err)
    assert r.err.startswith(f"error: {option}:") and "Traceback" not in r.err, r.err
    assert not (tmp_path / "hybridgate.db").exists()  # refused before the database was even opened


def test_a_stored_expiry_no_date_can_show_does_not_break_listing(tmp_path: Path) -> None:
    # Written by a version that did not refuse it: listing still works and shows the number.
    cfg = gateway_config(sqlite_url(tmp_path), BACKENDS, tmp_path)
    create(cfg, "--name", "far")
    with sqlite3.connect(tmp_path / "hybridgate.db") as db:
        db.execute("UPDATE api_keys SET expires_at = 1e20")
    r = cli("keys", "list", "--config", str(cfg), "-o", "json")
    assert r.code == 0, r.err
    assert r.json()[0]["expires_at"].startswith("1e+20")


def test_a_name_an_active_key_has_is_refused_and_free_again_once_revoked(admin_gw: Proc) -> None:
    url, master = admin_gw.url + "/admin/keys", {"Authorization": f"Bearer {MASTER}"}
    first = httpx.post(url, headers=master, json={"name": "twin"})
    assert first.status_code == 201, first.text
    again = httpx.post(url, headers=master, json={"name": "twin", "rpm": 5})
    assert again.status_code == 409, again.text
    err = again.json()["error"]
    assert err["param"] == "name" and err["code"] == "key_name_taken" and first.json()["id"] in err["message"]
    assert [k["name"] for k in httpx.get(url, headers=master).json()["data"]].count("twin") == 1
    assert httpx.delete(f"{url}/{first.json()['id']}", headers=master).status_code == 200
    assert httpx.post(url, headers=master, json={"name": "twin"}).status_code == 201


def test_the_cli_refuses_a_duplicate_name_with_3(tmp_path: Path) -> None:
    cfg = gateway_config(sqlite_url(tmp_path), BACKENDS, tmp_path)
    create(cfg, "--name", "ci")
    r = cli("keys", "create", "--config", str(cfg), "--name", "ci")
    assert r.code == 3 and r.err.startswith("error: --name: an active key named 'ci' already exists"), r.err
    assert [k["name"] for k in cli("keys", "list", "--config", str(cfg), "-o", "json").json()] == ["ci"]


def test_commands_name_their_database_and_read_only_ones_never_create_it(tmp_path: Path) -> None:
    # The embedded default's database is relative to the folder a command runs in: an empty folder has none.
    for args in (["keys", "list"], ["keys", "revoke", "key_nope"], ["usage"]):
        r = cli(*args, cwd=tmp_path)
        assert r.code == 2, (args, r.code, r.err)
        assert f"no database at {tmp_path / '.hybridgate' / 'hybridgate.db'}" in r.err, r.err
    assert list(tmp_path.iterdir()) == []
    cfg = gateway_config(sqlite_url(tmp_path), BACKENDS, tmp_path)
    made = cli("keys", "create", "--config", str(cfg), "--name", "here")
    assert made.code == 0 and f"in {tmp_path / 'hybridgate.db'}" in made.err, made.err
    listed = cli("keys", "list", "--config", str(cfg))
    assert listed.code == 0 and str(tmp_path / "hybridgate.db") in listed.out, listed.out


def test_admin_api_is_off_without_a_master_key(cli_gw: tuple[Proc, Path]) -> None:
    gw, _ = cli_gw
    r = httpx.get(gw.url + "/admin/keys", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403
    assert "HYBRIDGATE_MASTER_KEY" in r.json()["error"]["message"]


def test_without_keys_or_master_key_the_gateway_stays_open(tmp_path: Path) -> None:
    gw = start_gateway(gateway_config(sqlite_url(tmp_path), BACKENDS, tmp_path))
    try:
        assert status_of(gw, "unused") == (200, "")
        assert (
            httpx.post(gw.base_url + "/chat/completions", json={"model": "mock", "messages": MSG}).status_code
            == 200
        )
    finally:
        gw.stop()


def test_serve_first_key_creates_one_key_once_and_prints_how_to_use_it(tmp_path: Path) -> None:
    cfg = gateway_config(sqlite_url(tmp_path), BACKENDS, tmp_path)
    gw = start_gateway(cfg, extra_args=["--first-key"])
    try:
        m = re.search(r"export OPENAI_API_KEY=(hg-\S+)", gw.log())
        assert m, gw.log()
        assert f"export OPENAI_BASE_URL={gw.base_url}" in gw.log()
        assert status_of(gw, m.group(1)) == (200, "")
        assert status_of(gw, "unused")[0] == 401
    finally:
        gw.stop()
    again = start_gateway(cfg, extra_args=["--first-key"])
    try:
        assert "OPENAI_API_KEY" not in again.log()
        assert status_of(again, m.group(1)) == (200, "")
    finally:
        again.stop()
    names = [k["name"] for k in cli("keys", "list", "--config", str(cfg), "-o", "json").json()]
    assert names == ["local"]


def test_serve_first_key_does_nothing_when_a_master_key_is_set(tmp_path: Path) -> None:
    cfg = gateway_config(sqlite_url(tmp_path), BACKENDS, tmp_path)
    gw = start_gateway(cfg, extra_args=["--first-key"], env={"HYBRIDGATE_MASTER_KEY": MASTER})
    try:
        assert "OPENAI_API_KEY" not in gw.log()
        assert status_of(gw, MASTER) == (200, "")
    finally:
        gw.stop()
    assert cli("keys", "list", "--config", str(cfg), "-o", "json").json() == []
