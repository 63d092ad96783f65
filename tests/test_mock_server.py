"""`hybridgate mock-server` as a client sees it: a real process on loopback, driven with httpx, the official
openai client and a real WebSocket client. Its faults are the subject of other suites; here, its own edges.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import websockets
from pydantic import ValidationError

from hybridgate.backends.mock import MockBehaviour
from hybridgate.config._schema import MockOptions
from hybridgate.testing.procs import Proc, free_port, set_mock_behaviour, start_mock_server

KEY = "sk-mock-test"
MSG = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[Proc]:
    """One mock server that requires a key; its behaviour is reset before each test."""
    proc = start_mock_server(api_key=KEY)
    yield proc
    proc.stop()


@pytest.fixture
def keyed(mock: Proc) -> Proc:
    r = configure(mock, **MockBehaviour().as_dict())
    assert r.status_code == 200, r.text
    return mock


def configure(proc: Proc, *, key: str | None = KEY, **changes: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(proc.url + "/_mock/config", json=changes, headers=headers, timeout=5)


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    return dict(err)


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def in_flight(proc: Proc) -> int:
    return int(configure(proc).json()["in_flight"])


# --- WebSocket upgrades -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/health", "/no/such/path"])
def test_websocket_upgrade_is_refused_with_a_404_and_logged_as_no_error(keyed: Proc, path: str) -> None:
    async def upgrade() -> websockets.InvalidStatus:
        with pytest.raises(websockets.InvalidStatus) as caught:
            async with websockets.connect(f"ws://127.0.0.1:{keyed.port}{path}", open_timeout=5):
                pass
        return caught.value

    refused = asyncio.run(upgrade())
    assert refused.response.status_code == 404
    err = orjson.loads(refused.response.body)["error"]
    assert err["code"] == "not_found" and "WebSocket" in err["message"]
    # The server is still fine, and did not log the refusal as a crash of the app.
    assert httpx.get(keyed.url + "/health", timeout=5).status_code == 200
    log = keyed.log()
    assert "ERROR" not in log and "Traceback" not in log, log


# --- /_mock/config ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"{not json", b"null", b"[1, 2]", b'"latency_ms"', b"\xff\xfe"])
def test_config_refuses_a_body_that_is_not_a_json_object_with_a_400(keyed: Proc, body: bytes) -> None:
    r = httpx.post(
        keyed.url + "/_mock/config",
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=5,
    )
    err = assert_openai_error(r, 400)
    assert err["type"] == "invalid_request_error"
    assert "JSON object" in err["message"]


def test_config_names_an_unknown_setting(keyed: Proc) -> None:
    err = assert_openai_error(configure(keyed, latency=5), 400)
    assert err["param"] == "latency"


@pytest.mark.parametrize(
    ("changes", "bound"),
    [
        ({"latency_ms": 1e308}, "3600000"),
        ({"ttft_ms": 3_600_001}, "3600000"),
        ({"latency_ms": -1}, "0"),
        ({"tokens_per_s": 1e308}, "1000000"),
        ({"tokens_per_s": 1e-300}, "0.001"),
        ({"fail_rate": 1.5}, "1"),
    ],
)
def test_config_refuses_unbounded_latencies_and_rates_and_says_the_bound(
    keyed: Proc, changes: dict[str, float], bound: str
) -> None:
    [field] = changes
    err = assert_openai_error(configure(keyed, **changes), 400)
    assert err["param"] == field
    assert field in err["message"] and bound in err["message"]
    # Nothing was applied.
    assert configure(keyed).json()[field] == MockBehaviour().as_dict()[field]


def test_the_mock_backend_kind_refuses_non_finite_options_too() -> None:
    for bad in ({"latency_ms": float("inf")}, {"ttft_ms": float("nan")}, {"tokens_per_s": float("inf")}):
        with pytest.raises(ValidationError):
            MockOptions.model_validate(bad)
    assert MockOptions.model_validate({"latency_ms": 3_600_000, "tokens_per_s": 0}).latency_ms == 3_600_000


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_config_answers_another_method_with_405_and_allow(keyed: Proc, method: str) -> None:
    r = httpx.request(
        method, keyed.url + "/_mock/config", headers={"Authorization": f"Bearer {KEY}"}, timeout=5
    )
    err = assert_openai_error(r, 405)
    assert err["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, POST"


def test_a_route_answers_another_method_with_405_and_allow(keyed: Proc) -> None:
    r = httpx.get(keyed.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert_openai_error(r, 405)
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_config_requires_the_api_key_when_one_is_set(keyed: Proc, key: str | None) -> None:
    assert_openai_error(configure(keyed, key=key, hang=True), 401)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    assert_openai_error(httpx.get(keyed.url + "/_mock/config", headers=headers, timeout=5), 401)
    assert configure(keyed).json()["hang"] is False  # the refused change was not applied


def test_config_is_open_when_no_key_is_set() -> None:
    proc = start_mock_server()
    try:
        assert set_mock_behaviour(proc.url, latency_ms=5)["latency_ms"] == 5
    finally:
        proc.stop()


# --- hung and stalled answers -------------------------------------------------------------------------------
def test_hung_requests_end_when_their_clients_disconnect(keyed: Proc) -> None:
    configure(keyed, hang=True)
    client = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, timeout=0.3, max_retries=0)
    for _ in range(5):
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="mock", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(keyed.url + "/health", timeout=0.3)
    wait_until(lambda: in_flight(keyed) == 0, 10, "the hung answers to end")
    log = keyed.log()
    assert "ERROR" not in log and "Traceback" not in log, log


def test_a_stalled_stream_ends_when_its_client_disconnects(keyed: Proc) -> None:
    configure(keyed, stall_mid_stream=True)
    client = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, timeout=5, max_retries=0)
    stream = client.chat.completions.create(
        model="mock",
        messages=[{"role": "user", "content": "Say something long."}],
        stream=True,
    )
    next(iter(stream))
    assert in_flight(keyed) == 1
    stream.close()
    wait_until(lambda: in_flight(keyed) == 0, 10, "the stalled stream to end")


def test_answers_still_arrive_whole_while_disconnects_are_watched(keyed: Proc) -> None:
    configure(keyed, latency_ms=50, tokens_per_s=1000)
    client = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, timeout=5, max_retries=0)
    reply = client.chat.completions.create(model="mock", messages=MSG)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Paris"
    chunks = list(client.chat.completions.create(model="mock", messages=MSG, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Paris"
    assert in_flight(keyed) == 0


# --- the command line ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "flag", "field"),
    [
        (["--model", ""], "--model", None),
        (["--model", "ok", "--model", " "], "--model", None),
        (["--api-key", ""], "--api-key", None),
        (["--latency-ms", "1e308"], "--latency-ms", "latency_ms"),
        (["--ttft-ms", "inf"], "--ttft-ms", "ttft_ms"),
        (["--tokens-per-s", "1e308"], "--tokens-per-s", "tokens_per_s"),
        (["--fail-rate", "2"], "--fail-rate", "fail_rate"),
        (["--fail-status", "200"], "--fail-status", "fail_status"),
    ],
)
def test_the_command_refuses_a_bad_option_naming_its_own_flag(
    args: list[str], flag: str, field: str | None
) -> None:
    # A bad option must stop the command before it binds a port; a timeout here means it started serving.
    r = subprocess.run(
        [sys.executable, "-m", "hybridgate", "mock-server", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 3, r.stderr
    assert flag in r.stderr
    if field is not None:
        assert field not in r.stderr, r.stderr
